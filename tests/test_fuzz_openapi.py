"""Property-based fuzzing of every service's API (issue 14): schemathesis generates valid
and invalid requests for each operation of each service's served OpenAPI, sent as the
platform operator and as a tenant admin; every response must not be a 5xx and must match
the document (status code, content type, headers, body). The SCIM mount, which has no
OpenAPI, is fuzzed with hypothesis strategies of its own.

Bounded and reproducible: a fixed number of examples per operation, derandomized (the
same requests every run), no shrinking. Each service gets its own tenant, with one of
everything so path parameters name real rows; operations that would take the tenant away
from the fuzzer (suspension, a plan change, limits and rate overrides) run last."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tenantry_testkit.dns import LoopbackDns
from tenantry_testkit.receiver import Receiver, running_receiver
from tenantry_testkit.stack import Stack
from tenantry_testkit.strategies import json_values

from .conftest import SERVICES
from .fuzzing import (
    SCIM_PREFIX,
    SHED_RETRIES,
    FuzzTenant,
    failure_report,
    fuzz_tenant,
    loopback_only,
    openapi_document,
    run_rank,
    server_error,
    server_traceback,
    shed_delay,
)
from .test_scim import ERROR, GROUP, PATCH_OP, SCIM_JSON, USER

pytestmark = pytest.mark.kafka
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 10, schemathesis.GenerationMode.NEGATIVE: 10}
SCIM_EXAMPLES = 400
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    verbosity=Verbosity.quiet,
)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


@pytest.fixture
def nameserver(stack: Stack) -> Iterator[LoopbackDns]:
    """The DNS server identity asks for domain verification, so /verify gets answers."""
    host, port = stack.env["TENANTRY_SSO_DNS_NAMESERVERS"].split(",")[0].rsplit(":", 1)
    with LoopbackDns(host, int(port)) as server:
        yield server


def run_order(operation: Operation) -> tuple[int, str]:
    return run_rank(operation.method.upper(), operation.path), operation.label


def modes_for(operation: Operation) -> list[schemathesis.GenerationMode]:
    """Invalid requests need something to make invalid: a body or a query (path values are
    the tenant's real ids, so the fuzzer reaches past the lookups)."""
    if list(operation.body) or list(operation.query):
        return list(EXAMPLES)
    return [schemathesis.GenerationMode.POSITIVE]


def describe(failure: Failure) -> str:
    lines = (failure.message or "").strip().splitlines()
    return f"{failure.title}: {lines[0][:160] if lines else ''}"


class OperationFuzzer:
    """Sends generated cases of one service's operations and collects what the checks
    find (without stopping, so one run reports every failing operation)."""

    def __init__(self, service: str, base_url: str, tenant: FuzzTenant) -> None:
        self.service = service
        self.base_url = base_url
        self.tenant = tenant
        self.session = requests.Session()
        self.failures: dict[str, str] = {}
        self.sent = 0

    def fuzz(
        self,
        operation: Operation,
        role: str,
        headers: dict[str, str],
        mode: schemathesis.GenerationMode,
    ) -> None:
        pinned = {
            p.name: self.tenant.values[p.name]
            for p in operation.path_parameters
            if p.name in self.tenant.values
        }
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)
        label = f"{self.service} {operation.label} as {role} ({mode.value})"

        @settings(FUZZ_SETTINGS, max_examples=EXAMPLES[mode])
        @given(case=strategy)
        def run(case: Case[Operation]) -> None:
            self.send(case, headers, label)

        run()

    def send(self, case: Case[Operation], headers: dict[str, str], label: str) -> None:
        if isinstance(case.body, (dict, list)):
            case.body = loopback_only(case.body)
        if case.query:
            case.query = loopback_only(case.query)

        # No redirects followed: a login route's Location is for a browser, not the fuzzer.
        def call() -> schemathesis.Response:
            return case.call(
                base_url=self.base_url,
                session=self.session,
                headers=headers,
                timeout=20,
                allow_redirects=False,
            )

        response = call()
        for _ in range(SHED_RETRIES):
            retry_after = response.headers.get("retry-after")  # lowercased, lists of values
            delay = shed_delay(response.status_code, retry_after[0] if retry_after else None)
            if delay is None:
                break
            time.sleep(delay)
            response = call()
        self.sent += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            trace = ""
            if response.status_code >= 500:
                ids = response.headers.get("x-request-id")
                request_id = ids[0] if ids else None
                said = response.content[:160]
                trace = f" {said!r} <- {server_traceback(self.service, request_id)}"
            body = case.body if isinstance(case.body, (dict, list, str, bytes)) else None
            sent = {"path": case.path_parameters, "query": case.query, "body": body}
            for failure in group.exceptions:
                # One line per operation, role, mode, check and status, with its first input.
                key = f"{label}: {response.status_code} {describe(failure)}"
                self.failures.setdefault(key, f"{key}{trace}; input {str(sent)[:200]}")


def fuzz_service(
    service: str,
    base_url: str,
    document: dict[str, Any],
    roles: dict[str, dict[str, str]],
    tenant: FuzzTenant,
) -> tuple[list[str], int]:
    """Every operation, every role, both generation modes: the failures and how many
    requests were sent."""
    schema = schemathesis.openapi.from_dict(document)
    loaded = list(schema.get_all_operations())
    operations = sorted((r.ok() for r in loaded if isinstance(r, Ok)), key=run_order)
    assert len(operations) == len(loaded), "every operation of the document loads"
    fuzzer = OperationFuzzer(service, base_url, tenant)
    try:
        for operation in operations:
            for role, headers in roles.items():
                for mode in modes_for(operation):
                    fuzzer.fuzz(operation, role, headers, mode)
    finally:
        fuzzer.session.close()
    return list(fuzzer.failures.values()), fuzzer.sent


@pytest.mark.parametrize("service", SERVICES)
async def test_every_operation_answers_as_documented_and_never_5xx(
    stack: Stack,
    operator_headers: dict[str, str],
    receiver: Receiver,
    nameserver: LoopbackDns,
    service: str,
) -> None:
    tenant = await fuzz_tenant(
        stack, operator_headers, hook_url=f"{receiver.url}/hook", with_admin=True
    )
    assert tenant.admin is not None
    document = await openapi_document(stack, service)
    roles = {"operator": operator_headers, "tenant admin": tenant.admin}
    failures, sent = await asyncio.to_thread(
        fuzz_service, service, stack.service_url(service), document, roles, tenant
    )
    assert sent > 0
    assert not failures, failure_report(f"{service}: {sent} fuzzed requests", failures)


# --------------------------------------------------------------------------- SCIM

SCIM_ATTRIBUTES = (
    "userName",
    "displayName",
    "active",
    "externalId",
    "emails",
    'emails[type eq "work"].value',
    "name.givenName",
    "members",
    "meta.lastModified",
    "id",
    f"{USER}:userName",
)
BIG_INTEGERS = st.one_of(
    st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70), st.just(-(2**64))
)
JSON_VALUES = json_values(integers=BIG_INTEGERS)
FILTERS = st.one_of(
    st.text(max_size=40),
    st.builds(
        "{} {} {}".format,
        st.sampled_from(SCIM_ATTRIBUTES),
        st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le", "pr", "EQ", "xx"]),
        st.one_of(
            st.text(max_size=12).map(json.dumps),
            BIG_INTEGERS.map(str),
            st.sampled_from(["true", "null", '"2026-01-01T00:00:00Z"', ""]),
        ),
    ),
).flatmap(
    lambda f: st.sampled_from(
        [f, f"not ({f})", f"{f} and {f}", f"({f}) or userName pr", f"emails[{f}]"]
    )
)
QUERY = st.fixed_dictionaries(
    {},
    optional={
        "filter": FILTERS,
        "startIndex": BIG_INTEGERS.map(str) | st.text(max_size=5),
        "count": BIG_INTEGERS.map(str) | st.text(max_size=5),
        "sortBy": st.sampled_from(SCIM_ATTRIBUTES) | st.text(max_size=10),
        "sortOrder": st.sampled_from(["ascending", "descending", "sideways"]),
        "attributes": st.sampled_from(SCIM_ATTRIBUTES) | st.text(max_size=10),
        "excludedAttributes": st.sampled_from(SCIM_ATTRIBUTES),
    },
)
OPERATIONS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"op": st.sampled_from(["add", "replace", "remove", "Add", "Replace"]) | JSON_VALUES},
            optional={"path": st.sampled_from(SCIM_ATTRIBUTES) | FILTERS, "value": JSON_VALUES},
        ),
        JSON_VALUES,
    ),
    max_size=3,
)
BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"schemas": st.sampled_from([[USER], [GROUP], [PATCH_OP]]) | JSON_VALUES},
        optional={
            "userName": st.emails().map(str) | JSON_VALUES,
            "displayName": st.text(max_size=30) | JSON_VALUES,
            "active": st.booleans() | JSON_VALUES,
            "externalId": st.text(max_size=20),
            "emails": st.lists(
                st.fixed_dictionaries({"value": st.emails().map(str) | JSON_VALUES})
            ),
            "members": st.lists(
                st.fixed_dictionaries({"value": st.uuids().map(str) | JSON_VALUES})
            ),
            "Operations": OPERATIONS | JSON_VALUES,
            "filter": FILTERS | JSON_VALUES,
            "startIndex": BIG_INTEGERS | JSON_VALUES,
            "count": BIG_INTEGERS,
            "sortBy": st.sampled_from(SCIM_ATTRIBUTES) | JSON_VALUES,
            "failOnErrors": BIG_INTEGERS | JSON_VALUES,
        },
    ),
)


def scim_requests(
    values: dict[str, str],
) -> st.SearchStrategy[tuple[str, str, dict[str, str], Any]]:
    """(method, path, query, JSON body or None) over every SCIM route; ids are the tenant's
    user and group half the time."""
    segment = st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe=""))
    user = st.sampled_from([values["user_id"]]) | segment
    group = st.sampled_from([values["group_id"]]) | segment
    resource = st.sampled_from(["User", "Group", "Nope"]) | segment
    schema_urn = st.sampled_from([USER, GROUP]) | segment
    paths: list[tuple[str, Callable[[], st.SearchStrategy[str]]]] = [
        ("GET", lambda: st.sampled_from(["/Users", "/Groups"])),
        (
            "POST",
            lambda: st.sampled_from(
                ["/Users", "/Groups", "/Users/.search", "/Groups/.search", "/.search", "/Bulk"]
            ),
        ),
        ("GET", lambda: st.one_of(user.map("/Users/{}".format), group.map("/Groups/{}".format))),
        ("PUT", lambda: st.one_of(user.map("/Users/{}".format), group.map("/Groups/{}".format))),
        ("PATCH", lambda: st.one_of(user.map("/Users/{}".format), group.map("/Groups/{}".format))),
        ("DELETE", lambda: st.one_of(user.map("/Users/{}".format), group.map("/Groups/{}".format))),
        (
            "GET",
            lambda: st.one_of(
                st.just("/ServiceProviderConfig"),
                st.just("/ResourceTypes"),
                st.just("/Schemas"),
                resource.map("/ResourceTypes/{}".format),
                schema_urn.map("/Schemas/{}".format),
            ),
        ),
    ]
    return st.sampled_from(paths).flatmap(
        lambda route: st.tuples(
            st.just(route[0]),
            route[1](),
            QUERY,
            BODIES if route[0] in ("POST", "PUT", "PATCH") else st.none(),
        )
    )


def scim_defect(response: httpx.Response) -> str | None:
    """Why a SCIM response is wrong (RFC 7644 §3.12), or None."""
    status = response.status_code
    if status >= 500:
        return f"answered {status}"
    if status == 204:
        return None
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith(SCIM_JSON):
        return f"{status} as {content_type!r}"
    try:
        body = response.json()
    except ValueError:
        return f"{status} with a body that is not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("schemas"), list):
        return f"{status} without schemas"
    if status >= 400 and (body["schemas"] != [ERROR] or body.get("status") != str(status)):
        return f"{status} that is not a SCIM Error: {str(body)[:120]}"
    return None


def fuzz_scim(base_url: str, tenant: FuzzTenant) -> tuple[list[str], int]:
    failures: dict[str, str] = {}
    sent = 0
    headers = {**tenant.scim, "Content-Type": SCIM_JSON, "Accept": SCIM_JSON}
    with httpx.Client(base_url=base_url + SCIM_PREFIX, headers=headers, timeout=20) as client:

        @settings(FUZZ_SETTINGS, max_examples=SCIM_EXAMPLES)
        @given(request=scim_requests(tenant.values))
        def run(request: tuple[str, str, dict[str, str], Any]) -> None:
            nonlocal sent
            method, path, query, body = request
            content = None if body is None else json.dumps(body).encode()
            response = client.request(method, path, params=query, content=content)
            for _ in range(SHED_RETRIES):
                delay = shed_delay(response.status_code, response.headers.get("retry-after"))
                if delay is None:
                    break
                time.sleep(delay)
                response = client.request(method, path, params=query, content=content)
            sent += 1
            defect = scim_defect(response)
            if defect is not None:
                trace = ""
                if response.status_code >= 500:
                    trace = f": {server_error('provisioning', response)}"
                shown = json.dumps(body)[:160] if body is not None else ""
                # One line per method, resource and status, with its first input.
                key = f"SCIM {method} /{path.split('/')[1]}/...: {response.status_code}"
                failures.setdefault(key, f"{key} {defect}{trace}; input {path} {query} {shown}")

        run()
    return list(failures.values()), sent


async def test_scim_answers_every_request_with_a_scim_response_and_never_5xx(
    stack: Stack, operator_headers: dict[str, str], receiver: Receiver
) -> None:
    tenant = await fuzz_tenant(
        stack, operator_headers, hook_url=f"{receiver.url}/hook", with_admin=False
    )
    failures, sent = await asyncio.to_thread(fuzz_scim, stack.service_url("provisioning"), tenant)
    assert sent == SCIM_EXAMPLES
    assert not failures, failure_report(f"SCIM: {sent} fuzzed requests", failures)
