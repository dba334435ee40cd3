"""The architecture's import rules, checked on the source: which part of the tree may import
which (see docs/architecture.md, "the shared libraries ... and the order of their layers").

A small AST walk, no dependency: every `import` and `from ... import` statement of every
Python file (inside functions and `if TYPE_CHECKING:` blocks too: a layer that needs a type
from above is still upside down). Static imports only; a module named in a string
(`importlib.import_module`, migration packages) is not seen.

The rules:

- libs never import services, and services never import each other;
- the libraries form layers, each importing only the ones below it (`LIB_LAYERS`);
- production code (everything under a `src/`) imports no test tooling: not
  `tenantry_testkit` (tests, bench and tools may), nor pytest, hypothesis, pysaml2, ...;
- the events lib imports nothing of the HTTP edge;
- a service's domain (`domain.py`, `domain/`) does no I/O: neither it nor anything of ours
  it imports, however indirectly, imports a driver, a network client or a framework.

Each rule is tested twice: the tree keeps it, and a synthetic file that breaks it is caught.

The last test installs each service with its production dependencies only (no dev group)
and imports every module it ships: a dependency that is declared nowhere, or only for
tests, fails there.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the tree


def _packages_under(folder: str) -> dict[str, str]:
    """Top-level package -> the workspace member (folder name) that ships it."""
    return {
        init.parent.name: member.name
        for member in sorted((ROOT / folder).iterdir())
        for init in sorted((member / "src").glob("*/__init__.py"))
    }


LIB_PACKAGES = _packages_under("libs")  # tenantry_events -> events
SERVICE_PACKAGES = _packages_under("services")  # tenantry_tenancy -> tenancy

# Each library and the libraries it may import. The ladder, lowest first: each rung may use
# every rung below it. outbound stands beside the ladder, on platform and resilience alone,
# and no library uses it (services do); so does objectstore, on platform alone, used by
# service alone (a worker writes its share of an export: tenantry_service.export). testkit
# is test tooling: it may use anything. regions (the region map, the directory's protocol,
# the home-region step) sits above http, whose Problem and Request its step uses.
_LADDER = (
    "resilience",
    "events",
    "platform",
    "credentials",
    "http",
    "regions",
    "guardrails",
    "projections",
    "service",
)
LIB_LAYERS: dict[str, frozenset[str]] = {
    **{lib: frozenset(_LADDER[:rung]) for rung, lib in enumerate(_LADDER)},
    "service": frozenset(_LADDER[:-1]) | {"objectstore"},
    "outbound": frozenset({"platform", "resilience"}),
    "objectstore": frozenset({"platform"}),
    "testkit": frozenset(LIB_PACKAGES.values()),
}

# Test tooling (the dev dependency group), by import name; production code imports none.
TEST_ONLY = frozenset(
    {
        "tenantry_testkit",
        "pytest",
        "_pytest",
        "hypothesis",
        "saml2",  # pysaml2
        "playwright",
        "dnslib",
        "aiosmtpd",
        "schemathesis",
        "scim2_client",
        "scim2_tester",
        "standardwebhooks",
        "kubernetes_validate",
    }
)

HTTP_EDGE = frozenset({"tenantry_http", "litestar", "uvicorn", "starlette"})

# What a domain module may not reach: drivers, network clients, servers, frameworks, and our
# own packages whose business is I/O.
IO_MODULES = frozenset(
    {
        "asyncpg",
        "psycopg",
        "redis",
        "httpx",
        "httpcore",
        "aiohttp",
        "requests",
        "urllib.request",
        "http.client",
        "aiokafka",
        "faststream",
        "litestar",
        "uvicorn",
        "socket",
        "ssl",
        "smtplib",
        "aiosmtplib",
        "subprocess",
        "tenantry_service",
        "tenantry_http",
        "tenantry_guardrails",
        "tenantry_projections",
        "tenantry_outbound",
        "tenantry_objectstore",
        "aiobotocore",
        "botocore",
    }
)


@dataclass(frozen=True)
class Unit:
    """The part of the tree a file belongs to."""

    kind: Literal["lib", "service", "tests", "tools", "bench", "other"]
    name: str  # the lib or service ("events", "tenancy"); "" for the others
    production: bool  # under src/: shipped in an installed package


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # absolute; `from a import b` is recorded as both "a" and "a.b"


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the repository, with /
    module: str
    is_package: bool
    unit: Unit
    imports: tuple[Import, ...]

    @classmethod
    def parse(cls, path: str, text: str) -> SourceFile:
        module, is_package = _module_of(path)
        tree = ast.parse(text, filename=path)
        return cls(
            path, module, is_package, _unit_of(path), tuple(_imports(tree, module, is_package))
        )

    @property
    def is_domain(self) -> bool:
        """A service's domain: `domain.py`, or any module of a `domain` package."""
        parts = self.module.split(".")
        return self.unit.kind == "service" and self.unit.production and "domain" in parts


_TOP_LEVEL_UNITS = {
    "tests": Unit("tests", "", production=False),
    "tools": Unit("tools", "", production=False),
    "bench": Unit("bench", "", production=False),
}


def _unit_of(path: str) -> Unit:
    parts = path.split("/")
    if parts[0] in ("libs", "services") and len(parts) > 2:
        kind: Literal["lib", "service"] = "lib" if parts[0] == "libs" else "service"
        return Unit(kind, parts[1], production=parts[2] == "src")
    return _TOP_LEVEL_UNITS.get(parts[0], Unit("other", "", production=False))


def _module_of(path: str) -> tuple[str, bool]:
    parts = path.removesuffix(".py").split("/")
    if len(parts) > 3 and parts[0] in ("libs", "services") and parts[2] == "src":
        parts = parts[3:]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[Import]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(node.lineno, base)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(node.lineno, f"{base}.{alias.name}")


def _is_within(module: str, names: Iterable[str]) -> str | None:
    """The first of `names` that `module` is or lies inside, else None."""
    for name in names:
        if module == name or module.startswith(name + "."):
            return name
    return None


def _python_files() -> Iterator[Path]:
    for top in ("libs", "services", "tests", "tools", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                yield path


@functools.cache
def tree() -> Mapping[str, SourceFile]:
    """Every Python file of the checkout, by path."""
    files = {}
    for path in _python_files():
        relative = path.relative_to(ROOT).as_posix()
        files[relative] = SourceFile.parse(relative, path.read_text())
    return files


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    module: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}{self.why}"


Rule = Callable[[SourceFile, Mapping[str, SourceFile]], Iterator[Violation]]


def _imports_within(file: SourceFile, names: Iterable[str]) -> Iterator[Violation]:
    for found in file.imports:
        if _is_within(found.module, names):
            yield Violation(file.path, found.line, found.module)


def libs_never_import_services(
    file: SourceFile, _: Mapping[str, SourceFile]
) -> Iterator[Violation]:
    if file.unit.kind == "lib":
        yield from _imports_within(file, SERVICE_PACKAGES)


def services_never_import_each_other(
    file: SourceFile, _: Mapping[str, SourceFile]
) -> Iterator[Violation]:
    if file.unit.kind == "service":
        others = [p for p, service in SERVICE_PACKAGES.items() if service != file.unit.name]
        yield from _imports_within(file, others)


def libs_import_only_the_layers_below(
    file: SourceFile, _: Mapping[str, SourceFile]
) -> Iterator[Violation]:
    if file.unit.kind == "lib" and file.unit.production:
        allowed = LIB_LAYERS[file.unit.name] | {file.unit.name}
        for found in file.imports:
            package = _is_within(found.module, LIB_PACKAGES)
            if package is not None and LIB_PACKAGES[package] not in allowed:
                yield Violation(
                    file.path,
                    found.line,
                    found.module,
                    f" ({LIB_PACKAGES[package]} is not below {file.unit.name})",
                )


def only_tests_import_testkit(file: SourceFile, _: Mapping[str, SourceFile]) -> Iterator[Violation]:
    if file.unit.production and file.unit.name != "testkit":
        yield from _imports_within(file, ["tenantry_testkit"])


def production_imports_no_test_tooling(
    file: SourceFile, _: Mapping[str, SourceFile]
) -> Iterator[Violation]:
    if file.unit.production and file.unit.name != "testkit":
        yield from _imports_within(file, TEST_ONLY)


def events_import_nothing_of_the_http_edge(
    file: SourceFile, _: Mapping[str, SourceFile]
) -> Iterator[Violation]:
    if file.unit == Unit("lib", "events", production=True):
        yield from _imports_within(file, HTTP_EDGE)


def domains_do_no_io(file: SourceFile, files: Mapping[str, SourceFile]) -> Iterator[Violation]:
    """Direct imports, and everything of ours reached from them (a domain that imports its
    service's store does I/O as surely as one that imports asyncpg)."""
    if not file.is_domain:
        return
    by_module = {f.module: f for f in files.values() if f.unit.production}
    seen: set[str] = set()
    # (module whose imports to read, the chain that led there, the line in the domain file)
    pending: list[tuple[SourceFile, tuple[str, ...], int | None]] = [(file, (), None)]
    while pending:
        current, chain, first_line = pending.pop()
        for found in current.imports:
            line = found.line if first_line is None else first_line
            io = _is_within(found.module, IO_MODULES)
            if io is not None:
                via = f" (via {' -> '.join(chain)})" if chain else ""
                yield Violation(file.path, line, found.module, via)
                continue
            for reached in _modules_run_by(found.module, by_module):
                if reached.module not in seen and reached.module != file.module:
                    seen.add(reached.module)
                    pending.append((reached, (*chain, reached.module), line))


def _modules_run_by(module: str, by_module: Mapping[str, SourceFile]) -> Iterator[SourceFile]:
    """Our modules that importing `module` executes: it and each package above it."""
    parts = module.split(".")
    for end in range(1, len(parts) + 1):
        found = by_module.get(".".join(parts[:end]))
        if found is not None:
            yield found


RULES: dict[str, Rule] = {
    "libs never import services": libs_never_import_services,
    "services never import each other": services_never_import_each_other,
    "libs import only the layers below": libs_import_only_the_layers_below,
    "tenantry_testkit only in tests": only_tests_import_testkit,
    "production imports no test tooling": production_imports_no_test_tooling,
    "events import nothing of the HTTP edge": events_import_nothing_of_the_http_edge,
    "domains do no I/O": domains_do_no_io,
}


def violations(rule: Rule, files: Mapping[str, SourceFile]) -> list[Violation]:
    return sorted({v for file in files.values() for v in rule(file, files)})


@pytest.mark.parametrize("name", RULES)
def test_the_tree_keeps_the_rule(name: str) -> None:
    found = violations(RULES[name], tree())
    assert not found, "\n".join(map(str, found))


# One file that breaks each rule (and, where it is easy to get wrong, one that does not).
BREAKS: dict[str, list[tuple[str, str]]] = {
    "libs never import services": [
        ("libs/http/src/tenantry_http/bad.py", "from tenantry_tenancy.domain import Tenant"),
        ("libs/http/tests/test_bad.py", "def f():\n    import tenantry_identity.app"),
    ],
    "services never import each other": [
        ("services/webhooks/src/tenantry_webhooks/bad.py", "import tenantry_identity"),
        ("services/webhooks/tests/test_bad.py", "from tenantry_tenancy import store"),
    ],
    "libs import only the layers below": [
        ("libs/events/src/tenantry_events/bad.py", "from tenantry_platform import clock"),
        (
            "libs/http/src/tenantry_http/bad.py",
            "from tenantry_guardrails.admission import Priority",
        ),
        ("libs/guardrails/src/tenantry_guardrails/bad.py", "import tenantry_outbound.outbound"),
        ("libs/service/src/tenantry_service/bad.py", "from tenantry_outbound import mail"),
        ("libs/outbound/src/tenantry_outbound/bad.py", "from tenantry_http import problems"),
        ("libs/resilience/src/tenantry_resilience/bad.py", "import tenantry_events"),
        ("libs/objectstore/src/tenantry_objectstore/bad.py", "from tenantry_events import pg"),
        ("libs/platform/src/tenantry_platform/bad.py", "import tenantry_objectstore"),
    ],
    "tenantry_testkit only in tests": [
        ("libs/service/src/tenantry_service/bad.py", "from tenantry_testkit.stack import Stack"),
        ("services/identity/src/tenantry_identity/bad.py", "import tenantry_testkit.dns"),
    ],
    "production imports no test tooling": [
        ("libs/events/src/tenantry_events/bad.py", "def f():\n    import pytest"),
        ("services/identity/src/tenantry_identity/bad.py", "from saml2 import saml"),
        ("libs/platform/src/tenantry_platform/bad.py", "from hypothesis import strategies"),
    ],
    "events import nothing of the HTTP edge": [
        ("libs/events/src/tenantry_events/bad.py", "from litestar import Request"),
        ("libs/events/src/tenantry_events/bad.py", "from tenantry_http.problems import Problem"),
    ],
    "domains do no I/O": [
        ("services/tenancy/src/tenantry_tenancy/domain.py", "import asyncpg"),
        ("services/identity/src/tenantry_identity/sso/domain.py", "from httpx import URL"),
        ("services/webhooks/src/tenantry_webhooks/domain/rules.py", "import socket"),
        ("services/tenancy/src/tenantry_tenancy/domain.py", "import tenantry_objectstore"),
        # Indirectly: the service's store talks to Postgres.
        ("services/tenancy/src/tenantry_tenancy/domain.py", "from tenantry_tenancy import store"),
        # A relative import resolves like any other.
        ("services/tenancy/src/tenantry_tenancy/domain.py", "from .store import TenantStore"),
    ],
}
KEEPS: dict[str, list[tuple[str, str]]] = {
    "libs never import services": [
        ("libs/service/tests/test_ok.py", 'ARGS = ["-m", "tenantry_tenancy", "api"]'),
    ],
    "libs import only the layers below": [
        ("libs/service/src/tenantry_service/ok.py", "from tenantry_projections import migrations"),
        ("libs/outbound/src/tenantry_outbound/ok.py", "from tenantry_platform import settings"),
        (
            "libs/objectstore/src/tenantry_objectstore/ok.py",
            "from tenantry_platform.settings import ServiceSettings",
        ),
        ("libs/http/tests/test_ok.py", "from tenantry_guardrails.admission import Priority"),
        ("libs/testkit/src/tenantry_testkit/ok.py", "from tenantry_service.app import create_app"),
    ],
    "tenantry_testkit only in tests": [
        ("tests/test_ok.py", "from tenantry_testkit.stack import Stack"),
        ("bench/ok.py", "from tenantry_testkit.saml_idp import SamlIdp"),
        ("tools/ok.py", "import tenantry_testkit"),
    ],
    "domains do no I/O": [
        ("services/tenancy/src/tenantry_tenancy/domain.py", "from tenantry_events import envelope"),
        ("services/tenancy/src/tenantry_tenancy/store.py", "import asyncpg"),
    ],
}


def _with(path: str, source: str) -> dict[str, SourceFile]:
    files = dict(tree())
    files[path] = SourceFile.parse(path, textwrap.dedent(source))
    return files


@pytest.mark.parametrize(
    ("name", "path", "source"),
    [(name, path, source) for name, cases in BREAKS.items() for path, source in cases],
)
def test_a_file_that_breaks_the_rule_is_caught(name: str, path: str, source: str) -> None:
    files = _with(path, source)
    caught = [v for v in violations(RULES[name], files) if v.path == path]
    assert caught, f"{name}: {path} with {source!r} was not caught"


@pytest.mark.parametrize(
    ("name", "path", "source"),
    [(name, path, source) for name, cases in KEEPS.items() for path, source in cases],
)
def test_a_file_that_keeps_the_rule_passes(name: str, path: str, source: str) -> None:
    files = _with(path, source)
    assert [v for v in violations(RULES[name], files) if v.path == path] == []


def test_every_rule_has_a_file_that_breaks_it() -> None:
    assert set(BREAKS) == set(RULES)
    assert set(LIB_LAYERS) == set(LIB_PACKAGES.values())


# --------------------------------------------------------------------------- installed


SERVICES = sorted(set(SERVICE_PACKAGES.values()))

# Run by the service's own interpreter: import every module of the tenantry packages
# (by default every one installed: the service and the libs it depends on), then say which
# test tooling got loaded on the way. `__main__` modules would run the command line.
IMPORT_EVERYTHING = """
import importlib, importlib.metadata, json, pkgutil, sys

test_only = set(sys.argv[1].split(","))
packages = sys.argv[2:] or sorted(
    {
        dist.metadata["Name"].replace("-", "_")
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"].startswith("tenantry-")
    }
)
failures, imported = {}, []


def failed(module):
    error = sys.exc_info()[1]
    failures[module] = f"{type(error).__name__}: {error}"


for name in packages:
    try:
        package = importlib.import_module(name)
    except Exception:
        failed(name)
        continue
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, name + ".", onerror=failed):
        if info.name.rsplit(".", 1)[-1] == "__main__" or info.name in failures:
            continue
        try:
            importlib.import_module(info.name)
        except Exception:
            failed(info.name)
        else:
            imported.append(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in test_only)
report = {"packages": packages, "imported": imported, "failures": failures, "loaded": loaded}
print(json.dumps(report))
"""


def import_everything(
    python: str, workdir: Path, *packages: str, isolated: bool = True
) -> dict[str, Any]:
    """What `IMPORT_EVERYTHING` reports, run by `python` in `workdir`. `isolated` (-I): only
    what is installed is on the path, neither the checkout nor PYTHONPATH nor `workdir`."""
    script = workdir / "import_everything.py"
    script.write_text(IMPORT_EVERYTHING)
    ran = subprocess.run(
        [
            python,
            *(["-I"] if isolated else []),
            str(script),
            ",".join(sorted(TEST_ONLY)),
            *packages,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    report: dict[str, Any] = json.loads(ran.stdout.splitlines()[-1])
    return report


def import_problems(report: Mapping[str, Any]) -> list[str]:
    """A module that does not import (a dependency missing, or only in the dev group), and
    test tooling that something imported."""
    failures: dict[str, str] = report["failures"]
    problems = [f"{module}: {error}" for module, error in sorted(failures.items())]
    problems += [f"test tooling loaded: {module}" for module in report["loaded"]]
    return problems


@pytest.mark.timeout(600)
@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_with_its_production_dependencies_alone(
    service: str, tmp_path: Path
) -> None:
    """Slow on purpose (some 10 to 20 s a service, mostly importing): it installs the
    service with `uv sync --frozen --no-dev --package tenantry-<service>` into a fresh
    environment (from the local uv cache) and imports every module that environment holds.

    Workspace members install editable, and each one's path holds only its own `src/`, so
    what imports is exactly what the service declares: no dev group, no other member."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed to install the service alone"
    environment = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    environment["UV_PROJECT_ENVIRONMENT"] = str(tmp_path / "venv")
    synced = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--package", f"tenantry-{service}", "--quiet"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert synced.returncode == 0, synced.stderr
    report = import_everything(str(tmp_path / "venv" / "bin" / "python"), tmp_path)

    assert f"tenantry_{service}" in report["packages"]
    assert "tenantry_testkit" not in report["packages"]
    assert len(report["imported"]) > len(report["packages"])  # the walk found modules
    assert import_problems(report) == []


def test_the_import_check_catches_test_tooling_and_missing_dependencies(tmp_path: Path) -> None:
    """The same check on a package of ours that imports pytest (installed here, in the dev
    environment) and one module that needs something not installed at all."""
    package = tmp_path / "tenantry_sample"
    (package / "deep").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "deep" / "__init__.py").write_text("")
    (package / "deep" / "uses_pytest.py").write_text("import pytest\n")
    (package / "needs_more.py").write_text("import tenantry_not_installed_anywhere\n")
    (package / "fine.py").write_text("import json\n")

    # Not isolated, so that the sample (beside the script) is found.
    report = import_everything(sys.executable, tmp_path, "tenantry_sample", isolated=False)
    problems = import_problems(report)

    missing = "No module named 'tenantry_not_installed_anywhere'"
    assert problems[0] == f"tenantry_sample.needs_more: ModuleNotFoundError: {missing}"
    assert "test tooling loaded: pytest" in problems
    assert not [p for p in problems if "fine" in p]
