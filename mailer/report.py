"""What the user sees during and after a send: a progress bar on a terminal, plain lines
elsewhere (cron, pipes: no ANSI codes, no carriage returns), and the summary."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import IO, Any

import click

from .models import Outcome, Outgoing, Stats
from .text import printable

PLAIN_EVERY = 10.0  # seconds between progress lines when not on a terminal


class Reporter:
    """Progress and summary; ``quiet`` prints nothing on success."""

    def __init__(self, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._gone: set[int] = set()  # streams whose reader went away
        self.tty = self.stream.isatty() and not quiet
        self.total = 0
        self.done = 0
        self.counts = dict.fromkeys(Outcome, 0)
        self._progress: Any = None
        self._task: Any = None
        self._started = self._last_line = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        self._started = self._last_line = time.monotonic()
        if not self.tty and not self.quiet:
            self.line(f"sending {total} message{'' if total == 1 else 's'}")
        if self.tty and total:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._task = self._progress.add_task("send", total=total, counts="", rate="")
            self._progress.start()

    def outcome(self, message: Outgoing, outcome: Outcome, code: int | None,
                reply: str) -> None:
        """One message has its outcome."""
        self.done += 1
        self.counts[outcome] += 1
        if self.done % 16 == 0 or self.done == self.total or outcome is not Outcome.SENT:
            self._refresh()

    def stopping(self, signal_name: str) -> None:
        """A signal asked the run to stop: said at once, even when quiet, so a person (or
        a test) knows it was heard while the messages in flight finish."""
        self.stop()
        self.line(f"stopping ({signal_name}): no new message starts; the messages in flight "
                  f"finish and are recorded")

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, counts=self._counts(),
                                  rate=self._rate(now))
        elif not self.quiet and now - self._last_line >= PLAIN_EVERY:
            self._last_line = now
            self.line(f"progress: {self.done}/{self.total}, {self._counts()}, {self._rate(now)}")

    def _counts(self) -> str:
        c = self.counts
        return f"sent {c[Outcome.SENT]}, failed {c[Outcome.FAILED]}, " \
               f"deferred {c[Outcome.DEFERRED]}"

    def _rate(self, now: float) -> str:
        elapsed = now - self._started
        return f"{self.done / elapsed:.1f} msg/s" if elapsed > 0 else ""

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def line(self, text: str) -> None:
        self.say(printable(text, 2000), self.stream)

    def say(self, text: str, stream: IO[str] | None = None) -> None:
        """Write a line; when the reader has gone (``mailer send … | head -1``, a closed
        stderr) stay silent from then on: a closed output never changes what is sent,
        nor the exit code."""
        stream = stream or sys.stdout
        if id(stream) in self._gone:
            return
        try:
            click.echo(text, file=stream)
        except (OSError, ValueError):  # EPIPE, a closed file
            self._gone.add(id(stream))
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())  # what is still buffered goes nowhere
                os.close(devnull)

    def rejected(self, stats: Stats) -> None:
        """Every rejected, deferred and expired address with the server's last reply, even
        when quiet: each needs a human, or explains why the run did not finish."""
        for kind, found in (("rejected", stats.failed), ("deferred", stats.deferred),
                            ("unconfirmed", stats.unconfirmed)):
            for email, code, reply in found:
                self.line(" ".join(f"{kind}: {email}: {code or ''} {reply}".split()))
        for email, code, reply in stats.archive_refused:
            self.line(" ".join(f"archive copy refused (the message to {email} was sent): "
                               f"{code or ''} {reply}".split()))
        for email, reply in stats.expired:
            self.line(" ".join(f"expired: {email}: {reply}".split()))

    def summary(self, stats: Stats, *, skipped: int, suppressed: int, remaining: int,
                failed: bool) -> None:
        """Rejected addresses always; the summary unless quiet and all went well."""
        self.rejected(stats)
        if self.quiet and not failed:
            return
        if stats.stopped:
            self.line(f"stopped: {stats.stopped}")
        skip = f"skipped {skipped + suppressed}"
        if skipped or suppressed:
            skip += f" ({skipped} done before, {suppressed} suppressed)"
        failed_now = f"failed {len(stats.failed) + len(stats.expired)} (permanent"
        failed_now += f", {len(stats.expired)} expired)" if stats.expired else ")"
        text = (f"sent {stats.sent}, {failed_now}, deferred {len(stats.deferred)} (temporary), "
                f"{skip}")
        if stats.unconfirmed:
            text += f", {len(stats.unconfirmed)} unconfirmed (sent again by the next run)"
        if remaining:
            text += f"; {remaining} remain for the next run"
        self.say(text)
