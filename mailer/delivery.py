"""One run of ``mailer send``: check everything, lock, journal, deliver, sum up."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from .address import Mailbox, check_address
from .campaign import Campaign, Job, Share
from .errors import EXIT_OK, EXIT_REJECTED, EXIT_TEMPFAIL, InputError
from .journal import CampaignLock, Journal
from .outbox import Outbox
from .parallel import fork_map
from .recipients import Recipient
from .report import Reporter
from .sender import Delivery, NullRecorder, Outcome, Recorder, SmtpConfig, Stats

OutcomeHook = Callable[[Job, Outcome, int | None, str], None]


@dataclass
class SendOptions:
    concurrency: int = 4
    rate: float | None = None
    retries: int = 3
    retry_delay: float = 2.0
    max_messages: int | None = None
    retry_failed: bool = False
    retry_for: float = 3 * 86400.0  # seconds a guest may stay deferred across runs


@dataclass
class Result:
    stats: Stats
    skipped: int = 0
    suppressed: int = 0
    remaining: int = 0

    @property
    def exit_code(self) -> int:
        if self.stats.deferred or self.stats.stopped:
            return EXIT_TEMPFAIL
        if self.stats.failed or self.stats.expired:
            return EXIT_REJECTED
        return EXIT_OK


PARALLEL_CHECK_BYTES = 256 * 1024  # lists smaller than this are checked in one process
PARALLEL_SEND_MESSAGES = 2000  # fewer messages than this are sent from one process


def check_processes(campaign: Campaign) -> int:
    """How many processes render the check pass: two for a long list on two cores."""
    wanted = campaign.settings.processes
    if wanted:
        return wanted
    if campaign.templates is None or (os.cpu_count() or 1) < 2:
        return 1
    try:
        size = campaign.listing.path.stat().st_size
    except OSError:
        return 1
    return 2 if size >= PARALLEL_CHECK_BYTES else 1


def send_processes(campaign: Campaign, options: SendOptions, todo: int) -> int:
    """How many processes send: one per core (at most two) for a long unthrottled run.

    A rate limit or --max-messages keeps one process: the limit is then the bottleneck,
    and one process keeps its spacing and count exact."""
    wanted = campaign.settings.processes or 0
    if options.rate is not None or options.max_messages is not None:
        return 1
    if not wanted:
        if todo < PARALLEL_SEND_MESSAGES or (os.cpu_count() or 1) < 2:
            return 1
        wanted = 2
    return max(1, min(wanted, options.concurrency))


def check_or_fail(campaign: Campaign, reporter: Reporter) -> None:
    """Validate the list and render every message; InputError (65) on any error."""
    n = check_processes(campaign)
    if n == 1:
        report = campaign.check()
    else:
        parts = fork_map(lambda k: campaign.check((k, n)), n)
        report = parts[0]
        for part in parts[1:]:
            report.merge(part)
    if not reporter.quiet:
        for warning in report.warnings:
            reporter.line(warning)
    if not report.ok:
        errors = report.errors
        for error in errors[:-1]:
            reporter.line(error)
        more = f" ({len(errors)} errors; nothing was sent)"
        raise InputError(errors[-1] + more)


def dry_run(campaign: Campaign, outbox: Path, reporter: Reporter) -> Outbox:
    check_or_fail(campaign, reporter)
    title = f"{campaign.template} — {campaign.listing.display}"
    with Outbox(outbox, title, campaign.attachments) as box:
        for recipient, suppressed in campaign.recipients():
            if not suppressed:
                box.write(campaign.build(recipient, keep_rendered=True))
    return box


def _run_loop(delivery: Delivery, jobs: Iterator[Job]) -> Stats:
    """Run the delivery on uvloop where installed; SIGTERM/SIGINT stop it gracefully."""
    async def main() -> Stats:
        loop = asyncio.get_running_loop()
        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, delivery.stop, f"interrupted by {name}")
        try:
            return await delivery.run(jobs)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def send(campaign: Campaign, journal_path: Path, options: SendOptions,
         reporter: Reporter) -> Result:
    """Deliver every message not yet delivered in this campaign."""
    assert campaign.sender is not None and campaign.template is not None
    with CampaignLock(journal_path, campaign.id):
        check_or_fail(campaign, reporter)
        with Journal(journal_path) as journal:
            journal.sync(campaign.id, campaign.template, str(campaign.listing.path),
                         ((r.address.key, r.email, r.name, r.line, s)
                          for r, s in campaign.recipients()))
            expired = journal.expire(campaign.id, options.retry_for)
            before = journal.counts(campaign.id)[campaign.id]
            todo = journal.remaining(campaign.id, options.retry_failed)
        result = Result(Stats(), skipped=before["sent"], suppressed=before["suppressed"])
        if not options.retry_failed:
            result.skipped += before["failed"] - len(expired)
        if todo:
            n = send_processes(campaign, options, todo)
            total = min(todo, options.max_messages or todo)
            try:
                if n == 1:
                    reporter.start(total)
                    result.stats = _send_share(campaign, journal_path, options, (0, 1),
                                               options.concurrency, reporter.outcome)
                else:
                    result.stats = _send_parallel(campaign, journal_path, options, n,
                                                  reporter, total)
            finally:
                reporter.stop()
            with Journal(journal_path) as journal:
                result.remaining = journal.remaining(campaign.id, options.retry_failed)
        result.stats.expired = expired
    reporter.summary(result.stats, skipped=result.skipped, suppressed=result.suppressed,
                     remaining=result.remaining, failed=result.exit_code != EXIT_OK)
    return result


def _send_share(campaign: Campaign, journal_path: Path, options: SendOptions, share: Share,
                concurrency: int, on_outcome: OutcomeHook) -> Stats:
    """Send one share of the list over ``concurrency`` connections, in this process."""
    assert campaign.sender is not None
    config = SmtpConfig.from_settings(campaign.settings, campaign.sender.domain)
    with Journal(journal_path) as journal:
        jobs = (campaign.build(recipient)
                for recipient, suppressed in campaign.recipients(share)
                if not suppressed and journal.to_send(
                    campaign.id, recipient.address.key, options.retry_failed))
        delivery = _delivery(config, journal.recorder(campaign.id), options, concurrency,
                             on_outcome)
        return _run_loop(delivery, jobs)


def _send_parallel(campaign: Campaign, journal_path: Path, options: SendOptions, n: int,
                   reporter: Reporter, total: int) -> Stats:
    """Split the list and the connections over n forked processes; merge their Stats.

    Each child counts its outcomes in its own slots of a shared array, which the parent
    reads for the progress display."""
    counts = multiprocessing.get_context("fork").RawArray("q", 3 * n)
    order = (Outcome.SENT, Outcome.FAILED, Outcome.DEFERRED)

    def child(k: int) -> Stats:
        def count(job: Job, outcome: Outcome, code: int | None, reply: str) -> None:
            counts[3 * k + order.index(outcome)] += 1

        share_of_connections = options.concurrency // n + (k < options.concurrency % n)
        return _send_share(campaign, journal_path, options, (k, n), share_of_connections,
                           count)

    def tick() -> None:
        reporter.counts_are(*(sum(counts[i::3]) for i in range(3)))

    # The progress display (a thread, on a terminal) starts once the children are forked.
    parts = fork_map(child, n, tick=tick, forward_signals=True,
                     started=lambda: reporter.start(total))
    tick()
    merged = Stats()
    for part in parts:
        merged.merge(part)
    return merged


def _delivery(config: SmtpConfig, recorder: Recorder, options: SendOptions, concurrency: int,
              on_outcome: OutcomeHook) -> Delivery:
    return Delivery(config, recorder, concurrency=concurrency, rate=options.rate,
                    retries=options.retries, retry_delay=options.retry_delay,
                    max_messages=options.max_messages, on_outcome=on_outcome)


def test_send(campaign: Campaign, to: list[str], recipient_email: str | None,
              options: SendOptions, reporter: Reporter) -> Result:
    """Send the message of one real recipient only to the test addresses."""
    assert campaign.sender is not None
    check_or_fail(campaign, reporter)
    wanted = check_address(recipient_email).key if recipient_email else None
    chosen: Recipient | None = None
    for recipient, _ in campaign.recipients():
        if wanted is None or recipient.address.key == wanted:
            chosen = recipient
            break
    if chosen is None:
        raise InputError(f"{campaign.listing.display}: no recipient {recipient_email!r} "
                         f"in the list")
    boxes = [Mailbox("", check_address(address)) for address in to]
    jobs = [campaign.build(chosen, to=box) for box in boxes]
    config = SmtpConfig.from_settings(campaign.settings, campaign.sender.domain)
    delivery = _delivery(config, NullRecorder(), options, options.concurrency, reporter.outcome)
    reporter.start(len(jobs))
    try:
        stats = _run_loop(delivery, iter(jobs))
    finally:
        reporter.stop()
    result = Result(stats)
    reporter.rejected(stats)
    if not reporter.quiet or result.exit_code:
        click.echo(f"test message for {chosen.email} (line {chosen.line}) sent to "
                   f"{', '.join(b.address.normalized for b in boxes)}: {stats.sent} sent, "
                   f"{stats.failed} failed, {stats.deferred} deferred")
    return result
