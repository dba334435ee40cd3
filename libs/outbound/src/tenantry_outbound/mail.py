"""Outbound mail over SMTP: verification links, invitations, notices.

`Mailer(SmtpSettings.from_env()).send(to, subject, text, html=None, headers=None)` builds
a MIME message (text, plus an HTML alternative when given) and hands it to the configured
relay over one SMTP connection; it returns the Message-ID. Code that only sends mail should
depend on the `MailSender` protocol, so tests and other transports can stand in.

STARTTLS: "auto" upgrades when the server offers it, "required" refuses to send without it,
"off" never upgrades (local sinks only).

Bodies carry secrets (verification and reset links): nothing here logs a body, a subject or
a recipient's local part. Logs and errors name the recipient's domain and the Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Literal, Protocol

import aiosmtplib
import msgspec

from tenantry_platform.settings import PREFIX, SettingsError

log = logging.getLogger("tenantry.mail")

StartTls = Literal["auto", "required", "off"]

ENV_PREFIX = PREFIX + "SMTP_"

# Headers `send` sets itself (or that would change who gets the message): callers may not.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "return-path",
        "received",
    }
)
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII, no colon
_QUIT_TIMEOUT = 2.0


class MailError(Exception):
    """The message was not handed to the relay. `temporary` is True when a retry later may
    succeed (connection failures, timeouts, 4xx replies); `smtp_code` is the server's reply
    code when there was one. The message names the recipient's domain, never the address."""

    def __init__(
        self,
        message: str,
        *,
        recipient_domain: str,
        temporary: bool,
        smtp_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.recipient_domain = recipient_domain
        self.temporary = temporary
        self.smtp_code = smtp_code


class MailSender(Protocol):
    """Anything that can send one message and return its Message-ID."""

    async def send(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str: ...


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(value: str) -> Address:
    """One mailbox ("bob@example.com" or "Bob <bob@example.com>"), or ValueError. A
    non-ASCII domain is converted to its IDNA (punycode) form."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an address may not contain line breaks or NUL")
    probe = EmailMessage()
    try:
        probe["To"] = value
        header = probe["To"]
        addresses = header.addresses
    except (ValueError, IndexError) as exc:  # the stdlib parser raises IndexError on "bob@"
        raise ValueError("not a valid email address") from exc
    if len(addresses) != 1 or header.defects:
        raise ValueError("expected exactly one valid email address")
    address = addresses[0]
    if not address.username or not address.domain or not address.domain.strip("."):
        raise ValueError("not a valid email address")
    domain = address.domain
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError("the address has an invalid domain") from exc
    return Address(display_name=address.display_name, username=address.username, domain=domain)


class SmtpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how to hand mail over. From the environment: TENANTRY_SMTP_HOST,
    TENANTRY_SMTP_PORT, TENANTRY_SMTP_USERNAME, ... (see `from_env`)."""

    host: str = "127.0.0.1"
    port: int = 2525  # the local sink (deploy/local/mail_sink.py)
    username: str | None = None
    password: str | None = None
    starttls: StartTls = "auto"
    timeout: float = 15.0  # seconds for one whole send: connect, TLS, envelope, data
    from_address: str = "Tenantry <no-reply@tenantry.local>"
    validate_certs: bool = True
    ca_file: str | None = None  # PEM bundle to trust instead of the system's (private relays)
    local_hostname: str | None = None  # the EHLO name; None: this host's FQDN

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError("port must be between 1 and 65535")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        remote = not _is_loopback(self.host)
        if self.username is not None and self.starttls != "required" and remote:
            # "auto" would send the password in the clear to a server that (or to a man in
            # the middle who) does not offer STARTTLS.
            raise ValueError('credentials for a remote relay need starttls "required"')
        parse_address(self.from_address)

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (
            f"SmtpSettings(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"password={password!r}, starttls={self.starttls!r}, timeout={self.timeout}, "
            f"from_address={self.from_address!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings:
        """TENANTRY_SMTP_<FIELD> for each field (TENANTRY_SMTP_FROM_ADDRESS, ...); unset or
        empty variables keep the defaults. Raises SettingsError naming the bad variables."""
        env = os.environ if environ is None else environ
        fields = msgspec.structs.fields(cls)
        raw = {
            field.name: env[ENV_PREFIX + field.name.upper()]
            for field in fields
            if env.get(ENV_PREFIX + field.name.upper())
        }
        try:
            return msgspec.convert(raw, type=cls, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            for field in fields:
                message = message.replace(f"`$.{field.name}`", ENV_PREFIX + field.name.upper())
            raise SettingsError(f"{cls.__name__}: invalid settings: {message}") from exc


class Mailer:
    """Sends each message over its own SMTP connection to the configured relay."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._from = parse_address(settings.from_address)

    def build(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EmailMessage:
        """The message `send` would send. ValueError on a bad recipient, a subject or header
        with line breaks, or an extra header that `send` sets itself."""
        recipient = parse_address(to)
        if any(c in subject for c in "\r\n"):
            raise ValueError("the subject may not contain line breaks")
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = make_msgid(domain=self._from.domain)
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        for name, value in (headers or {}).items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"the {name} header is set by the mailer")
            if any(c in value for c in "\r\n"):
                raise ValueError(f"the {name} header may not contain line breaks")
            del message[name]
            message[name] = value
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    async def send(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Hand the message to the relay; returns its Message-ID ("<...@domain>").
        Raises MailError when the relay did not accept it."""
        try:
            recipient = parse_address(to)
        except ValueError as exc:
            raise MailError(
                f"not sent: invalid recipient address ({exc})",
                recipient_domain="",
                temporary=False,
            ) from exc
        message = self.build(to, subject, text, html, headers)
        message_id = str(message["Message-ID"])
        domain = recipient.domain.lower()
        settings = self.settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            start_tls={"auto": None, "required": True, "off": False}[settings.starttls],
            timeout=settings.timeout,
            validate_certs=settings.validate_certs,
            cert_bundle=settings.ca_file,
            local_hostname=settings.local_hostname,
        )
        try:
            try:
                async with asyncio.timeout(settings.timeout):
                    await client.connect()
                    await client.send_message(
                        message,
                        sender=self._from.addr_spec,
                        recipients=[recipient.addr_spec],
                    )
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                error = self._error(exc, recipient, message_id)
                log.warning("%s", error)
                raise error from exc
            # Accepted: from here on a failure must not look like one (a retry would
            # send the message twice), so QUIT is best effort.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(_QUIT_TIMEOUT):
                    await client.quit()
        finally:
            client.close()
        log.info("mail %s sent to a recipient at %s", message_id, domain)
        return message_id

    def _error(self, exc: BaseException, recipient: Address, message_id: str) -> MailError:
        where = f"{self.settings.host}:{self.settings.port}"
        code: int | None = None
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
            code = exc.recipients[0].code
            reason = exc.recipients[0].message
        elif isinstance(exc, aiosmtplib.SMTPResponseException):
            code = exc.code
            reason = exc.message
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {self.settings.timeout}s"
        elif isinstance(exc, aiosmtplib.SMTPException):
            reason = exc.message
        else:
            reason = str(exc) or type(exc).__name__
        # Servers like to quote the address back ("550 <bob@x>: unknown user").
        reason = reason.replace(recipient.addr_spec, "<recipient>")
        domain = recipient.domain.lower()
        if code is not None:
            temporary = 400 <= code < 500
        else:  # lost connections and timeouts may pass; "no STARTTLS offered" will not
            temporary = isinstance(exc, OSError | TimeoutError)
        return MailError(
            f"mail {message_id} to a recipient at {domain} not sent via {where}: "
            f"{reason}" + (f" (SMTP {code})" if code is not None else ""),
            recipient_domain=domain,
            temporary=temporary,
            smtp_code=code,
        )
