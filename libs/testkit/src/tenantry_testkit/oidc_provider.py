"""An independent OpenID provider on loopback for tests of our OIDC relying party.

The provider is the certified Node package `oidc-provider` (tests/peers/oidc-provider), so
the RP is checked against someone else's reading of the spec, not our own. This module only
configures it, runs it as a child process, rotates its keys, kills it, and walks its login
pages without a browser (`follow_login`).

    async with OidcProvider.running(tmp_path, clients=[...], accounts={...}) as op:
        discovery = f"{op.issuer}/.well-known/openid-configuration"

The package must be installed first: `npm ci --prefix tests/peers/oidc-provider`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

PEER_DIR = Path("tests") / "peers" / "oidc-provider"
READY_DEADLINE = 20.0
STOP_GRACE = 5.0
MAX_HOPS = 20

_FORM = re.compile(r'<form[^>]*\baction="([^"]+)"', re.IGNORECASE)
_ERROR = re.compile(r'id="error"[^>]*>(.*?)</p>', re.IGNORECASE | re.DOTALL)
_DESCRIPTION = re.compile(r'id="error_description"[^>]*>(.*?)</p>', re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class OidcClient:
    """A registered relying party, as the provider's config takes it."""

    client_id: str
    client_secret: str
    redirect_uris: Sequence[str]
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 (a method name)


@dataclass(frozen=True)
class OidcAccount:
    """An end user the provider can sign in; keyed by `sub` in `OidcProvider.running`."""

    email: str
    email_verified: bool = True
    given_name: str = ""
    family_name: str = ""
    groups: Sequence[str] = ()


class OidcProviderError(RuntimeError):
    """The provider answered a login walk with an error page or a refused login, or did not
    come up; the message carries what it said so a failing test explains itself."""

    def __init__(self, message: str, *, error: str = "", description: str = "") -> None:
        super().__init__(message)
        self.error = error
        self.description = description


def find_peer_dir() -> Path:
    """The oidc-provider peer folder: from TENANTRY_REPO, else the nearest ancestor of this
    file that holds it (works from a checkout and from an editable install)."""
    env = os.environ.get("TENANTRY_REPO")
    candidates = [Path(env)] if env else list(Path(__file__).resolve().parents)
    for root in candidates:
        if (root / PEER_DIR / "package.json").is_file():
            return root / PEER_DIR
    where = f"TENANTRY_REPO={env}" if env else f"any parent of {Path(__file__).resolve()}"
    raise OidcProviderError(f"{PEER_DIR}/package.json not found under {where}")


def new_signing_key() -> dict[str, Any]:
    """A fresh private RS256 JWK with a kid never used before, so a rotation is visible."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAKey.import_key(private).as_dict(private=True)
    jwk.update(kid=f"op-{secrets.token_hex(8)}", alg="RS256", use="sig")
    return jwk


def _public(jwk: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k in {"kty", "n", "e", "kid", "alg", "use"}}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


@dataclass
class OidcProvider:
    """One oidc-provider process; state (sessions, codes) lives in its memory, so a restart
    (`rotate_keys`, `kill` + `start`) forgets it as a real OP losing its store would."""

    workdir: Path
    clients: Sequence[OidcClient]
    accounts: Mapping[str, OidcAccount]
    port: int
    keys: list[dict[str, Any]] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def signing_kid(self) -> str:
        """The kid the provider signs new ID tokens with (the first key)."""
        kid: str = self.keys[0]["kid"]
        return kid

    @property
    def public_jwks(self) -> dict[str, Any]:
        """What the provider publishes at its jwks_uri (public halves only)."""
        return {"keys": [_public(k) for k in self.keys]}

    @property
    def log_path(self) -> Path:
        return self.workdir / "oidc-provider.log"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        workdir: Path,
        *,
        clients: Sequence[OidcClient],
        accounts: Mapping[str, OidcAccount],
        port: int | None = None,
    ) -> AsyncIterator[Self]:
        """Start a provider with one fresh signing key; always stop it on the way out."""
        op = cls(workdir, clients, accounts, port or _free_port(), [new_signing_key()])
        try:
            await op.start()
            yield op
        finally:
            await op.stop()

    def _write_files(self) -> Path:
        jwks_path = self.workdir / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": self.keys}))
        jwks_path.chmod(0o600)
        config = {
            "issuer": self.issuer,
            "port": self.port,
            "jwks_path": str(jwks_path),
            "clients": [
                {
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "redirect_uris": list(c.redirect_uris),
                    "token_endpoint_auth_method": c.token_endpoint_auth_method,
                }
                for c in self.clients
            ],
            "accounts": {
                sub: {
                    "email": a.email,
                    "email_verified": a.email_verified,
                    "given_name": a.given_name,
                    "family_name": a.family_name,
                    "groups": list(a.groups),
                }
                for sub, a in self.accounts.items()
            },
        }
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        return config_path

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        peer = find_peer_dir()
        if not (peer / "node_modules" / "oidc-provider" / "package.json").is_file():
            raise OidcProviderError(
                f"oidc-provider is not installed in {peer}: "
                "run `npm ci --prefix tests/peers/oidc-provider`"
            )
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not on PATH; the OIDC peer needs Node.js")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self._write_files()
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [node, "server.mjs", str(config_path)],
                cwd=peer,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self) -> None:
        """Spawn the process (if not running) and wait until discovery answers."""
        if self._process is not None and self._process.poll() is None:
            return
        self._process = self._spawn()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as http:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise OidcProviderError(
                        f"oidc-provider exited (code {code}) before it was ready:\n"
                        + self._log_tail()
                    )
                with contextlib.suppress(httpx.TransportError, ValueError):
                    response = await http.get(self.discovery_url)
                    if response.status_code == 200 and response.json()["issuer"] == self.issuer:
                        return
                if time.monotonic() > deadline:
                    await self.kill()
                    raise OidcProviderError(
                        f"oidc-provider not ready at {self.discovery_url} within "
                        f"{READY_DEADLINE:.0f} s:\n{self._log_tail()}"
                    )
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE: a clean exit when it cooperates."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def kill(self) -> None:
        """SIGKILL with no grace: the provider vanishes mid-flight (fault tests)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        await asyncio.to_thread(process.wait)

    async def rotate_keys(self, *, keep_old: bool = False) -> None:
        """Sign with a new key from now on: a new kid first in the JWKS, the old keys still
        published only with `keep_old`. Restarts the process on the same port."""
        self.keys = [new_signing_key(), *(self.keys if keep_old else [])]
        await self.stop()
        await self.start()

    async def follow_login(
        self,
        http: httpx.AsyncClient,
        authorize_url: str,
        *,
        login: str,
        tamper_authorize: Callable[[str], str] | None = None,
    ) -> str:
        """Walk the provider's pages as a browser would and return the final redirect to the
        client's redirect_uri (code and state, or an error), without fetching it.

        Cookies live in `http`'s jar. Redirects are followed only while they stay on the
        provider; the first one that leaves it is the answer. The provider's session cookie
        stays in that jar too: a later walk with the same client is a silent SSO as the same
        user and `login` goes unused (clear `http.cookies` to sign in as someone else).
        """
        url = tamper_authorize(authorize_url) if tamper_authorize else authorize_url
        redirect_uri = parse_qs(urlsplit(url).query).get("redirect_uri", [""])[0]
        provider_origin = _origin(self.issuer)
        method, form, submitted = "GET", None, False
        for _ in range(MAX_HOPS):
            response = await http.request(method, url, data=form, follow_redirects=False)
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                base = location.split("?", 1)[0].split("#", 1)[0]
                if base == redirect_uri or _origin(location) != provider_origin:
                    return location
                method, form, url = "GET", None, location
                continue
            body = response.text
            action = _FORM.search(body)
            error = _ERROR.search(body)
            if response.status_code == 200 and action and not submitted:
                method, form, submitted = "POST", {"login": login}, True
                url = urljoin(str(response.url), html.unescape(action.group(1)))
                continue
            code = _text(error.group(1)) if error else f"HTTP {response.status_code}"
            description = _DESCRIPTION.search(body)
            detail = _text(description.group(1)) if description else ""
            if action and submitted:
                raise OidcProviderError(
                    f"provider refused login {login!r}: {code}", error="login_refused"
                )
            raise OidcProviderError(
                f"provider error at {response.url}: {code}" + (f" ({detail})" if detail else ""),
                error=code,
                description=detail,
            )
        raise OidcProviderError(f"more than {MAX_HOPS} redirects from {authorize_url}")
