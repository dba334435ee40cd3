"""The authentication step with fakes and a fake clock: key expiry, revocation, roles,
scopes and the unverified-email rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from tenantry_credentials import apikeys
from tenantry_credentials.tokens import AccessTokenVerifier, JwksCache
from tenantry_http.auth import (
    ApiKeyRecord,
    Authenticator,
    Principal,
    Requires,
    check,
)
from tenantry_http.problems import Problem
from tenantry_platform.clock import FakeClock

TENANT = UUID(int=5)


class Keys:
    def __init__(self) -> None:
        self.records: dict[bytes, ApiKeyRecord] = {}

    async def by_hash(self, digest: bytes) -> ApiKeyRecord | None:
        return self.records.get(digest)


class Accounts:
    async def is_disabled(self, account_id: UUID) -> bool:
        return False


class FakeRequest:
    def __init__(self, authorization: str, requirement: Requires) -> None:
        self.headers = {"authorization": authorization}
        self.route_handler = type("H", (), {"opt": {"auth": requirement}})()
        self.state: dict[str, Any] = {}
        self.scope: dict[str, Any] = {"path_params": {}}


async def no_jwks() -> dict[str, Any]:
    return {"keys": []}


def authenticator(keys: Keys, clock: FakeClock) -> Authenticator:
    verifier = AccessTokenVerifier(JwksCache(no_jwks, clock=clock), clock=clock)
    return Authenticator(verifier, keys, Accounts(), clock=clock)


async def test_api_keys_expire_by_the_clock_and_revoked_ones_are_refused() -> None:
    clock, keys = FakeClock(), Keys()
    key = apikeys.generate()
    expires = datetime.fromtimestamp(clock.now(), UTC) + timedelta(hours=1)
    keys.records[apikeys.key_hash(key)] = ApiKeyRecord(
        key_id="k1",
        tenant_id=TENANT,
        scopes=frozenset({"tenant:read"}),
        owner_account_id=None,
        expires_at=expires,
        revoked=False,
    )
    auth = authenticator(keys, clock)
    request = FakeRequest(f"Bearer {key}", Requires(scopes=frozenset({"tenant:read"})))
    await auth(request)  # type: ignore[arg-type]
    assert request.state["principal"].tenant_id == TENANT

    clock.advance(3601)
    with pytest.raises(Problem) as expired:
        await auth(FakeRequest(f"Bearer {key}", Requires()))  # type: ignore[arg-type]
    assert expired.value.status == 401
    assert "expired" in (expired.value.detail or "")

    mistyped = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(Problem) as malformed:
        await auth(FakeRequest(f"Bearer {mistyped}", Requires()))  # type: ignore[arg-type]
    assert malformed.value.status == 401
    assert malformed.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("principal", "requirement", "status"),
    [
        (
            Principal(kind="api_key", subject="k", tenant_id=TENANT, scopes=frozenset({"a:r"})),
            Requires(scopes=frozenset({"a:w"})),
            403,
        ),
        (
            Principal(kind="user", subject="u", tenant_id=TENANT, roles=frozenset({"member"})),
            Requires(roles=frozenset({"owner", "admin"})),
            403,
        ),
        (
            Principal(
                kind="user",
                subject="u",
                tenant_id=TENANT,
                roles=frozenset({"admin"}),
                email_verified=False,
            ),
            Requires(roles=frozenset({"admin"}), verified_email=True),
            403,
        ),
        (
            Principal(kind="user", subject="u", tenant_id=TENANT, roles=frozenset({"admin"})),
            Requires(operator_only=True),
            403,
        ),
        (
            Principal(kind="user", subject="u", tenant_id=TENANT, roles=frozenset({"admin"})),
            Requires(roles=frozenset({"owner", "admin"}), verified_email=True),
            None,
        ),
        (
            Principal(kind="operator", subject="o", tenant_id=None),
            Requires(roles=frozenset({"owner"}), operator_only=True),
            None,
        ),
    ],
)
def test_requirements(principal: Principal, requirement: Requires, status: int | None) -> None:
    if status is None:
        check(principal, requirement)
    else:
        with pytest.raises(Problem) as refused:
            check(principal, requirement)
        assert refused.value.status == status
