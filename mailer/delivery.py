"""One run of ``mailer send``: check everything, lock, journal, deliver, sum up."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .address import Mailbox, check_address
from .campaign import Campaign, Job
from .errors import EXIT_OK, EXIT_REJECTED, EXIT_TEMPFAIL, InputError
from .journal import CampaignLock, Journal
from .outbox import Outbox
from .recipients import Recipient
from .report import Reporter
from .sender import Delivery, NullRecorder, Recorder, SmtpConfig, Stats


@dataclass
class SendOptions:
    concurrency: int = 4
    rate: float | None = None
    retries: int = 3
    retry_delay: float = 2.0
    max_messages: int | None = None
    retry_failed: bool = False


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
        if self.stats.failed:
            return EXIT_REJECTED
        return EXIT_OK


def check_or_fail(campaign: Campaign, reporter: Reporter) -> None:
    """Validate the list and render every message; InputError (65) on any error."""
    report = campaign.check()
    if not reporter.quiet:
        for warning in report.warnings:
            reporter.line(warning)
    if not report.ok:
        for error in report.errors[:-1]:
            reporter.line(error)
        more = f" ({len(report.errors)} errors; nothing was sent)"
        raise InputError(report.errors[-1] + more)


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
    config = SmtpConfig.from_settings(campaign.settings, campaign.sender.domain)
    with CampaignLock(journal_path, campaign.id):
        check_or_fail(campaign, reporter)
        with Journal(journal_path) as journal:
            journal.sync(campaign.id, campaign.template, str(campaign.listing.path),
                         ((r.address.key, r.email, r.name, r.line, s)
                          for r, s in campaign.recipients()))
            before = journal.counts(campaign.id)[campaign.id]
            result = Result(Stats(), skipped=before["sent"], suppressed=before["suppressed"])
            if not options.retry_failed:
                result.skipped += before["failed"]
            todo = journal.remaining(campaign.id, options.retry_failed)
            if todo:
                jobs = (campaign.build(recipient)
                        for recipient, suppressed in campaign.recipients()
                        if not suppressed and journal.to_send(
                            campaign.id, recipient.address.key, options.retry_failed))
                delivery = _delivery(config, journal.recorder(campaign.id), options, reporter)
                reporter.start(min(todo, options.max_messages or todo))
                try:
                    result.stats = _run_loop(delivery, jobs)
                finally:
                    reporter.stop()
                result.remaining = journal.remaining(campaign.id, options.retry_failed)
    reporter.summary(result.stats, skipped=result.skipped, suppressed=result.suppressed,
                     remaining=result.remaining, failed=result.exit_code != EXIT_OK)
    return result


def _delivery(config: SmtpConfig, recorder: Recorder, options: SendOptions,
              reporter: Reporter) -> Delivery:
    return Delivery(config, recorder, concurrency=options.concurrency, rate=options.rate,
                    retries=options.retries, retry_delay=options.retry_delay,
                    max_messages=options.max_messages, on_outcome=reporter.outcome)


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
    delivery = _delivery(config, NullRecorder(), options, reporter)
    stats = _run_loop(delivery, iter(jobs))
    result = Result(stats)
    if not reporter.quiet or result.exit_code:
        reporter.line(f"test message for {chosen.email} (line {chosen.line}) sent to "
                      f"{', '.join(b.address.normalized for b in boxes)}: {stats.sent} sent, "
                      f"{stats.failed} failed, {stats.deferred} deferred")
    for email, code, reply in stats.rejected:
        reporter.line(f"rejected: {email}: {code} {reply}")
    return result
