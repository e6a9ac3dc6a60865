"""One run of ``mailer send``, a dry run or a test send: the only module that puts the
stages together.

plan → queue → deliver: what the journal knows is read first (``plan.read_knowledge``);
then the list is read once (``Campaign.check``), each guest's message built as the plan
says and put into the queue; once the whole list is good, the journal is brought up to
date from the queue, and delivery (or the dry run's outbox) reads only the queue.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .address import Mailbox, check_address
from .campaign import Campaign, CheckReport, Visit
from .errors import EXIT_OK, EXIT_REJECTED, EXIT_TEMPFAIL, InputError, TemporaryError
from .files import private_dir
from .message import content_id
from .models import Decision, Kind, Outgoing, Recipient, Rendered, Skip, Stats
from .plan import Knowledge, Planner, Tally, read_knowledge
from .queue import Build, Queue, finish
from .report import Reporter
from .settings import Settings

if TYPE_CHECKING:  # imported where a run needs them: `validate` starts without asyncio
    # and aiosmtplib
    from .journal import Journal
    from .journal.events import Holder
    from .message import Attachment
    from .outbox import Outbox
    from .pacing import Window
    from .pool import OutcomeHook, Recorder, SenderPool


@dataclass
class SendOptions:
    concurrency: int = 4
    rate: float | None = None
    retries: int = 3
    retry_delay: float = 2.0
    max_messages: int | None = None
    retry_failed: bool = False
    retry_for: float = 3 * 86400.0  # seconds a guest may stay deferred across runs
    cancel_removed: bool = False  # send a cancellation to holders no longer on the list
    only: frozenset[str] = frozenset()  # send (or resend) to these keys only
    daily: int | None = None  # envelope recipients in any 24 hours (the sending account's)
    timezone: str = "Europe/Oslo"  # of the times a run shows
    window: Window | None = None  # when the campaign may send
    not_before: datetime | None = None  # the campaign's start (kept in the journal)


@dataclass
class Result:
    stats: Stats = field(default_factory=Stats)
    skipped: int = 0
    suppressed: int = 0
    remaining: int = 0
    plan: Tally = field(default_factory=Tally)

    @property
    def exit_code(self) -> int:
        stats = self.stats
        if stats.deferred or stats.unconfirmed or stats.stopped:
            return EXIT_TEMPFAIL
        if stats.failed or stats.expired or stats.archive_refused:
            return EXIT_REJECTED
        return EXIT_OK


# The pass --------------------------------------------------------------------------------

def _knowledge(campaign: Campaign, path: Path | None, options: SendOptions
               ) -> tuple[Knowledge, Journal | None]:
    """What the journal knows, given to the campaign (answers, suppressions, the event
    version this run sends, its secret); the journal is left open for the plan's
    questions."""
    event = campaign.event
    fields = None if event is None else (event.shown(), event.fingerprint(), event.sequence)
    knowledge, journal = read_knowledge(path, campaign.id, uid=campaign.uid,
                                        event_fields=fields, retry_for=options.retry_for)
    campaign.use_knowledge(knowledge)
    knowledge.event = campaign.event_run
    return knowledge, journal


def check_or_fail(campaign: Campaign, reporter: Reporter, planner: Planner | None = None,
                  visit: Visit | None = None) -> CheckReport:
    """The pass: validate the list and render every message, asking the plan and
    handing each guest to ``visit``; InputError (65) on any error."""
    report = campaign.check(planner=planner, visit=visit)
    if not reporter.quiet:
        for warning in report.warnings:
            reporter.line(warning)
    if not report.ok:
        errors = report.errors
        for error in errors[:-1]:
            reporter.line(error)
        more = f" ({len(errors)} errors; nothing was sent)"
        raise InputError(errors[-1] + more)
    if planner is not None and planner.not_on_list:
        raise InputError(f"{campaign.listing.display}: --only names no guest of this list: "
                         f"{', '.join(planner.not_on_list)}")
    return report


def _into(queue: Queue, campaign: Campaign, *, keep_rendered: bool = False) -> Visit:
    """The pass's visitor for a send or a dry run: each guest into the queue, with the
    message the plan gives them, built from the parts the pass rendered."""
    from .journal import EXCLUDED, ON_LIST, SUPPRESSED

    def visit(recipient: Recipient, decision: Decision | None, rendered: Rendered | None,
              files: list[Attachment]) -> None:
        assert decision is not None
        if rendered is None or decision.kind is None:
            mark = SUPPRESSED if decision.skip in (Skip.SUPPRESSED, Skip.BOUNCED) else \
                EXCLUDED if decision.skip is Skip.EXCLUDED else ON_LIST
            queue.guest(recipient, mark)
            return
        message = campaign.assemble(recipient, rendered, decision.kind, files,
                                    keep_rendered=keep_rendered)
        queue.put(recipient, decision, message)

    return visit


def _builder(campaign: Campaign, keep_rendered: bool = False) -> Build:
    """How the queue builds a message it kept as a recipe."""
    def build(recipient: Recipient, kind: Kind, held: int | None) -> Outgoing:
        return campaign.build(recipient, kind, held, keep_rendered=keep_rendered)
    return build


# A dry run -------------------------------------------------------------------------------

def dry_run(campaign: Campaign, outbox: Path, reporter: Reporter,
            journal_path: Path | None = None, options: SendOptions | None = None) -> Outbox:
    """Write what a send would send into ``outbox``: the same plan as a send (what the
    journal knows is read, never written), the same queue, finished the same way."""
    from .outbox import Outbox

    options = options or SendOptions()
    knowledge, journal = _knowledge(campaign, journal_path, options)
    with contextlib.ExitStack() as stack:
        if journal is not None:
            stack.callback(journal.close)
        queue = stack.enter_context(Queue())
        planner = Planner(knowledge, retry_failed=options.retry_failed, only=options.only)
        check_or_fail(campaign, reporter, planner, _into(queue, campaign, keep_rendered=True))
        if journal is not None and campaign.keeps_calendars:  # as a send would name them
            holders = journal.holders(campaign.uid)
            listed = {key for key, *_ in queue.guests() if key in holders}
            removed = [holder for key, holder in holders.items() if key not in listed]
            if removed:
                reporter.line(_removed_notice([email for _, email, *_ in removed],
                                              options.cancel_removed))
                if options.cancel_removed:
                    _cancel(campaign, queue, removed, keep_rendered=True)
        title = f"{campaign.template} — {campaign.listing.display}"
        sender = campaign.settings.sender or ""
        with Outbox(outbox, title, campaign.attachments, sender=sender,
                    reply_to=campaign.settings.reply_to or "",
                    event=_event_view(campaign), images=_images(campaign)) as box:
            for message, search in queue.entries(_builder(campaign, keep_rendered=True),
                                                 campaign.signer):
                box.write(message, search)
                box.kinds[message.kind] = box.kinds.get(message.kind, 0) + 1
    return box


def _images(campaign: Campaign) -> dict[str, str]:
    """The inline images (the logo) as data: URIs for the preview page."""
    if campaign.factory is None:
        return {}
    return {f"cid:{content_id(image.filename)}":
            f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"
            for image in campaign.factory.inline}


def _event_view(campaign: Campaign) -> dict[str, str] | None:
    """The event as a guest's calendar shows it, for the preview page."""
    event = campaign.event
    if event is None:
        return None
    when = f"{event.starts:%Y-%m-%d %H:%M}–{event.ends:%H:%M} ({event.timezone})"
    return {"summary": event.summary, "when": when, "where": event.location or "",
            "sequence": str(campaign.sequence)}


# Delivery --------------------------------------------------------------------------------

def _deliver(pool: SenderPool, messages: Iterator[Outgoing], reporter: Reporter) -> Stats:
    """Run the pool on one event loop (uvloop where installed). SIGTERM and SIGINT stop it
    gracefully: no new message starts, those in flight finish and are recorded."""
    import asyncio
    import signal

    async def main() -> Stats:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def stop(name: str) -> None:
            if not pool.stopping:
                reporter.stopping(name)
            pool.stop(f"interrupted by {name}")

        for sig, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, stop, name)
        try:
            return await pool.run(messages)
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)  # what was there before (cli's: exit 75)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def _pool(campaign: Campaign, recorder: Recorder, options: SendOptions,
          on_outcome: OutcomeHook, budget: int | None = None, cost: int = 1,
          say: Callable[[str], None] | None = None) -> SenderPool:
    from .pool import SenderPool

    assert campaign.sender is not None
    return SenderPool(campaign.settings.smtp(campaign.sender.domain), recorder,
                      concurrency=options.concurrency, rate=options.rate,
                      retries=options.retries, retry_delay=options.retry_delay,
                      max_messages=options.max_messages, on_outcome=on_outcome,
                      budget=budget, cost=cost, say=say)


def _removed_notice(emails: list[str], cancelling: bool) -> str:
    names = ", ".join(emails[:20])
    more = f" and {len(emails) - 20} more" if len(emails) > 20 else ""
    what = "each is sent a cancellation (--cancel-removed)" if cancelling else \
        "--cancel-removed sends each a cancellation"
    one = len(emails) == 1
    return (f"{len(emails)} guest{'' if one else 's'} hold{'s' if one else ''} this invitation "
            f"but {'is' if one else 'are'} no longer on the list: {names}{more}; {what}")


def _schedule(campaign: Campaign, path: Path, options: SendOptions,
              reporter: Reporter) -> tuple[bool, datetime | None]:
    """(whether the campaign may send now, when the send window closes: None without
    one). Not before its start, nor outside the window: said, unless quiet. The start
    given by --not-before is kept in the journal, so later runs without it wait too."""
    from .journal import Journal
    from .pacing import when

    now = datetime.now(UTC)
    note = f"not-before:{campaign.id}"
    start = options.not_before
    if start is not None:
        with Journal(path) as journal:
            journal.keep_note(note, start.astimezone(UTC).isoformat(timespec="seconds"))
    elif path.exists():
        with Journal(path, create=False) as journal:
            kept = journal.note(note)
        start = None if kept is None else datetime.fromisoformat(kept)
    if start is not None and now < start:
        if not reporter.quiet:
            reporter.say(f"campaign {campaign.id!r} starts {when(start, options.timezone)}: "
                         f"nothing is sent before")
        return False, None
    window = options.window
    if window is None:
        return True, None
    closes = window.closes(now, options.timezone)
    if closes is None:
        if not reporter.quiet:
            reporter.say(f"outside the send window ({window.text}): it opens "
                         f"{when(window.opens(now, options.timezone), options.timezone)}")
        return False, None
    return True, closes


def _quota_left(journal: Journal, options: SendOptions, cost: int) -> int | None:
    """Envelope recipients the daily quota still allows (None: no quota)."""
    if options.daily is None:
        return None
    from datetime import UTC, datetime

    from .pacing import quota, since

    now = datetime.now(UTC)
    return quota(journal.sends_since(since(now)), options.daily, cost, now)[0]


def _quota_line(journal: Journal, options: SendOptions, cost: int, remain: int) -> str:
    from datetime import UTC, datetime

    from .pacing import limit_line, quota, since

    assert options.daily is not None
    now = datetime.now(UTC)
    _, next_at = quota(journal.sends_since(since(now)), options.daily, cost, now)
    return limit_line(options.daily, remain, next_at, options.timezone)


def _with_archive(messages: Iterator[Outgoing], archive: str | None) -> Iterator[Outgoing]:
    for message in messages:
        message.archive = archive
        yield message


def send(campaign: Campaign, journal_path: Path, options: SendOptions,
         reporter: Reporter) -> Result:
    """Deliver every message the plan says is due in this campaign."""
    from .journal import CampaignLock, Journal

    assert campaign.sender is not None and campaign.template is not None
    result = Result()
    with CampaignLock(journal_path, campaign.id), contextlib.ExitStack() as stack:
        now_ok, closes = _schedule(campaign, journal_path, options, reporter)
        if not now_ok:
            return result  # not now: said so (or silent with --quiet), exit 0
        knowledge, known = _knowledge(campaign, journal_path, options)
        if known is not None:
            stack.enter_context(known)
        else:  # the journal's secret is made now and kept when the journal is
            campaign.secret = knowledge.secret = secrets.token_bytes(32)
        private_dir(journal_path.parent)
        queue = stack.enter_context(Queue(journal_path.parent))
        planner = Planner(knowledge, retry_failed=options.retry_failed, only=options.only)
        check_or_fail(campaign, reporter, planner, _into(queue, campaign))
        result.plan = tally = planner.tally
        # Written from here on, only once the whole list is good.
        journal = known or stack.enter_context(Journal(journal_path, secret=knowledge.secret))
        if journal.secret != knowledge.secret:  # another run made the journal meanwhile
            raise TemporaryError(f"{journal_path}: another run created this journal while "
                                 f"this one checked the list; run again (nothing was sent)")
        journal.sync(campaign.id, campaign.template, campaign.listing.display, queue.guests,
                     excluded=queue.excluded > 0)
        expired = journal.expire(campaign.id, options.retry_for)
        if campaign.event is not None:
            journal.set_event(campaign.id, campaign.uid)
            event = campaign.event
            journal.event_version(campaign.id, campaign.uid, event.shown(),
                                  event.fingerprint(), event.sequence)
            if campaign.keeps_calendars:  # the inbox marks an answer after it as late
                journal.set_deadline(campaign.uid, event.deadline)
                _removed(campaign, journal, queue, options, reporter)
        skipped = tally.skipped
        result.suppressed = skipped[Skip.SUPPRESSED] + skipped[Skip.BOUNCED]
        result.skipped = sum(skipped.values()) - result.suppressed - skipped[Skip.EXCLUDED] \
            - skipped[Skip.NOT_ONLY] - skipped[Skip.EXPIRED]
        archive = campaign.settings.archive_bcc
        cost = 1 + (archive is not None)  # envelope recipients a message uses
        budget = _quota_left(journal, options, cost)
        if queue.due and budget is not None and budget < cost:  # spent: say so, connect to
            result.remaining = queue.due  # nothing, exit 0 (silent with --quiet)
            if not reporter.quiet:
                reporter.say(_quota_line(journal, options, cost, queue.due))
            return result
        if queue.due:
            pool = _pool(campaign, journal.recorder(campaign.id), options, reporter.outcome,
                         budget, cost, reporter.line)
            if closes is not None:  # the window's end, on the monotonic clock
                pool.deadline = time.monotonic() + (closes - datetime.now(UTC)).total_seconds()
            reporter.start(min(queue.due, options.max_messages or queue.due))
            messages = _with_archive(queue.messages(_builder(campaign), campaign.signer),
                                     check_address(archive).ascii if archive else None)
            try:
                result.stats = _deliver(pool, messages, reporter)
            finally:
                reporter.stop()
            stats = result.stats
            result.remaining = queue.due - stats.sent - len(stats.failed)
            if stats.quota and not reporter.quiet:
                reporter.say(_quota_line(journal, options, cost, result.remaining))
            if stats.closed and closes is not None and options.window is not None \
                    and not reporter.quiet:
                from .pacing import when

                zone = options.timezone
                reporter.say(f"the send window closed at {when(closes, zone)}: "
                             f"{result.remaining:,} remain; it opens again "
                             f"{when(options.window.opens(closes, zone), zone)}")
        result.stats.expired = expired
    reporter.summary(result.stats, skipped=result.skipped, suppressed=result.suppressed,
                     remaining=result.remaining, failed=result.exit_code != EXIT_OK)
    line = estimate(result.remaining, options, campaign.settings, journal_path)
    if line is not None and not reporter.quiet:
        reporter.say(line)
    return result


def estimate(remain: int, options: SendOptions, settings: Settings, path: Path
             ) -> str | None:
    """How long ``remain`` messages take at the run's limits (None: no limit, nothing to
    reckon with): for the summary of a send and for a dry run."""
    from .journal import Journal
    from .pacing import estimate as reckon
    from .pacing import quota, since

    cost = 1 + (settings.archive_bcc is not None)
    now = datetime.now(UTC)
    left = None
    if options.daily is not None:
        left = options.daily
        if path.exists():
            with Journal(path, create=False) as journal:
                left = quota(journal.sends_since(since(now)), options.daily, cost, now)[0]
    return reckon(remain, options.rate, options.daily, left, cost, now, options.timezone)


def _removed(campaign: Campaign, journal: Journal, queue: Queue, options: SendOptions,
             reporter: Reporter) -> None:
    """Name the guests who hold the event but are no longer on the list, once per change
    of who they are (a cron run every ten minutes says it once), and on every run that
    sends them the cancellation; with --cancel-removed, queue a cancellation for each."""
    import hashlib

    removed = journal.removed_holders(campaign.id, campaign.uid)
    digest = hashlib.sha256("\n".join(key for key, *_ in removed).encode()).hexdigest()
    note = f"removed:{campaign.id}"
    if removed and (options.cancel_removed or journal.note(note) != digest):
        reporter.line(_removed_notice([email for _, email, *_ in removed],
                                      options.cancel_removed))
    journal.keep_note(note, digest)
    if options.cancel_removed:
        _cancel(campaign, queue, removed)


def _cancel(campaign: Campaign, queue: Queue, removed: list[Holder],
            keep_rendered: bool = False) -> None:
    """Queue a cancellation for each guest no longer on the list, in the language of the
    message their calendar got, with ``removed`` true for the templates (the event goes
    ahead: they are no longer on the guest list)."""
    from .models import State

    headers = campaign.listing.headers
    for _key, email, name, language in removed:
        guest = Recipient(line=0, address=check_address(email), name=name, language=language,
                          headers=headers, row=[""] * len(headers))
        decision = Decision(Kind.CANCELLATION, None, State.SENT, campaign.sequence)
        queue.put(guest, decision, campaign.build(guest, Kind.CANCELLATION, campaign.sequence,
                                                  keep_rendered=keep_rendered, removed=True))


# A test send ---------------------------------------------------------------------------

def test_send(campaign: Campaign, to: list[str], recipient_email: str | None,
              options: SendOptions, reporter: Reporter) -> Result:
    """Send the message of one real recipient only to the test addresses."""
    wanted = check_address(recipient_email).key if recipient_email else None
    knowledge, journal = read_knowledge(campaign.settings.journal, campaign.id)
    if journal is not None:
        journal.close()
    campaign.use_knowledge(knowledge)  # the journal's secret, for the Message-ID
    chosen: list[Recipient] = []

    def visit(recipient: Recipient, decision: Decision | None, rendered: Rendered | None,
              files: list[Attachment]) -> None:
        if not chosen and (wanted is None or recipient.address.key == wanted):
            chosen.append(recipient)

    check_or_fail(campaign, reporter, visit=visit)
    if not chosen:
        raise InputError(f"{campaign.listing.display}: no recipient {recipient_email!r} "
                         f"in the list")
    guest = chosen[0]
    boxes = [Mailbox("", check_address(address)) for address in to]
    from .pool import NullRecorder

    # Not through the queue: a message it keeps as a recipe would be built again for the
    # guest, not the test address. Finished the same way.
    messages = [finish(campaign.build(guest, to=box), campaign.signer) for box in boxes]
    pool = _pool(campaign, NullRecorder(), options, reporter.outcome)
    reporter.start(len(boxes))
    try:
        stats = _deliver(pool, iter(messages), reporter)
    finally:
        reporter.stop()
    result = Result(stats)
    reporter.rejected(stats)
    if not reporter.quiet or result.exit_code:
        reporter.say(f"test message for {guest.email} (line {guest.line}) sent to "
                   f"{', '.join(b.address.normalized for b in boxes)}: {stats.sent} sent, "
                   f"{len(stats.failed)} failed, {len(stats.deferred)} deferred")
    return result
