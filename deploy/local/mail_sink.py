"""The local stack's SMTP server: accepts every message and keeps it as an .eml file.

    python deploy/local/mail_sink.py [--host 127.0.0.1] [--port 2525] [--dir .local/mail]
                                     [--tls-cert cert.pem --tls-key key.pem]

--port defaults to $TENANTRY_SMTP_PORT, else 2525; --port 0 takes a free port. --dir
defaults to the repo's .local/mail/. Nothing is relayed anywhere.

The folder is a maildir: a message is written to DIR/tmp/ and renamed into DIR/new/ once
complete, so a reader never sees half a message. Names sort by arrival:
<UTC time, 20250102T030405.123456Z>-<uuid hex>.eml. Each file is the message as received,
after a Return-Path, one Delivered-To per envelope recipient and a Received header (whose
"with ESMTPS" tells the message came over STARTTLS).

When ready it prints one line on stdout: "mail sink listening on HOST:PORT, storing in DIR".
SIGTERM or SIGINT stop it (exit 0). Plain SMTP; STARTTLS is offered only with --tls-cert and
--tls-key. A client in STARTTLS "auto" mode simply stays plain.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".local" / "mail"
DEFAULT_PORT = 2525
HOSTNAME = "tenantry-mail-sink"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

log = logging.getLogger("tenantry.mail_sink")


def message_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{uuid.uuid4().hex}.eml"


class MaildirHandler:
    """aiosmtpd handler: every accepted message becomes DIR/new/<name>.eml."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def store(self, data: bytes, name: str) -> Path:
        tmp, final = self.folder / "tmp" / name, self.folder / "new" / name
        with open(tmp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)  # atomic on one filesystem: readers see all of it or nothing
        return final

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        now = datetime.now(UTC)
        name = message_name(now)
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.extended_smtp and session.ssl is not None:
            protocol += "S"
        if session.extended_smtp and session.authenticated:
            protocol += "A"
        peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
        trace = [f"Return-Path: <{envelope.mail_from or ''}>"]
        trace += [f"Delivered-To: {rcpt}" for rcpt in envelope.rcpt_tos]
        trace.append(
            f"Received: from {session.host_name or 'unknown'} ([{peer}])\r\n"
            f"\tby {HOSTNAME} with {protocol} id {name.removesuffix('.eml')};\r\n"
            f"\t{format_datetime(now)}"
        )
        data = ("\r\n".join(trace) + "\r\n").encode("utf-8") + content
        try:
            await asyncio.to_thread(self.store, data, name)
        except OSError as exc:
            log.error("could not store a message: %s", exc)
            return "451 4.3.0 Could not store the message"
        log.info("stored new/%s (%d recipients, %d bytes)", name, len(envelope.rcpt_tos), len(data))
        return f"250 2.0.0 Ok: stored as {name}"


async def serve(host: str, port: int, folder: Path, tls: ssl.SSLContext | None) -> int:
    loop = asyncio.get_running_loop()
    handler = MaildirHandler(folder)

    def protocol() -> SMTP:
        return SMTP(
            handler,
            hostname=HOSTNAME,
            enable_SMTPUTF8=True,
            data_size_limit=MAX_MESSAGE_BYTES,
            tls_context=tls,
            loop=loop,
        )

    try:
        server = await loop.create_server(protocol, host, port)
    except OSError as exc:
        print(f"mail sink: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"mail sink listening on {host}:{bound}, storing in {folder}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    log.info("mail sink stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TENANTRY_SMTP_PORT") or DEFAULT_PORT)
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: offer STARTTLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    # aiosmtpd logs every protocol line (message bodies included) at DEBUG.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    tls: ssl.SSLContext | None = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    return asyncio.run(serve(args.host, args.port, args.dir.resolve(), tls))


if __name__ == "__main__":
    sys.exit(main())
