"""Outbound mail end to end: Mailer -> real SMTP -> the local sink (a real process) -> .eml
files -> Mailbox."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from tenantry_outbound.mail import Mailer, MailError, MailSender, SmtpSettings
from tenantry_platform.settings import SettingsError
from tenantry_testkit.mailbox import Mailbox, MemoryMailer, links, recipients
from tenantry_testkit.tls import write_tls_files

SINK = Path(__file__).resolve().parents[3] / "deploy" / "local" / "mail_sink.py"
LINK = "https://app.tenantry.local/verify?token=" + "k3y" * 40 + "&next=%2Fhome"


@dataclass
class Sink:
    process: asyncio.subprocess.Process
    port: int
    folder: Path

    async def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit code and what it wrote to stderr."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.process.communicate(), 10)
        assert self.process.returncode is not None
        return self.process.returncode, err.decode(errors="replace")


async def start_sink(folder: Path, *args: str, env: dict[str, str] | None = None) -> Sink:
    argv = [sys.executable, str(SINK), "--dir", str(folder), *args]
    if env is None:
        argv += ["--port", "0"]  # the sink takes a free port and says which
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    except TimeoutError:
        process.kill()
        raise
    if not line.startswith("mail sink listening on 127.0.0.1:"):
        _, err = await process.communicate()
        raise AssertionError(f"the sink did not start: {line!r} {err.decode()}")
    port = int(line.split("127.0.0.1:")[1].split(",")[0])
    return Sink(process, port, folder)


@pytest_asyncio.fixture
async def sink(tmp_path: Path) -> AsyncIterator[Sink]:
    started = await start_sink(tmp_path / "mail")
    try:
        yield started
    finally:
        code, err = await started.stop()
        assert code == 0, err


def mailer_for(sink: Sink, **overrides: object) -> Mailer:
    settings = SmtpSettings(host="127.0.0.1", port=sink.port, timeout=5.0)
    return Mailer(msgspec.structs.replace(settings, **overrides))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_sent_message_arrives_with_its_subject_recipient_and_link(sink: Sink) -> None:
    mailbox = Mailbox(sink.folder)
    message_id = await mailer_for(sink).send(
        "Alice@Example.COM",
        "Verify your email",
        f"Hello,\n\nopen {LINK}.\n\nThe link works for 24 hours.\n",
        html=f'<p><a href="{LINK}">Verify</a></p>',
        headers={"X-Tenantry-Kind": "verify-email"},
    )

    message = await mailbox.wait_for("alice@example.com", subject_contains="Verify", timeout=10)
    assert message["Message-ID"] == message_id
    assert message_id.startswith("<")
    assert message_id.endswith("@tenantry.local>")
    assert message["Subject"] == "Verify your email"
    assert message["From"] == "Tenantry <no-reply@tenantry.local>"
    assert recipients(message) == {"alice@example.com"}
    assert message["X-Tenantry-Kind"] == "verify-email"
    assert message.get_body(preferencelist=("html",)) is not None
    assert links(message) == [LINK]  # the long link survives the transfer encoding
    assert "with ESMTP id" in message["Received"]  # plain SMTP: the sink offers no STARTTLS
    # stored atomically: nothing left half-written in tmp/, one file in new/
    assert list((sink.folder / "tmp").iterdir()) == []
    [stored] = list((sink.folder / "new").iterdir())
    assert stored.suffix == ".eml"


async def test_wait_for_matches_the_subject_and_hands_each_message_out_once(sink: Sink) -> None:
    mailbox = Mailbox(sink.folder)
    mailer = mailer_for(sink)
    await mailer.send("bob@example.com", "Welcome", "hi")
    await mailer.send("bob@example.com", "Reset your password", "https://x.test/reset?t=1")
    await mailer.send("bob@example.com", "Reset your password", "https://x.test/reset?t=2")

    first = await mailbox.wait_for("bob@example.com", subject_contains="Reset", timeout=10)
    second = await mailbox.wait_for("Bob <BOB@example.com>", subject_contains="Reset", timeout=10)
    assert {links(first)[0], links(second)[0]} == {
        "https://x.test/reset?t=1",
        "https://x.test/reset?t=2",
    }
    welcome = await mailbox.wait_for("bob@example.com", timeout=10)
    assert welcome["Subject"] == "Welcome"
    with pytest.raises(AssertionError, match=r"no new message to bob@example\.com"):
        await mailbox.wait_for("bob@example.com", timeout=0.3)


async def test_a_mailbox_sees_only_what_arrived_after_it_was_made(sink: Sink) -> None:
    mailer = mailer_for(sink)
    await mailer.send("carol@example.com", "Old news", "sent before")
    earlier = Mailbox(sink.folder, since=datetime.now(UTC) - timedelta(minutes=1))
    await earlier.wait_for("carol@example.com", subject_contains="Old", timeout=10)

    later = Mailbox(sink.folder)
    await mailer.send("carol@example.com", "Fresh", "sent after")
    message = await later.wait_for("carol@example.com", timeout=10)
    assert message["Subject"] == "Fresh"
    assert [m["Subject"] for m in await later.messages()] == ["Fresh"]


async def test_a_send_to_a_closed_port_raises_mail_error_quickly() -> None:
    mailer = Mailer(SmtpSettings(host="127.0.0.1", port=closed_port(), timeout=5.0))
    started = time.monotonic()
    with pytest.raises(MailError) as info:
        await mailer.send("dave@example.com", "Verify", "secret https://x.test/v?t=s3cr3t")
    assert time.monotonic() - started < 2.0
    assert info.value.temporary
    assert info.value.recipient_domain == "example.com"
    assert "example.com" in str(info.value)
    assert "dave" not in str(info.value)
    assert "s3cr3t" not in str(info.value)


async def test_required_starttls_refuses_a_server_without_it(sink: Sink) -> None:
    with pytest.raises(MailError, match="STARTTLS") as info:
        await mailer_for(sink, starttls="required").send("erin@example.com", "Verify", "text")
    assert not info.value.temporary
    assert list((sink.folder / "new").iterdir()) == []


async def test_auto_and_required_modes_use_starttls_when_the_server_offers_it(
    tmp_path: Path,
) -> None:
    ca, cert, key = write_tls_files(tmp_path)
    tls_sink = await start_sink(tmp_path / "mail", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        mailbox = Mailbox(tls_sink.folder)
        for mode in ("auto", "required"):
            mailer = mailer_for(tls_sink, starttls=mode, ca_file=str(ca))
            await mailer.send("frank@example.com", f"over TLS ({mode})", "text")
            message = await mailbox.wait_for("frank@example.com", subject_contains=mode, timeout=10)
            assert "with ESMTPS id" in message["Received"]
        # "off" stays plain even though the server offers STARTTLS
        await mailer_for(tls_sink, starttls="off").send("frank@example.com", "plain", "text")
        message = await mailbox.wait_for("frank@example.com", subject_contains="plain", timeout=10)
        assert "with ESMTP id" in message["Received"]
        # a certificate the mailer does not trust is a failure, not a silent downgrade
        with pytest.raises(MailError):
            await mailer_for(tls_sink, starttls="auto").send("frank@example.com", "x", "text")
    finally:
        code, err = await tls_sink.stop()
        assert code == 0, err


async def test_bodies_and_local_parts_never_reach_the_log(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "https://app.tenantry.local/verify?token=s3cr3t-t0ken"
    message_id = await mailer_for(sink).send(
        "grace@example.org", "Verify grace", f"open {secret}", html=f"<a href='{secret}'>x</a>"
    )
    with pytest.raises(MailError):
        await Mailer(SmtpSettings(port=closed_port())).send("grace@example.org", "V", secret)
    assert message_id in caplog.text
    assert "example.org" in caplog.text
    assert "s3cr3t" not in caplog.text
    assert "grace" not in caplog.text


@pytest.mark.parametrize("to", ["not-an-address", "a@b.test, c@d.test", "bob@", "x@y\r\nBcc: z@w"])
async def test_an_invalid_recipient_is_a_mail_error(to: str) -> None:
    with pytest.raises(MailError, match="invalid recipient") as info:
        await Mailer(SmtpSettings(port=closed_port())).send(to, "s", "t")
    assert not info.value.temporary


@pytest.mark.parametrize(
    ("subject", "headers"),
    [
        ("two\nlines", None),
        ("ok", {"Bcc": "eve@example.com"}),
        ("ok", {"X-Thing": "a\r\nBcc: eve@example.com"}),
        ("ok", {"Bad Name": "x"}),
    ],
)
def test_header_injection_is_refused(subject: str, headers: dict[str, str] | None) -> None:
    with pytest.raises(ValueError, match=r"header|subject"):
        Mailer(SmtpSettings()).build("bob@example.com", subject, "t", headers=headers)


def test_smtp_settings_from_the_environment() -> None:
    settings = SmtpSettings.from_env(
        {
            "TENANTRY_SMTP_HOST": "smtp.example.net",
            "TENANTRY_SMTP_PORT": "587",
            "TENANTRY_SMTP_USERNAME": "tenantry",
            "TENANTRY_SMTP_PASSWORD": "hunter2",
            "TENANTRY_SMTP_STARTTLS": "required",
            "TENANTRY_SMTP_TIMEOUT": "7.5",
            "TENANTRY_SMTP_FROM_ADDRESS": "Tenantry <mail@tenantry.example>",
        }
    )
    assert (settings.host, settings.port, settings.timeout) == ("smtp.example.net", 587, 7.5)
    assert settings.starttls == "required"
    assert "hunter2" not in repr(settings)
    assert SmtpSettings.from_env({"TENANTRY_SMTP_PORT": "2525"}) == SmtpSettings()

    for env, named in [
        ({"TENANTRY_SMTP_PORT": "smtp"}, "TENANTRY_SMTP_PORT"),
        ({"TENANTRY_SMTP_STARTTLS": "maybe"}, "TENANTRY_SMTP_STARTTLS"),
        ({"TENANTRY_SMTP_FROM_ADDRESS": "nobody"}, "valid email address"),
        # a password for a remote relay never travels without TLS
        (
            {
                "TENANTRY_SMTP_HOST": "smtp.example.net",
                "TENANTRY_SMTP_USERNAME": "u",
                "TENANTRY_SMTP_PASSWORD": "p",
            },
            "starttls",
        ),
    ]:
        with pytest.raises(SettingsError, match=named):
            SmtpSettings.from_env(env)


async def test_memory_mailer_stands_in_for_a_mail_sender() -> None:
    sender: MailSender = MemoryMailer()
    message_id = await sender.send("henry@example.com", "Invite", f"join: {LINK}")
    assert isinstance(sender, MemoryMailer)
    [message] = sender.sent
    assert message["Message-ID"] == message_id
    assert links(message) == [LINK]


async def test_the_sink_takes_its_port_from_the_environment_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    started = await start_sink(tmp_path / "mail", env={"TENANTRY_SMTP_PORT": "0"})
    await mailer_for(started).send("ivan@example.com", "before stop", "text")
    code, err = await started.stop()
    assert code == 0, err
    with pytest.raises(MailError):
        await mailer_for(started).send("ivan@example.com", "after stop", "text")
    await Mailbox(started.folder, since=datetime.now(UTC) - timedelta(minutes=1)).wait_for(
        "ivan@example.com", subject_contains="before stop", timeout=1
    )
