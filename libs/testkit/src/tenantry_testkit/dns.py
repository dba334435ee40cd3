"""A real DNS server on loopback for tests of DNS lookups (domain-verification TXT records).

Served by dnslib over UDP and TCP on 127.0.0.1 and one free port (the same number for
both), in background threads, so it works from sync and async tests alike:

    with LoopbackDns() as dns:                      # or: async with LoopbackDns() as dns:
        dns.set_txt("_tenantry-verification.example.com", ["tenantry-verification=abc"])
        resolver = TxtResolver([dns.address])

It answers like the authoritative server of every zone it holds:

    a name with records          its TXT records (other types: NOERROR, no answer)
    a name above such a name     NOERROR, no answer (an empty non-terminal)
    any other name               NXDOMAIN
    fail(name, rcode)            that rcode (SERVFAIL by default) until cleared
    delay(name, seconds)         the answer, `seconds` late (a slow or dead server)

Over UDP an answer larger than the client's limit (512 bytes, or the EDNS payload size it
advertised) is truncated (TC flag, question only), as real servers do, so a client must
retry over TCP. TXT values longer than 255 bytes are split into several character-strings.
Every query is recorded (name lowercased without the trailing dot, type) before it is
answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from dnslib import QTYPE, RCODE, RR, TXT, DNSError, DNSRecord

FailureRcode = Literal["SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"]
Protocol = Literal["udp", "tcp"]

_MAX_CHARACTER_STRING = 255
_CLASSIC_UDP_LIMIT = 512
_TTL = 1
_POLL_INTERVAL = 0.05
_TCP_IDLE_TIMEOUT = 5.0


def _key(name: str) -> str:
    """Names compare case-insensitively and with or without the root dot."""
    return name.strip().lower().rstrip(".")


def character_strings(value: str) -> list[bytes]:
    """A TXT value as the <character-string>s that carry it: UTF-8, at most 255 bytes each
    (an empty value is one empty string)."""
    data = value.encode()
    if not data:
        return [b""]
    return [data[i : i + _MAX_CHARACTER_STRING] for i in range(0, len(data), _MAX_CHARACTER_STRING)]


@dataclass(frozen=True)
class DnsQuery:
    name: str  # lowercased, no trailing dot
    qtype: str  # "TXT", "A", ...
    protocol: Protocol


class LoopbackDns:
    """A loopback DNS server whose zone the test edits while it runs (thread-safe)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """`port` 0 picks a free one; a fixed port is for a server a running service was
        configured to ask (TENANTRY_SSO_DNS_NAMESERVERS)."""
        self._host = host
        self._wanted_port = port
        self._port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._txt: dict[str, list[str]] = {}
        self._failures: dict[str, FailureRcode] = {}
        self._delays: dict[str, float] = {}
        self._log: list[DnsQuery] = []
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # -- where it listens and what it saw ---------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the DNS server is not running (use it as a context manager)")
        return self._port

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT", as a nameserver entry."""
        return f"{self._host}:{self.port}"

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query so far, over either protocol, as (name, type)."""
        with self._lock:
            return [(q.name, q.qtype) for q in self._log]

    @property
    def tcp_queries(self) -> list[tuple[str, str]]:
        """The queries that came over TCP, as (name, type)."""
        with self._lock:
            return [(q.name, q.qtype) for q in self._log if q.protocol == "tcp"]

    @property
    def log(self) -> list[DnsQuery]:
        """Every query so far, with the protocol it came over."""
        with self._lock:
            return list(self._log)

    # -- the zone ---------------------------------------------------------------------------

    def set_txt(self, name: str, values: Sequence[str]) -> None:
        """Replace the TXT records of `name` (an empty list: the name exists, no TXT)."""
        if isinstance(values, str):
            raise TypeError("values is a sequence of TXT values, not one string")
        for value in values:
            _check_value(value)
        with self._lock:
            self._txt[_key(name)] = list(values)

    def add_txt(self, name: str, value: str) -> None:
        """Add one TXT record to `name` (creating the name)."""
        _check_value(value)
        with self._lock:
            self._txt.setdefault(_key(name), []).append(value)

    def clear(self, name: str) -> None:
        """Forget `name`: its records, failure and delay (it answers NXDOMAIN again)."""
        key = _key(name)
        with self._lock:
            self._txt.pop(key, None)
            self._failures.pop(key, None)
            self._delays.pop(key, None)

    def fail(self, name: str, rcode: FailureRcode = "SERVFAIL") -> None:
        """Answer every query for `name` with `rcode` (a broken zone) until cleared."""
        if rcode not in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
            raise ValueError(f"unsupported failure rcode {rcode!r}")
        with self._lock:
            self._failures[_key(name)] = rcode

    def delay(self, name: str, seconds: float) -> None:
        """Answer queries for `name` only after `seconds` (0 removes the delay)."""
        if seconds < 0:
            raise ValueError("a delay is not negative")
        with self._lock:
            if seconds:
                self._delays[_key(name)] = seconds
            else:
                self._delays.pop(_key(name), None)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._servers:
            raise RuntimeError("the DNS server is already running")
        self._stopping.clear()
        udp, tcp = self._bind()
        self._servers = [udp, tcp]
        self._port = udp.server_address[1]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"loopback-dns-{self._port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed answers, which then stay unsent
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start()  # binds two sockets and starts two threads: does not block
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)  # shutdown() waits for the serving threads

    def _bind(self) -> tuple[_UdpServer, _TcpServer]:
        """UDP on a free port, then TCP on the same number (retrying if TCP's is taken)."""
        last: OSError | None = None
        if self._wanted_port:
            udp = _UdpServer((self._host, self._wanted_port), _Handler, self)
            try:
                return udp, _TcpServer((self._host, self._wanted_port), _Handler, self)
            except OSError:
                udp.server_close()
                raise
        for _ in range(50):
            udp = _UdpServer((self._host, 0), _Handler, self)
            try:
                tcp = _TcpServer((self._host, udp.server_address[1]), _Handler, self)
            except OSError as error:
                udp.server_close()
                last = error
                continue
            return udp, tcp
        raise RuntimeError(f"no free port for both UDP and TCP on {self._host}: {last}")

    # -- answering (called from the servers' threads) ---------------------------------------

    def _answer(self, request: Any, protocol: Protocol) -> Any | None:
        """The reply to a parsed query, or None to stay silent (stopping)."""
        question = request.q
        name = _key(str(question.qname))
        qtype = QTYPE.get(question.qtype, str(question.qtype))
        with self._lock:
            self._log.append(DnsQuery(name, qtype, protocol))
            delay = self._delays.get(name, 0.0)
            failure = self._failures.get(name)
            values = self._txt.get(name)
            exists = values is not None or any(k.endswith("." + name) for k in self._txt)
            values = list(values or [])
        if delay and self._stopping.wait(delay):
            return None
        reply = request.reply(ra=1, aa=1)
        if failure is not None:
            reply.header.aa = 0
            reply.header.rcode = getattr(RCODE, failure)
        elif not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype in ("TXT", "ANY"):
            for value in values:
                reply.add_answer(
                    RR(question.qname, QTYPE.TXT, rdata=TXT(character_strings(value)), ttl=_TTL)
                )
        return reply

    def _pack(self, request: Any, reply: Any, protocol: Protocol) -> bytes:
        data: bytes = reply.pack()
        if protocol == "udp" and len(data) > _udp_limit(request):
            truncated = DNSRecord(header=reply.header, questions=list(reply.questions))
            truncated.header.tc = 1
            truncated.set_header_qa()
            data = truncated.pack()
        return data


def _check_value(value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a TXT value is a str, not {type(value).__name__}")
    if len(value.encode()) > 60_000:
        raise ValueError("a TXT record must fit in one DNS message")


def _udp_limit(request: Any) -> int:
    """512 bytes, or the payload size the client advertised in an EDNS OPT record."""
    for record in request.ar:
        if record.rtype == QTYPE.OPT:
            return max(_CLASSIC_UDP_LIMIT, int(record.rclass))
    return _CLASSIC_UDP_LIMIT


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = False  # port 0 must give a port no other UDP socket holds
    max_packet_size = 65_535

    def __init__(self, address: tuple[str, int], handler: type[_Handler], dns: LoopbackDns) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dns = dns
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.dns._stopping.is_set():
            super().handle_error(request, client_address)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True  # a port in TIME_WAIT from an earlier test is fine

    def __init__(self, address: tuple[str, int], handler: type[_Handler], dns: LoopbackDns) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.dns = dns
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.dns._stopping.is_set():
            super().handle_error(request, client_address)


class _Handler(socketserver.BaseRequestHandler):
    server: _UdpServer | _TcpServer

    def handle(self) -> None:
        if isinstance(self.server, _TcpServer):
            self._handle_tcp()
        else:
            data, sock = self.request
            reply = self._reply(data, "udp")
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, self.client_address)

    def _handle_tcp(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(_TCP_IDLE_TIMEOUT)
        with contextlib.suppress(OSError):
            while True:  # one connection may carry several queries (RFC 7766)
                header = _recv_exactly(conn, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                data = _recv_exactly(conn, length)
                if data is None:
                    return
                reply = self._reply(data, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def _reply(self, data: bytes, protocol: Protocol) -> bytes | None:
        dns = self.server.dns
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None  # not DNS: ignore, as a server would
        if not request.questions:
            return None
        reply = dns._answer(request, protocol)
        if reply is None:
            return None
        return dns._pack(request, reply, protocol)


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
