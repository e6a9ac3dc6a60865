"""One SMTP connection: the session through aiosmtplib, then transactions of our own,
pipelined (RFC 2920) when the server offers PIPELINING.

aiosmtplib (tested with 5.1.2 and 5.1.3; pinned ``>=5.1.2,<6`` in pyproject.toml) opens the
session: it connects, says EHLO, starts TLS (STARTTLS or implicit) with certificate
checks, and logs in, mapping every failure to its errors. It cannot pipeline: its protocol
reads one reply per awaited command and drops replies that arrive while none is awaited.
So once the session is up, its transport is handed to ``ReplyQueue`` (``set_protocol``),
a small ``asyncio.Protocol`` that parses every reply as it arrives and gives them out in
order, one future per command written. Then a message is:

- with PIPELINING: ``MAIL FROM``, ``RCPT TO`` and ``DATA`` in one write, their three
  replies read in order; the body (dot-stuffed when the message was built) in one more
  write after the 354;
- without: one command at a time, each written only after the reply to the one before
  (a server that did not offer PIPELINING never sees two commands in one write).

When MAIL or RCPT is refused, the DATA reply is still read (the server refuses DATA then),
no body is sent, and the envelope is reset (RSET). The reply to the end of the body may
take long on a relay that delivers before it answers: it is awaited up to
``data_timeout`` (RFC 5321 §4.5.3.2.6: 10 minutes), every other reply ``timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections import deque
from typing import NamedTuple, cast

import aiosmtplib

from ..errors import ConfigError, SignInLost, TemporaryError
from ..models import Outgoing
from . import sasl
from .config import SmtpConfig

QUIT_TIMEOUT = 5.0


class Reply(NamedTuple):
    code: int
    text: str

    def __str__(self) -> str:
        return " ".join(f"{self.code} {self.text}".split())


class Refused(Exception):
    """A reply other than the one that lets the transaction go on."""

    def __init__(self, stage: str, reply: Reply) -> None:
        super().__init__(f"{stage}: {reply}")
        self.stage = stage  # MAIL, RCPT, DATA or END (the reply to the end of the body)
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return 500 <= self.reply.code < 600


class Lost(Exception):
    """The connection dropped, or a reply did not come in time."""

    def __init__(self, why: str, stage: str, *, timeout: bool = False) -> None:
        super().__init__(why)
        self.stage = stage
        self.timeout = timeout


def helo_name(configured: str | None, sender_domain: str) -> str:
    """MAILER_SMTP_HELO, else this machine's FQDN, else (no dot in it) the sender's domain:
    strict relays refuse a bare host name in EHLO."""
    if configured:
        return configured
    fqdn = socket.getfqdn()
    if "." in fqdn and not fqdn.startswith("localhost") and not fqdn.endswith(".localdomain"):
        return fqdn
    return sender_domain


class ReplyQueue(asyncio.Protocol):
    """Every reply the server sends, parsed as it arrives and handed to the futures of the
    commands written, in order (RFC 2920: replies come in the order of the commands)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._lines: list[str] = []
        self._lost: str | None = None
        self._writable: asyncio.Future[None] | None = None

    def expect(self) -> asyncio.Future[Reply]:
        """A future for the reply to the next command written."""
        future: asyncio.Future[Reply] = self._loop.create_future()
        if self._lost is not None:
            future.set_exception(Lost(self._lost, ""))
            future.exception()  # retrieved: nobody need await it
        else:
            self._waiting.append(future)
        return future

    def write(self, data: bytes) -> None:
        if self._lost is not None or self.transport.is_closing():
            raise Lost(self._lost or "connection closed", "")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        if self._writable is not None and self._lost is None:
            await self._writable

    # asyncio.Protocol ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > 65536:
                self._fail("reply line too long")
            return
        text = buffer[:end].decode("utf-8", "surrogateescape")
        del buffer[:end + 1]
        lines = self._lines
        for line in text.split("\n"):
            line = line.rstrip("\r")
            code = line[:3]
            if len(code) < 3 or not code.isdigit():
                self._fail(f"malformed reply from the server: {line[:80]!r}")
                return
            if line[3:4] == "-":  # a line of a reply that goes on
                lines.append(line[4:].strip())
                continue
            if lines:
                lines.append(line[4:].strip())
                reply = Reply(int(code), "\n".join(lines))
                lines.clear()
            else:
                reply = Reply(int(code), line[4:].strip())
            if self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        if len(buffer) > 65536:
            self._fail("reply line too long")

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def eof_received(self) -> bool:
        self._fail("the server closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}" if exc else "connection lost")

    def _fail(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        for future in self._waiting:
            if not future.done():
                future.set_exception(Lost(why, ""))
                future.exception()
        self._waiting.clear()
        self.resume_writing()
        if not self.transport.is_closing():
            self.transport.abort()


class Connection:
    """One open, secured, authenticated connection, used for many transactions."""

    def __init__(self, smtp: aiosmtplib.SMTP, config: SmtpConfig) -> None:
        self.config = config
        self.pipelining = smtp.supports_extension("pipelining")
        self.size = smtp.supports_extension("size")
        transport = cast(asyncio.Transport, smtp.transport)
        self.replies = ReplyQueue(transport)
        transport.set_protocol(self.replies)
        self.used = 0  # transactions on this connection

    @property
    def is_open(self) -> bool:
        return not self.replies.transport.is_closing()

    async def _reply(self, future: asyncio.Future[Reply], stage: str,
                     timeout: float | None = None) -> Reply:
        """The reply a future stands for, within ``timeout`` (a timer on the future: the
        cost of asyncio.wait_for, a task and two futures per reply, is not needed)."""
        seconds = timeout or self.config.timeout
        if not future.done():
            timer = asyncio.get_running_loop().call_later(seconds, self._expire, future,
                                                          seconds)
            try:
                await future
            except Lost as exc:
                raise Lost(str(exc), stage, timeout=exc.timeout) from None
            finally:
                timer.cancel()
        try:
            return future.result()
        except Lost as exc:
            raise Lost(str(exc), stage, timeout=exc.timeout) from None

    def _expire(self, future: asyncio.Future[Reply], seconds: float) -> None:
        if not future.done():
            future.set_exception(Lost(f"no reply within {seconds:g} s", "", timeout=True))
            self.abort()

    async def _command(self, line: bytes, stage: str) -> Reply:
        future = self.replies.expect()
        self.replies.write(line)
        return await self._reply(future, stage)

    async def send(self, message: Outgoing) -> tuple[Reply, Reply | None]:
        """One transaction: the reply to the end of the body (250), and the refusal of the
        archive recipient if it was refused (the guest's message goes out all the same).
        Refused for any other reply, Lost when the connection drops or a reply does not
        come in time."""
        self.used += 1
        mail = b"MAIL FROM:<%s>" % message.envelope_from.encode("ascii")
        if self.size:
            mail += b" SIZE=%d" % len(message.data)
        commands = [(mail + b"\r\n", "MAIL"),
                    (b"RCPT TO:<%s>\r\n" % message.envelope_to.encode("ascii"), "RCPT")]
        if message.archive:
            commands.append((b"RCPT TO:<%s>\r\n" % message.archive.encode("ascii"), "ARCHIVE"))
        commands.append((b"DATA\r\n", "DATA"))
        replies = self.replies
        got: list[Reply] = []
        if self.pipelining:
            futures = [replies.expect() for _ in commands]
            replies.write(b"".join(line for line, _ in commands))
            for future, (_, stage) in zip(futures, commands, strict=True):
                got.append(await self._reply(future, stage))
        else:
            for line, stage in commands:
                reply = await self._command(line, stage)
                got.append(reply)
                if stage in ("MAIL", "RCPT") and reply.code not in (250, 251):
                    break
        archive: Reply | None = None
        for (_, stage), reply in zip(commands, got, strict=False):
            ok = (354,) if stage == "DATA" else (250, 251)
            if reply.code in ok:
                continue
            if stage == "ARCHIVE":
                archive = reply
                continue
            if got[-1].code == 354:  # DATA accepted after all: end it with no message
                await self._command(b".\r\n", "END")
            await self._reset()
            raise Refused(stage, reply)
        end = replies.expect()  # before the write: every reply must find its future
        replies.write(message.wire)
        await replies.drain()
        reply = await self._reply(end, "END", self.config.data_timeout)
        if reply.code != 250:
            raise Refused("END", reply)
        return reply, archive

    async def _reset(self) -> None:
        """RSET after a refusal; a connection that cannot even reset is closed."""
        try:
            reply = await self._command(b"RSET\r\n", "RSET")
        except Lost:
            return
        if reply.code != 250:
            self.abort()

    async def close(self) -> None:
        """QUIT politely (briefly), then close."""
        if self.is_open:
            with contextlib.suppress(Lost, OSError, TimeoutError):
                future = self.replies.expect()
                self.replies.write(b"QUIT\r\n")
                await asyncio.wait_for(asyncio.shield(future), QUIT_TIMEOUT)
        self.replies.transport.close()

    def abort(self) -> None:
        if not self.replies.transport.is_closing():
            self.replies.transport.abort()


def _is_tls_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "certificate" in str(exc).lower() or "ssl" in str(exc).lower()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        text = f"{cause.reason}: {getattr(cause, 'verify_message', '') or text}"
    return " ".join(text.split())


async def _oauth(smtp: aiosmtplib.SMTP, config: SmtpConfig, fresh: bool) -> None:
    """AUTH XOAUTH2 (or OAUTHBEARER when the server offers only that) with a token from
    the login's source. A refused token: SMTPAuthenticationError with the reason from the
    server's error challenge, answered as the mechanism requires."""
    login = config.login
    assert login.oauth is not None and login.username
    offered = {m.upper() for m in smtp.server_auth_methods}
    mechanism = sasl.choose(offered)
    if mechanism is None:
        raise ConfigError(f"{config.where} offers no OAuth login (AUTH "
                          f"{' '.join(sorted(offered)) or 'nothing'}) and "
                          f"{login.oauth.setting} is set (nothing was sent)")
    token = await asyncio.to_thread(login.oauth.token, fresh)
    first = base64.b64encode(sasl.initial(mechanism, login.username, token, config.host,
                                          config.port))
    response = await smtp.execute_command(b"AUTH", mechanism.encode(), first)
    why = ""
    if response.code == 334:  # the error challenge
        why = sasl.reason(response.message)
        response = await smtp.execute_command(base64.b64encode(sasl.abort(mechanism)))
    if response.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(
            response.code, response.message + (f" ({why})" if why else ""))
    login.oauth.accepted = True


async def _log_in(smtp: aiosmtplib.SMTP, config: SmtpConfig) -> None:
    """A password login, or OAuth: a refused token is tried once more with a fresh one;
    refused again, it stops the run (78 at the start; 75 mid-run, when a token was
    accepted before: the sign-in lapsed, a later run may get past it)."""
    login = config.login
    if login.oauth is None:
        try:
            await smtp.login(login.username or "", login.secret)
        except UnicodeError:  # bytes that are not UTF-8 (from the environment)
            raise ConfigError(f"MAILER_SMTP_PASSWORD for user {login.username!r} "
                              f"is not UTF-8 text: set it again (it is not shown)") from None
        return
    earlier = login.oauth.accepted
    try:
        await _oauth(smtp, config, fresh=False)
    except aiosmtplib.SMTPAuthenticationError:
        try:
            await _oauth(smtp, config, fresh=True)
        except aiosmtplib.SMTPAuthenticationError as exc:
            if earlier:
                raise SignInLost(f"{config.where} refused a fresh OAuth token for "
                                 f"{login.username!r} mid-run: {exc.code} "
                                 f"{config.redact(exc.message)} (the run stopped; a later "
                                 f"run goes on)") from None
            raise


async def connect(config: SmtpConfig) -> Connection:
    """Open, secure and authenticate one connection. Raise ConfigError for what settings
    must fix (TLS, AUTH) and TemporaryError for what a later run may get past."""
    smtp = aiosmtplib.SMTP(hostname=config.host, port=config.port, local_hostname=config.helo,
                           timeout=config.timeout, use_tls=config.security == "tls",
                           start_tls=False, validate_certs=True)
    try:
        await smtp.connect()
        if config.security == "starttls":
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise ConfigError(
                    f"{config.where} does not offer STARTTLS and MAILER_SMTP_SECURITY is "
                    f"starttls: refusing to send in plain text (nothing was sent)")
            await smtp.starttls()
        if config.login.wanted:
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
            await _log_in(smtp, config)
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()
    except (ConfigError, TemporaryError):
        smtp.close()
        raise
    except aiosmtplib.SMTPAuthenticationError as exc:
        smtp.close()
        text = config.redact(" ".join(exc.message.split()))
        what = sasl.hint(text)
        raise ConfigError(f"authentication failed at {config.where} for user "
                          f"{config.login.username!r}: {exc.code} {text}"
                          + (f": {what}" if what else "")) from None
    except aiosmtplib.SMTPResponseException as exc:
        smtp.close()
        if exc.code >= 500:
            text = config.redact(exc.message)
            what = sasl.hint(text)
            raise ConfigError(f"{config.where} refused the session: {exc.code} {text}"
                              + (f": {what}" if what else "")) from None
        raise TemporaryError(f"{config.where} is not accepting mail now: {exc.code} "
                             f"{config.redact(exc.message)}") from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        smtp.close()
        if _is_tls_problem(exc):
            raise ConfigError(f"TLS with {config.where} failed: {_reason(exc)} "
                              f"(nothing was sent)") from None
        if isinstance(exc, aiosmtplib.SMTPException) and not isinstance(
                exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError
                | aiosmtplib.SMTPConnectError):
            raise ConfigError(f"{config.where}: {config.redact(_reason(exc))}") from None
        raise TemporaryError(f"cannot reach SMTP server {config.where}: "
                             f"{config.redact(_reason(exc))}") from None
    return Connection(smtp, config)
