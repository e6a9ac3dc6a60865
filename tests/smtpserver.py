"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that records what it receives
and injects faults, as aiosmtplib's own tests do. No mock of the SMTP client anywhere."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float  # the server's monotonic clock when DATA was accepted
    session: int  # which connection carried it
    helo: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def _open_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class Recorder:
    """The handler: records messages; faults are set per test."""

    messages: list[Received] = field(default_factory=list)
    rcpt_codes: dict[str, list[str]] = field(default_factory=dict)  # address → replies to use first
    reject: dict[str, str] = field(default_factory=dict)  # address → permanent reply
    drop_in_data: dict[str, int] = field(default_factory=dict)  # address → times to drop
    data_delay: float = 0.0
    data_gate: int = 0  # when set, DATA waits until this many are in DATA at once
    # DATA is held while ``gate`` is clear (the test opens it); ``hold_after`` clears it
    # once that many messages were accepted, so a run cannot finish behind a test's back.
    gate: threading.Event = field(default_factory=lambda: _open_event())
    hold_after: int | None = None
    gate_only: set[str] | None = None  # the gate holds only these recipients (None: all)
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads pipelined input fine)
    mail_reply: str | None = None  # a reply to every MAIL FROM instead of 250
    drop_after_rcpt: dict[str, int] = field(default_factory=dict)  # address → times
    end_reply: dict[str, str] = field(default_factory=dict)  # address → reply to the body
    chunks: list[bytes] = field(default_factory=list)  # what arrived, read by read
    in_data: int = 0
    max_in_data: int = 0
    active: int = 0
    max_active: int = 0
    connections: int = 0
    helos: list[str] = field(default_factory=list)
    # (monotonic time, connection) of every MAIL FROM: when each message started
    mail_at: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.helos.append(hostname)
        if self.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        self.mail_at.append((time.monotonic(), id(session)))
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        key = address.lower()
        if self.drop_after_rcpt.get(key):
            self.drop_after_rcpt[key] -= 1
            server.transport.abort()
            return "421 dropped"  # never reaches the client
        queued = self.rcpt_codes.get(key)
        if queued:
            return queued.pop(0)
        if key in self.reject:
            return self.reject[key]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.in_data += 1
        self.max_in_data = max(self.max_in_data, self.in_data)
        try:
            return await self._data(server, session, envelope)
        finally:
            self.in_data -= 1

    async def _data(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.data_gate:
            # Wait until that many transactions are in DATA together: proof of parallel
            # connections that does not depend on timing (bounded only as a safety net).
            for _ in range(1000):
                if self.in_data >= self.data_gate or self.max_in_data >= self.data_gate:
                    break
                await asyncio.sleep(0.01)
        if self.hold_after is not None and len(self.messages) >= self.hold_after:
            self.gate.clear()
        held = self.gate_only is None or any(r.lower() in self.gate_only
                                              for r in envelope.rcpt_tos)
        while held and not self.gate.is_set():
            await asyncio.sleep(0.005)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        for rcpt in envelope.rcpt_tos:
            left = self.drop_in_data.get(rcpt.lower(), 0)
            if left:
                self.drop_in_data[rcpt.lower()] = left - 1
                server.transport.abort()
                return "421 dropped"  # never reaches the client
        for rcpt in envelope.rcpt_tos:
            if rcpt.lower() in self.end_reply:
                return self.end_reply[rcpt.lower()]
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content,
                                          time.monotonic(), id(session),
                                          getattr(session, "host_name", None)))
        return "250 2.0.0 Ok: queued"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]


class CountingSMTP(SMTP):
    """Counts connections open at once, to prove parallelism and its bound."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler: Recorder = self.event_handler
        with handler.lock:
            handler.connections += 1
            handler.active += 1
            handler.max_active = max(handler.max_active, handler.active)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        handler: Recorder = self.event_handler
        handler.chunks.append(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        handler: Recorder = self.event_handler
        with handler.lock:
            handler.active -= 1
        super().connection_lost(exc)


class RecordingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


def authenticator(user: str, password: str):  # type: ignore[no-untyped-def]
    def check(server: Any, session: Any, envelope: Any, mechanism: str,
              auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() \
            and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)
    return check


@dataclass
class OAuthRecorder(Recorder):
    """A Recorder that takes XOAUTH2 and OAUTHBEARER logins with the tokens in
    ``tokens`` (token → user), as Gmail and Microsoft 365 do: a refused token gets the
    error challenge (base64 JSON), then 535 once the client has answered it."""

    tokens: dict[str, str] = field(default_factory=dict)
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # (mechanism, user, token)
    answers: list[bytes] = field(default_factory=list)  # the client's answers to a challenge
    revoke_after: int | None = None  # every token stops working once this many were accepted

    async def _oauth(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        import base64
        import json

        blob = args[1] if len(args) > 1 else ""
        text = base64.b64decode(blob).decode() if blob else ""
        fields = dict(p.split("=", 1) for p in text.split("\x01") if "=" in p)
        user = fields.get("user") or fields.get("n,a", "").rstrip(",")
        if mechanism == "OAUTHBEARER":
            user = text.split(",", 2)[1].removeprefix("a=") if text.count(",") >= 2 else ""
        token = fields.get("auth", "").removeprefix("Bearer ")
        self.logins.append((mechanism, user, token))
        if self.revoke_after is not None and len(self.messages) >= self.revoke_after:
            self.tokens.clear()
        if self.tokens.get(token) == user:
            return AuthResult(success=True, auth_data=user)
        status = {"status": "invalid_token", "scope": "https://mail.google.com/",
                  "schemes": "Bearer"} if mechanism == "XOAUTH2" else \
            {"status": "invalid_token", "scope": "", "openid-configuration": ""}
        answer = await server.challenge_auth(json.dumps(status))
        self.answers.append(answer if isinstance(answer, bytes) else b"*")
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Username and Password not accepted")

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth(server, args, "OAUTHBEARER")


def start_server(handler: Recorder | None = None, **kwargs: Any
                 ) -> tuple[RecordingController, Recorder]:
    handler = handler or Recorder()
    port = free_port()
    controller = RecordingController(handler, hostname="127.0.0.1", port=port,
                                     server_hostname="mx.example.org", **kwargs)
    controller.start()
    # Controller.start() opens one connection of its own to wake the server: not ours.
    deadline = time.monotonic() + 2
    while handler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    with handler.lock:
        handler.connections = handler.max_active = 0
    return controller, handler
