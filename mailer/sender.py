"""Asynchronous SMTP delivery: N reused connections, a shared rate limit, retries.

One event loop; a producer feeds a bounded queue from an iterator of jobs; N worker
coroutines each own one aiosmtplib connection, reused for many messages (aiosmtplib
sends one command at a time per connection, so parallelism is N connections).
Temporary failures (4xx, drops, timeouts) are retried with exponential backoff and
jitter; permanent ones (5xx) are not. Each outcome goes to a ``Recorder`` (the journal)
in the order that keeps the crash guarantee: ``sending`` before DATA, ``sent`` after 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import aiosmtplib
from pydantic import SecretStr

from .campaign import Job
from .errors import ConfigError, MailerError, TemporaryError
from .ratelimit import RateLimiter
from .settings import Settings


class Outcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"  # permanent (5xx): not retried
    DEFERRED = "deferred"  # temporary (4xx, drop, timeout) after the retries


class Recorder(Protocol):
    """Where outcomes go (the journal); called from the event loop only."""

    async def sending(self, job: Job) -> None: ...

    def result(self, job: Job, outcome: Outcome, code: int | None, reply: str) -> None: ...

    def flush(self) -> None: ...


class NullRecorder:
    """For a test send: the journal is left alone."""

    async def sending(self, job: Job) -> None:
        pass

    def result(self, job: Job, outcome: Outcome, code: int | None, reply: str) -> None:
        pass

    def flush(self) -> None:
        pass


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    rejected: list[tuple[str, int | None, str]] = field(default_factory=list)
    postponed: list[tuple[str, int | None, str]] = field(default_factory=list)  # deferred
    expired: list[tuple[str, str]] = field(default_factory=list)  # deferred too long: failed
    stopped: str | None = None  # why the run stopped early, if it did

    def merge(self, other: Stats) -> None:
        """Add the Stats of another process's share of the same run."""
        self.sent += other.sent
        self.failed += other.failed
        self.deferred += other.deferred
        self.rejected += other.rejected
        self.postponed += other.postponed
        self.expired += other.expired
        self.stopped = self.stopped or other.stopped


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the relay; built from Settings."""

    host: str
    port: int
    security: str
    username: str | None
    password: SecretStr | None
    timeout: float
    helo: str
    per_connection: int

    @classmethod
    def from_settings(cls, settings: Settings, sender_domain: str) -> SmtpConfig:
        if settings.smtp_security == "none" and settings.smtp_username \
                and not is_loopback(settings.smtp_host):
            raise ConfigError(f"MAILER_SMTP_SECURITY is none and MAILER_SMTP_USERNAME is set: "
                              f"refusing to send the password in plain text to "
                              f"{settings.smtp_host} (use starttls or tls; plain AUTH only "
                              f"to a relay on this machine)")
        return cls(settings.smtp_host, settings.smtp_port, settings.smtp_security,
                   settings.smtp_username, settings.smtp_password, settings.smtp_timeout,
                   helo_name(settings.smtp_helo, sender_domain),
                   settings.messages_per_connection)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def redact(self, text: str) -> str:
        """Remove the password (and its base64 forms) from a text, just in case."""
        if self.password is None:
            return text
        secret = self.password.get_secret_value()
        if not secret:
            return text
        import base64

        forms = {secret, base64.b64encode(secret.encode()).decode()}
        if self.username:
            forms.add(base64.b64encode(f"\0{self.username}\0{secret}".encode()).decode())
        for form in forms:
            text = text.replace(form, "***")
        return text


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.rstrip(".").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def helo_name(configured: str | None, sender_domain: str) -> str:
    """MAILER_SMTP_HELO, else this machine's FQDN, else (no dot in it) the sender's domain:
    strict relays refuse a bare host name in EHLO."""
    if configured:
        return configured
    fqdn = socket.getfqdn()
    if "." in fqdn and not fqdn.startswith("localhost") and not fqdn.endswith(".localdomain"):
        return fqdn
    return sender_domain


def _is_tls_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "certificate" in str(exc).lower() or "ssl" in str(exc).lower()


async def connect(config: SmtpConfig) -> aiosmtplib.SMTP:
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
        if config.username:
            password = config.password.get_secret_value() if config.password else ""
            await smtp.login(config.username, password)
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()
    except ConfigError:
        smtp.close()
        raise
    except aiosmtplib.SMTPAuthenticationError as exc:
        smtp.close()
        raise ConfigError(f"authentication failed at {config.where} for user "
                          f"{config.username!r}: {exc.code} "
                          f"{config.redact(exc.message)}") from None
    except aiosmtplib.SMTPResponseException as exc:
        smtp.close()
        if exc.code >= 500:
            raise ConfigError(f"{config.where} refused the session: {exc.code} "
                              f"{config.redact(exc.message)}") from None
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
    return smtp


async def transaction(smtp: aiosmtplib.SMTP, job: Job) -> str:
    """MAIL, RCPT, DATA for one message; the server's reply to DATA.

    What aiosmtplib's sendmail() does, less its per-message work that is already done
    here: the addresses were checked (sendmail parses each one twice more with the email
    package) and the message already has CRLF line ends (so SIZE is its length). After a
    refusal the envelope is reset, as sendmail does."""
    mail = [b"MAIL", b"FROM:<" + job.envelope_from.encode("ascii") + b">"]
    if smtp.supports_extension("size"):
        mail.append(b"SIZE=%d" % len(job.data))
    try:
        response = await smtp.execute_command(*mail)
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message,
                                               job.envelope_from)
        response = await smtp.execute_command(
            b"RCPT", b"TO:<" + job.envelope_to.encode("ascii") + b">")
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message,
                                                  job.envelope_to)
        response = await smtp.data(job.data)
    except aiosmtplib.SMTPResponseException:
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.rset()
        raise
    return response.message


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        text = f"{cause.reason}: {getattr(cause, 'verify_message', '') or text}"
    return " ".join(text.split())


def classify(exc: BaseException) -> tuple[int | None, str, bool]:
    """(code, reply, permanent) for an exception raised while sending one message."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return first.code, first.message, 500 <= first.code < 600
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code, exc.message, 500 <= exc.code < 600
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return None, "timed out waiting for the server", False
    return None, f"connection lost: {_reason(exc)}", False


class Delivery:
    """Send jobs over SMTP; ``run()`` returns the Stats once every job has an outcome."""

    def __init__(self, config: SmtpConfig, recorder: Recorder, *, concurrency: int = 4,
                 rate: float | None = None, retries: int = 3, retry_delay: float = 2.0,
                 max_messages: int | None = None,
                 on_outcome: Callable[[Job, Outcome, int | None, str], None] | None = None
                 ) -> None:
        self.config = config
        self.recorder = recorder
        self.concurrency = concurrency
        self.limiter = RateLimiter(rate)
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_messages = max_messages
        self.on_outcome = on_outcome
        self.stats = Stats()
        self.produced = 0
        self._stopping = False
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=max(16, 4 * concurrency))
        self._capacity = asyncio.Semaphore(8 * concurrency + 16)  # jobs alive at once
        self._pending = 0
        self._producer_done = False
        self._retry_tasks: set[asyncio.Task[None]] = set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        if seconds > 0 and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), seconds)

    def stop(self, why: str = "interrupted") -> None:
        """Graceful stop: start nothing new; messages in flight finish and are recorded."""
        if not self._stopping:
            self._stopping = True
            self._stopped.set()
            self.stats.stopped = why
            for task in self._retry_tasks:
                task.cancel()
            self._wake_all()

    async def run(self, jobs: Iterator[Job]) -> Stats:
        first = await connect(self.config)  # fail fast: unreachable, TLS, AUTH
        producer = asyncio.create_task(self._produce(jobs))
        workers = [asyncio.create_task(self._work(first if i == 0 else None))
                   for i in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            for task in list(self._retry_tasks):
                task.cancel()
            self.recorder.flush()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    # Producer ----------------------------------------------------------------------

    async def _produce(self, jobs: Iterator[Job]) -> None:
        try:
            await self._feed(jobs)
        except MailerError as exc:  # e.g. the list changed since it was checked
            self._fatal = exc
            self.stop(str(exc))
        finally:
            self._producer_done = True
            self._maybe_finish()

    async def _feed(self, jobs: Iterator[Job]) -> None:
        for job in jobs:
            if self._stopping:
                return
            if self.max_messages is not None and self.produced >= self.max_messages:
                return
            await self._capacity.acquire()
            if self._stopping:
                self._capacity.release()
                return
            self.produced += 1
            self._pending += 1
            await self._queue.put(job)

    def _maybe_finish(self) -> None:
        if (self._producer_done and self._pending == 0) or self._stopping:
            self._wake_all()

    def _wake_all(self) -> None:
        for _ in range(self.concurrency):
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    # Workers -----------------------------------------------------------------------

    async def _work(self, smtp: aiosmtplib.SMTP | None) -> None:
        used = 0
        failures = 0  # consecutive failures to connect, for this worker
        try:
            while True:
                job = await self._queue.get()
                if job is None or self._stopping:
                    if job is not None:
                        self._release(job)
                    if self._stopping or (self._producer_done and self._pending == 0):
                        return
                    continue
                await self.limiter.wait(self._sleep)
                if self._stopping:  # stopped while waiting for a slot: not started
                    self._release(job)
                    return
                if smtp is not None and used >= self.config.per_connection:
                    await self._close(smtp)
                    smtp, used = None, 0
                if smtp is None:
                    try:
                        smtp = await connect(self.config)
                    except TemporaryError as exc:
                        failures += 1
                        self._temporary(job, None, str(exc))
                        if failures > self.retries:
                            self.stop(f"SMTP server unreachable: {exc}")
                            return
                        await self._sleep(self._backoff(failures))
                        continue
                    except ConfigError as exc:
                        self._fatal = exc
                        self._release(job)
                        self.stop(str(exc))
                        return
                    failures = 0
                    used = 0
                try:
                    smtp, used = await self._send(smtp, used, job)
                except MailerError as exc:  # the journal cannot be written: stop at once
                    self._fatal = exc
                    self._release(job)
                    self.stop(str(exc))
                    return
        finally:
            if smtp is not None:
                await self._close(smtp)

    async def _send(self, smtp: aiosmtplib.SMTP, used: int, job: Job
                    ) -> tuple[aiosmtplib.SMTP | None, int]:
        await self.recorder.sending(job)
        try:
            reply = await transaction(smtp, job)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            code, text, permanent = classify(exc)
            text = self.config.redact(" ".join(text.split()))
            if permanent:
                self._final(job, Outcome.FAILED, code, text)
            else:
                self._temporary(job, code, text)
            if code == 421 or not smtp.is_connected or code is None:
                await self._close(smtp)
                return None, 0
            return smtp, used + 1
        self._final(job, Outcome.SENT, 250, " ".join(reply.split()))
        return smtp, used + 1

    async def _close(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            try:
                await asyncio.wait_for(smtp.quit(), timeout=min(5.0, self.config.timeout))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
        else:
            smtp.close()

    # Outcomes ----------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = self.retry_delay * 2.0 ** (attempt - 1)
        jitter: float = random.uniform(0, base * 0.25)
        return base + jitter

    def _temporary(self, job: Job, code: int | None, reply: str) -> None:
        job.attempt += 1
        if job.attempt > self.retries or self._stopping:
            self._final(job, Outcome.DEFERRED, code, reply)
            return
        self.recorder.result(job, Outcome.DEFERRED, code, reply)
        task = asyncio.create_task(self._retry_later(job, self._backoff(job.attempt), code,
                                                     reply))
        self._retry_tasks.add(task)
        task.add_done_callback(self._retry_tasks.discard)

    async def _retry_later(self, job: Job, delay: float, code: int | None, reply: str) -> None:
        try:
            await asyncio.sleep(delay)
            await self._queue.put(job)
        except asyncio.CancelledError:
            self._final(job, Outcome.DEFERRED, code, reply)
            raise

    def _final(self, job: Job, outcome: Outcome, code: int | None, reply: str) -> None:
        self.recorder.result(job, outcome, code, reply)
        if outcome is Outcome.SENT:
            self.stats.sent += 1
        elif outcome is Outcome.FAILED:
            self.stats.failed += 1
            self.stats.rejected.append((job.email, code, reply))
        else:
            self.stats.deferred += 1
            self.stats.postponed.append((job.email, code, reply))
        if self.on_outcome is not None:
            self.on_outcome(job, outcome, code, reply)
        self._release(job)

    def _release(self, job: Job) -> None:
        self._pending -= 1
        self._capacity.release()
        self._maybe_finish()
