"""Deliver many messages over N reused SMTP connections, on one event loop.

N worker coroutines each own one ``smtp.Connection`` (renewed after ``per_connection``
messages, a drop or a 421) and take the next message from an iterator that builds it as it
is taken (no queue and no producer task between building and sending: two task switches
less per message); retries whose wait is over come first.
One rate limiter spaces the starts of all of them. Temporary failures (4xx, drops,
timeouts) are retried with exponential backoff and jitter; permanent ones (5xx) are not.

Outcomes go to a ``Recorder`` (the journal) in the order that keeps the crash guarantee:
``sending`` is durable before the transaction starts, its result is queued as soon as the
reply comes and committed with the worker's next mark. Replies that speak of the run, not
of the guest (5xx to ``MAIL FROM``: the relay will not take mail from this sender), stop
the run with a ConfigError and put the guest back as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from .connections.config import SmtpConfig
from .connections.sasl import hint, send_as_denied
from .connections.smtp import Connection, Lost, Refused, connect
from .errors import ConfigError, MailerError, SignInLost, TemporaryError
from .models import Outcome, Outgoing, Stats
from .pacing import asks_to_slow_down, quota_used_up
from .ratelimit import RateLimiter

OutcomeHook = Callable[[Outgoing, Outcome, int | None, str], None]

# Group commit: while this process computes or commits most of the time (the CPU and the
# journal's fsyncs, not the relay, set the pace), a worker whose next guest's mark is queued
# waits for the other workers' replies, at most COMMIT_WAIT, so that one commit (one fsync)
# serves several. Otherwise (waiting for a relay over the network) it commits at once:
# there a commit costs little beside the replies, and a wait would only slow the run.
COMMIT_WAIT = 0.002
BUSY = 0.5  # the share of wall time spent computing that counts as CPU-bound
BUSY_WINDOW = 0.1  # seconds over which that share is measured


class Recorder(Protocol):
    """Where outcomes go (the journal); called from the event loop only. Every call
    queues a change; ``flush()`` commits all of them at once (a MailerError when it
    cannot)."""

    def sending(self, message: Outgoing) -> None: ...

    def result(self, message: Outgoing, outcome: Outcome, code: int | None,
               reply: str, accepted: int = 1) -> None: ...

    def revert(self, message: Outgoing) -> None: ...

    def flush(self) -> None: ...


class NullRecorder:
    """For a test send: the journal is left alone."""

    def sending(self, message: Outgoing) -> None:
        pass

    def result(self, message: Outgoing, outcome: Outcome, code: int | None,
               reply: str, accepted: int = 1) -> None:
        pass

    def revert(self, message: Outgoing) -> None:
        pass

    def flush(self) -> None:
        pass


class SenderPool:
    """Send messages over SMTP; ``run()`` returns the Stats once each has an outcome."""

    def __init__(self, config: SmtpConfig, recorder: Recorder, *, concurrency: int = 4,
                 rate: float | None = None, retries: int = 3, retry_delay: float = 2.0,
                 max_messages: int | None = None, on_outcome: OutcomeHook | None = None,
                 budget: int | None = None, cost: int = 1,
                 say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.recorder = recorder
        self.concurrency = concurrency
        self.limiter = RateLimiter(rate)
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_messages = max_messages
        self.on_outcome = on_outcome
        # the daily quota: envelope recipients this run may still use (None: no quota),
        # and what one message uses (2 with the archive copy)
        self.budget = budget
        self.cost = cost
        self.say = say  # a line for a person (the reporter's)
        self._slowed = False
        self.deadline: float | None = None  # the send window's end (monotonic clock)
        self.stats = Stats()
        self.produced = 0
        self.stopping = False
        self._stopped = asyncio.Event()
        self._fatal: BaseException | None = None
        self._messages: Iterator[Outgoing] = iter(())
        self._exhausted = False  # nothing more comes from the iterator
        self._ready: deque[Outgoing] = deque()  # retries whose wait is over
        self._idle: deque[asyncio.Future[None]] = deque()  # workers waiting for work
        self._pending = 0  # messages taken and without their outcome yet
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._transacting = 0  # workers waiting for the relay's replies
        self._busy = True  # CPU-bound over the last window (see BUSY); at first: a guess
        self._committing = 0.0  # wall time spent in commits (their fsyncs) so far
        self._window = (time.monotonic(), time.process_time())
        self._batch: asyncio.Future[None] | None = None  # the next group commit
        self._batch_timer: asyncio.TimerHandle | None = None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        if seconds > 0 and not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), seconds)

    def stop(self, why: str = "interrupted") -> None:
        """Graceful stop: start nothing new; messages in flight finish and are recorded."""
        if not self.stopping:
            self.stopping = True
            self._stopped.set()
            self.stats.stopped = why
            for task in self._retry_tasks:
                task.cancel()
            while self._ready:  # their retry will not come in this run
                message = self._ready.popleft()
                self._final(message, Outcome.DEFERRED, None, f"not retried: {why}")
            self._wake(everyone=True)

    def _fail_run(self, error: BaseException) -> None:
        if self._fatal is None:
            self._fatal = error
        self.stop(str(error))

    async def run(self, messages: Iterator[Outgoing]) -> Stats:
        first = await connect(self.config)  # fail fast: unreachable, TLS, AUTH
        self._messages = messages
        workers = [asyncio.create_task(self._work(first if i == 0 else None))
                   for i in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in list(self._retry_tasks):
                task.cancel()
            self.recorder.flush()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    # Taking work -------------------------------------------------------------------

    def _next(self) -> Outgoing | None:
        """A retry whose wait is over, else the next message of the iterator (built as it
        is taken: no queue between building and sending); None when there is none now."""
        if self._ready:
            return self._ready.popleft()
        if self._exhausted or self.stopping:
            return None
        if self.max_messages is not None and self.produced >= self.max_messages:
            self._exhausted = True
            return None
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._exhausted = self.stats.closed = True  # the send window closed
            return None
        try:
            message = next(self._messages)
        except StopIteration:
            self._exhausted = True
            return None
        except MailerError as exc:  # e.g. the list changed since it was checked
            self._exhausted = True
            self._fail_run(exc)
            return None
        if self.budget is not None:
            if self.budget < self.cost:  # this one would pass the daily quota: it stays
                self._exhausted = self.stats.quota = True  # queued for a later run
                return None
            self.budget -= self.cost
        self.produced += 1
        self._pending += 1
        return message

    async def _take(self) -> Outgoing | None:
        """The next message for a worker; while others' messages may still come back for
        a retry, an idle worker waits for them. None: nothing more for this worker."""
        while True:
            message = self._next()
            if message is not None or self.stopping or self._pending == 0:
                return message
            idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(idle)
            await idle

    def _wake(self, everyone: bool = False) -> None:
        """Wake an idle worker (a retry is ready), or all of them (the run is over)."""
        while self._idle:
            idle = self._idle.popleft()
            if not idle.done():
                idle.set_result(None)
                if not everyone:
                    return

    # Workers -----------------------------------------------------------------------

    async def _work(self, conn: Connection | None) -> None:
        failures = 0  # consecutive failures to connect, for this worker
        try:
            while True:
                message = await self._take()
                if message is None:
                    return
                await self.limiter.wait(self._sleep)
                if self.stopping:  # stopped while waiting for a slot: not started
                    self._release(message)
                    return
                if conn is not None and (conn.used >= self.config.per_connection
                                         or not conn.is_open):
                    await conn.close()
                    conn = None
                if conn is None:
                    try:
                        conn = await connect(self.config)
                    except SignInLost as exc:  # OAuth refused mid-run: stop, 75
                        self._release(message)
                        self._fail_run(exc)
                        return
                    except TemporaryError as exc:
                        failures += 1
                        self._temporary(message, None, str(exc))
                        if failures > self.retries:
                            self.stop(f"SMTP server unreachable: {exc}")
                            return
                        await self._sleep(self._backoff(failures))
                        continue
                    except ConfigError as exc:
                        self._release(message)
                        self._fail_run(exc)
                        return
                    failures = 0
                try:
                    await self._send(conn, message)
                except MailerError as exc:  # the journal cannot be written: stop at once
                    self._release(message)
                    self._fail_run(exc)
                    return
        finally:
            if conn is not None:
                await conn.close()

    async def _durable(self, message: Outgoing) -> bool:
        """Queue the guest's ``sending`` mark and return once it is committed (False when
        the run stopped meanwhile: the mark is taken back and the message not started).

        Marks and results of all workers share one commit (group commit): while the
        process is CPU-bound and others wait for replies, the commit waits for them
        (COMMIT_WAIT at most), so one commit serves several messages. The crash guarantee
        holds: no worker starts a transaction before its previous result is committed."""
        self.recorder.sending(message)
        if self._transacting == 0 or not self._cpu_bound():
            self._commit()
        else:
            batch = self._batch
            if batch is None:
                loop = asyncio.get_running_loop()
                batch = self._batch = loop.create_future()
                self._batch_timer = loop.call_later(COMMIT_WAIT, self._commit)
            await batch
        if self.stopping:  # stopped while waiting: not started
            self.recorder.revert(message)
            self._release(message)
            return False
        return True

    def _cpu_bound(self) -> bool:
        """Whether this process computed, or waited for its journal's commits (an fsync
        each), at least BUSY of the last window's wall time: then a commit is worth
        sharing."""
        start, busy_start = self._window
        now = time.monotonic()
        if now - start >= BUSY_WINDOW:
            busy = time.process_time() + self._committing
            self._busy = busy - busy_start >= BUSY * (now - start)
            self._window = (now, busy)
        return self._busy

    def _commit(self) -> None:
        """Commit everything queued; wake the workers waiting for it."""
        batch, self._batch = self._batch, None
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        began = time.monotonic()
        try:
            self.recorder.flush()
        except MailerError as exc:
            if batch is None:
                raise
            batch.set_exception(exc)
            return
        finally:
            self._committing += time.monotonic() - began
        if batch is not None:
            batch.set_result(None)

    def _commit_waiting(self) -> None:
        if self._batch is not None and self._transacting == 0:
            self._commit()

    async def _send(self, conn: Connection, message: Outgoing) -> None:
        if not await self._durable(message):  # durable before the transaction starts
            return
        self._transacting += 1
        try:
            await self._transact(conn, message)
        finally:
            self._transacting -= 1
            if self._batch is not None and self._transacting == 0:
                # the last reply the batch waited for: commit once this worker has
                # queued its next mark (or at once, when it has none)
                asyncio.get_running_loop().call_soon(self._commit_waiting)

    async def _transact(self, conn: Connection, message: Outgoing) -> None:
        redact = self.config.redact
        try:
            reply, archive = await conn.send(message)
        except Refused as exc:
            code, text = exc.reply.code, redact(" ".join(exc.reply.text.split()))
            if exc.permanent and (exc.stage == "MAIL" or send_as_denied(code, text)):
                # The relay refuses the sender (at MAIL FROM, or as Microsoft 365 does at
                # the end of the message: 554 5.2.252 SendAsDenied): true of every guest,
                # so no guest's fault.
                what = hint(text)
                self._not_the_guests(message, ConfigError(
                    f"{self.config.where} refused the sender <{message.envelope_from}>: "
                    f"{code} {text}{': ' + what if what else ''} (the run stopped; no "
                    f"recipient changed state)"))
                return
            if exc.permanent and quota_used_up(code, text):
                # The mailbox's own daily quota (Microsoft 365's SubmissionQuotaExceeded,
                # Google's 5.4.5): no guest's fault, and nothing more goes today.
                self._not_the_guests(message, TemporaryError(
                    f"the mailbox's daily sending quota is used up: {code} {text} (the run "
                    f"stopped; no recipient changed state; a later run goes on)"))
                return
            if exc.permanent:
                self._final(message, Outcome.FAILED, code, text)
            else:
                if asks_to_slow_down(code, text):
                    self._slow_down(code, text)
                self._temporary(message, code, text)
            if code == 421:
                conn.abort()
        except Lost as exc:
            if exc.stage == "END":
                # The body went out and no reply came (a timeout, or the connection
                # dropped after the final dot): it may have been delivered. Leave the
                # guest 'sending'; the next run resends with the same Message-ID.
                why = f"no reply to the end of the message within " \
                      f"{self.config.data_timeout:g} s" if exc.timeout else \
                      f"the connection was lost before the reply to the end of the " \
                      f"message ({redact(str(exc))})"
                self._final(message, Outcome.UNCONFIRMED, None,
                            f"{why}: the next run sends it again (same Message-ID)")
            else:
                text = "timed out waiting for the server" if exc.timeout \
                    else f"connection lost: {redact(str(exc))}"
                self._temporary(message, None, text)
            conn.abort()
        else:
            if archive is not None:
                self.stats.archive_refused.append(
                    (message.email, archive.code, redact(" ".join(archive.text.split()))))
            accepted = 1 + (message.archive is not None and archive is None)
            self._final(message, Outcome.SENT, reply.code, " ".join(reply.text.split()),
                        accepted)

    def _not_the_guests(self, message: Outgoing, error: MailerError) -> None:
        """A refusal that speaks of the run, not of the guest: put the guest back as it
        was and stop the run with ``error``."""
        self.recorder.revert(message)
        self._release(message)
        self._fail_run(error)

    def _slow_down(self, code: int, text: str) -> None:
        """The relay asked the run to slow down: the whole run does (said once)."""
        rate = self.limiter.slow_down()
        if not self._slowed and self.say is not None:
            self.say(f"the relay asked to slow down ({code} {text[:60]}"
                     f"{'…' if len(text) > 60 else ''}): now {rate * 60:.3g}/min")
        self._slowed = True

    # Outcomes ----------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = self.retry_delay * 2.0 ** (attempt - 1)
        jitter: float = random.uniform(0, base * 0.25)
        return base + jitter

    def _temporary(self, message: Outgoing, code: int | None, reply: str) -> None:
        message.attempt += 1
        if message.attempt > self.retries or self.stopping:
            self._final(message, Outcome.DEFERRED, code, reply)
            return
        self.recorder.result(message, Outcome.DEFERRED, code, reply)
        task = asyncio.create_task(
            self._retry_later(message, self._backoff(message.attempt), code, reply))
        self._retry_tasks.add(task)
        task.add_done_callback(self._retry_tasks.discard)

    async def _retry_later(self, message: Outgoing, delay: float, code: int | None,
                           reply: str) -> None:
        try:
            await asyncio.sleep(delay)
            self._ready.append(message)
            self._wake()
        except asyncio.CancelledError:
            self._final(message, Outcome.DEFERRED, code, reply)
            raise

    def _final(self, message: Outgoing, outcome: Outcome, code: int | None,
               reply: str, accepted: int = 1) -> None:
        if outcome is not Outcome.UNCONFIRMED:  # unconfirmed stays 'sending' in the journal
            self.recorder.result(message, outcome, code, reply, accepted)
        self.stats.count(outcome, (message.email, code, reply))
        if self.on_outcome is not None:
            self.on_outcome(message, outcome, code, reply)
        self._release(message)

    def _release(self, message: Outgoing) -> None:
        self._pending -= 1
        if self._pending == 0 and (self._exhausted or self.stopping):
            self._wake(everyone=True)
