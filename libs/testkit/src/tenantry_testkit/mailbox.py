"""Reading mail back in tests: the local sink's folder (deploy/local/mail_sink.py), and an
in-memory stand-in for code that only needs a `MailSender`.

    mailbox = Mailbox(tmp_path / "mail")          # before the action that sends
    ...                                            # e.g. sign up alice@example.com
    message = await mailbox.wait_for("alice@example.com", subject_contains="Verify")
    [link] = links(message)

A Mailbox sees only messages that arrived after it was made (or after `since`), and
`wait_for` hands each message out at most once, so two waits for the same recipient return
two different messages.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from email.utils import getaddresses
from os import PathLike
from pathlib import Path

from tenantry_outbound.mail import Mailer, SmtpSettings

_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""
_STAMP = re.compile(r"(\d{8}T\d{6}\.\d{6}Z)-")


def recipients(message: EmailMessage) -> set[str]:
    """Lower-cased addresses the message was delivered to: the sink's Delivered-To headers
    (the SMTP envelope), else To and Cc."""
    delivered = message.get_all("Delivered-To") or []
    if not delivered:
        delivered = [*(message.get_all("To") or []), *(message.get_all("Cc") or [])]
    return {address.lower() for _, address in getaddresses([str(v) for v in delivered]) if address}


def links(message: EmailMessage) -> list[str]:
    """The http(s) URLs in the message's text/plain part, in order, each once."""
    part = message.get_body(preferencelist=("plain",))
    if part is None:
        return []
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    found: list[str] = []
    for match in _URL.finditer(str(text)):
        url = match.group(0).rstrip(_TRAILING)
        if url not in found:
            found.append(url)
    return found


def _received_at(path: Path) -> datetime:
    match = _STAMP.match(path.name)
    if match:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


class Mailbox:
    """The messages a maildir folder received since this Mailbox was made."""

    def __init__(self, folder: str | PathLike[str], *, since: datetime | None = None) -> None:
        self.folder = Path(folder)
        self.since = since or datetime.now(UTC)
        self._parsed: dict[Path, EmailMessage] = {}
        self._handed_out: set[Path] = set()

    def _scan(self) -> list[tuple[Path, EmailMessage]]:
        paths: list[Path] = []
        for sub in ("new", "cur"):  # a mail reader moves what it has shown into cur/
            folder = self.folder / sub
            if folder.is_dir():
                paths += [p for p in folder.iterdir() if p.is_file() and p.suffix == ".eml"]
        found: list[tuple[Path, EmailMessage]] = []
        for path in sorted(paths, key=lambda p: p.name):
            message = self._parsed.get(path)
            if message is None:
                try:
                    if _received_at(path) < self.since:
                        continue
                    data = path.read_bytes()
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                message = BytesParser(EmailMessage, policy=default_policy).parsebytes(data)
                self._parsed[path] = message
            found.append((path, message))
        return found

    async def messages(self) -> list[EmailMessage]:
        """Every message received since this Mailbox was made, oldest first."""
        return [message for _, message in await asyncio.to_thread(self._scan)]

    async def wait_for(
        self, to: str, *, subject_contains: str | None = None, timeout: float = 20
    ) -> EmailMessage:
        """The first message to `to` (and with `subject_contains` in its subject) that this
        Mailbox has not handed out yet; AssertionError after `timeout` seconds."""
        wanted = (getaddresses([to])[0][1] or to).lower()
        deadline = time.monotonic() + timeout
        while True:
            seen = await asyncio.to_thread(self._scan)
            for path, message in seen:
                if path in self._handed_out or wanted not in recipients(message):
                    continue
                if subject_contains is not None and subject_contains not in str(
                    message.get("Subject", "")
                ):
                    continue
                self._handed_out.add(path)
                return message
            if time.monotonic() > deadline:
                summary = "; ".join(
                    f"to {sorted(recipients(m))} subject {str(m.get('Subject', ''))!r}"
                    for _, m in seen
                )
                wanted_subject = (
                    f" with {subject_contains!r} in the subject" if subject_contains else ""
                )
                raise AssertionError(
                    f"no new message to {wanted}{wanted_subject} in {self.folder} within "
                    f"{timeout}s; it has {len(seen)} new: {summary or 'none'}"
                )
            await asyncio.sleep(0.05)


@dataclass
class MemoryMailer:
    """A MailSender that keeps messages in `sent` instead of sending them (unit tests)."""

    settings: SmtpSettings = field(default_factory=SmtpSettings)
    sent: list[EmailMessage] = field(default_factory=list)

    async def send(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        message = Mailer(self.settings).build(to, subject, text, html, headers)
        self.sent.append(message)
        return str(message["Message-ID"])
