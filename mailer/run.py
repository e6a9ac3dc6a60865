"""One run of ``mailer send``, a dry run or a test send: check everything, lock, bring the
journal up to date, deliver on one event loop, sum up. The only module that puts the
stages together."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .address import Mailbox, check_address, is_loopback
from .campaign import Campaign
from .errors import EXIT_OK, EXIT_REJECTED, EXIT_TEMPFAIL, ConfigError, InputError
from .journal import STATES, CampaignLock, Journal
from .message import content_id
from .models import Outgoing, Recipient, Stats
from .report import Reporter
from .settings import Settings
from .spool import Spool, holds_message

if TYPE_CHECKING:  # imported where a run needs them: `validate` starts without asyncio
    # and aiosmtplib
    from .outbox import Outbox
    from .pool import OutcomeHook, Recorder, SenderPool
    from .smtp import SmtpConfig


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


@dataclass
class Result:
    stats: Stats
    skipped: int = 0
    suppressed: int = 0
    remaining: int = 0

    @property
    def exit_code(self) -> int:
        stats = self.stats
        if stats.deferred or stats.unknown or stats.stopped:
            return EXIT_TEMPFAIL
        if stats.failed or stats.expired or stats.archive_refused:
            return EXIT_REJECTED
        return EXIT_OK


def smtp_config(settings: Settings, sender_domain: str) -> SmtpConfig:
    """How to reach the relay; ConfigError for a login over plain text to another host."""
    from .smtp import SmtpConfig, helo_name

    if settings.smtp_security == "none" and settings.smtp_username \
            and not is_loopback(settings.smtp_host):
        raise ConfigError(f"MAILER_SMTP_SECURITY is none and MAILER_SMTP_USERNAME is set: "
                          f"refusing to send the password in plain text to "
                          f"{settings.smtp_host} (use starttls or tls; plain AUTH only to a "
                          f"relay on this machine)")
    return SmtpConfig(settings.smtp_host, settings.smtp_port, settings.smtp_security,
                      settings.smtp_username, settings.smtp_password, settings.smtp_timeout,
                      helo_name(settings.smtp_helo, sender_domain),
                      settings.messages_per_connection, settings.smtp_data_timeout)


def read_journal(campaign: Campaign, journal_path: Path | None) -> bool:
    """Give the campaign what the journal knows from the inbox (answers, bounces,
    unsubscribes), when there is a journal; nothing is created or written. True when this
    campaign has sent (or tried to send) to anyone before."""
    if journal_path is None or not journal_path.exists():
        return False
    with Journal(journal_path, create=False) as journal:
        answers = {k: a for k, (a, _) in journal.answers_for(campaign.uid).items()} \
            if campaign.event is not None else {}
        campaign.use_journal(answers, journal.bounced_keys(), journal.suppressed_keys())
        return journal.started(campaign.id)


def _spool(campaign: Campaign, journal_path: Path, options: SendOptions,
           started: bool) -> Spool | None:
    """A spool when this run sends the whole list: the check pass's messages are kept
    rather than rendered and built a second time (see spool.py)."""
    if started or campaign.event is not None or campaign.where or options.only \
            or options.max_messages is not None:
        return None
    try:
        return Spool(journal_path.parent)
    except OSError:
        return None  # no room for it: every message is built again, as without one


def check_or_fail(campaign: Campaign, reporter: Reporter, spool: Spool | None = None) -> None:
    """Validate the list and render every message; InputError (65) on any error."""
    report = campaign.check(spool=spool)
    if not reporter.quiet:
        for warning in report.warnings:
            reporter.line(warning)
    if not report.ok:
        errors = report.errors
        for error in errors[:-1]:
            reporter.line(error)
        more = f" ({len(errors)} errors; nothing was sent)"
        raise InputError(errors[-1] + more)


def dry_run(campaign: Campaign, outbox: Path, reporter: Reporter,
            journal_path: Path | None = None) -> Outbox:
    """Write what a send would send into ``outbox``. For an event, what each guest would
    get (invitation, update, cancellation) comes from the journal when there is one; it is
    read, never written."""
    from .outbox import Outbox

    read_journal(campaign, journal_path)
    check_or_fail(campaign, reporter)
    title = f"{campaign.template} — {campaign.listing.display}"
    journal = None
    if campaign.event is not None and journal_path is not None and journal_path.exists():
        journal = Journal(journal_path, create=False)
    try:
        if journal is not None and campaign.event is not None:
            campaign.use_version(*journal.event_version(
                campaign.id, campaign.uid, campaign.event.shown(), campaign.event.fingerprint(),
                campaign.event.sequence, write=False))
        sender = campaign.settings.sender or ""
        with Outbox(outbox, title, campaign.attachments, sender=sender,
                    reply_to=campaign.settings.reply_to or "",
                    event=_event_view(campaign), images=_images(campaign)) as box:
            for recipient, suppressed in campaign.recipients():
                if suppressed or not campaign.matches(recipient):
                    continue
                kind, held = _planned(campaign, journal, recipient)
                if kind is not None:
                    box.write(campaign.build(recipient, keep_rendered=True, kind=kind,
                                             held=held), " ".join(recipient.row))
                    box.kinds[kind] = box.kinds.get(kind, 0) + 1
    finally:
        if journal is not None:
            journal.close()
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


def _planned(campaign: Campaign, journal: Journal | None, recipient: Recipient
             ) -> tuple[str | None, int | None]:
    """What a send would give one guest (a dry run: asked guest by guest)."""
    if campaign.event is None or journal is None:
        return campaign.kind_for(None), None
    state, held = journal.guest(campaign.id, recipient.address.key, campaign.uid)
    return campaign.plan(state, held), held


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
          on_outcome: OutcomeHook) -> SenderPool:
    from .pool import SenderPool

    assert campaign.sender is not None
    return SenderPool(smtp_config(campaign.settings, campaign.sender.domain), recorder,
                      concurrency=options.concurrency, rate=options.rate,
                      retries=options.retries, retry_delay=options.retry_delay,
                      max_messages=options.max_messages, on_outcome=on_outcome)


def send(campaign: Campaign, journal_path: Path, options: SendOptions,
         reporter: Reporter) -> Result:
    """Deliver every message not yet delivered in this campaign."""
    assert campaign.sender is not None and campaign.template is not None
    result = Result(Stats())
    with CampaignLock(journal_path, campaign.id), \
            contextlib.ExitStack() as stack:
        started = read_journal(campaign, journal_path)
        spool = _spool(campaign, journal_path, options, started)
        if spool is not None:
            stack.enter_context(spool)
        check_or_fail(campaign, reporter, spool)
        _check_only(campaign, options)
        with Journal(journal_path) as journal:
            journal.sync(campaign.id, campaign.template, str(campaign.listing.path),
                         spool.rows() if spool is not None and spool.complete else
                         ((r.address.key, r.email, r.name, r.line, s)
                          for r, s in campaign.recipients()))
            expired = journal.expire(campaign.id, options.retry_for)
            removed: list[tuple[str, str, str]] = []
            if campaign.event is not None:
                journal.set_event(campaign.id, campaign.uid)
                campaign.use_version(*journal.event_version(
                    campaign.id, campaign.uid, campaign.event.shown(),
                    campaign.event.fingerprint(), campaign.event.sequence))
                if campaign.keeps_calendars:
                    removed = journal.removed_holders(campaign.id, campaign.uid)
                    _name_removed(removed, options, reporter)
            before = journal.counts(campaign.id)[campaign.id]
            todo = len(options.only) if options.only else _remaining(campaign, journal, options) \
                + (len(removed) if options.cancel_removed else 0)
            result.skipped = before["sent"]
            result.suppressed = before["suppressed"]
            if not options.retry_failed:
                result.skipped += before["failed"] - len(expired)
            if todo:
                pool = _pool(campaign, journal.recorder(campaign.id), options,
                             reporter.outcome)
                reporter.start(min(todo, options.max_messages or todo))
                try:
                    messages = _due(campaign, journal, options,
                                    removed if options.cancel_removed else [], spool)
                    result.stats = _deliver(pool, messages, reporter)
                finally:
                    reporter.stop()
                result.remaining = _remaining(campaign, journal, options)
        result.stats.expired = expired
    reporter.summary(result.stats, skipped=result.skipped, suppressed=result.suppressed,
                     remaining=result.remaining, failed=result.exit_code != EXIT_OK)
    return result


def _due(campaign: Campaign, journal: Journal, options: SendOptions,
         removed: list[tuple[str, str, str]], spool: Spool | None = None
         ) -> Iterator[Outgoing]:
    """The messages of the guests due in this run, built one at a time as the pool asks:
    for an event, each guest gets what brings their calendar up to date."""
    due = journal.due_list(campaign.id, options.retry_failed, campaign.event_run)
    bcc = campaign.settings.archive_bcc
    archive = check_address(bcc).ascii if bcc else None  # real sends only, never a test
    if spool is not None and spool.complete:  # the whole list, built: read it from there
        for record in spool.records():
            found = due.find(record[0], record[1])
            if found is None or not holds_message(record) \
                    or campaign.plan(*found, options.retry_failed) is None:
                continue
            message = spool.message(record)
            message.prior = found[0]
            message.archive = archive
            yield message
        return
    for recipient, suppressed in campaign.recipients():
        if suppressed or not _wanted(campaign, recipient, options):
            continue
        key = recipient.address.key
        found = due.find(recipient.line, key)
        if found is None and key in options.only:  # --only resends what was sent
            state, held = journal.guest(campaign.id, key, campaign.uid)
            found = (state or "queued", held)
        if found is None:
            continue
        state, held = found
        kind = campaign.plan(state, held, options.retry_failed)
        if kind is None and key in options.only:
            kind = "invitation" if campaign.keeps_calendars else "reminder"
        if kind is not None:
            message = (spool.take(recipient.line, key) if spool is not None else None) \
                or campaign.build(recipient, kind=kind, held=held)
            message.prior = state
            message.archive = archive
            yield message
    headers = campaign.listing.headers
    for _key, email, name in removed:  # --cancel-removed: no longer on the list
        guest = Recipient(line=0, address=check_address(email), name=name, language=None,
                          headers=headers, row=[""] * len(headers))
        message = campaign.build(guest, kind="cancellation", held=campaign.sequence)
        message.prior = "sent"
        message.archive = archive
        yield message


def _wanted(campaign: Campaign, recipient: Recipient, options: SendOptions) -> bool:
    """Whether this run is for this guest at all (--only, --where)."""
    if options.only and recipient.address.key not in options.only:
        return False
    return campaign.matches(recipient)


def _check_only(campaign: Campaign, options: SendOptions) -> None:
    """InputError naming every --only address that is not a guest of the list."""
    if not options.only:
        return
    missing = set(options.only)
    for recipient, _ in campaign.recipients():
        missing.discard(recipient.address.key)
    if missing:
        raise InputError(f"{campaign.listing.display}: --only names no guest of this list: "
                         f"{', '.join(sorted(missing))}")


def _remaining(campaign: Campaign, journal: Journal, options: SendOptions) -> int:
    """Guests still due: for an event, only those who would get something; with --only
    or --where, only those the run is for."""
    if options.only or campaign.where:
        due = journal.due_list(campaign.id, options.retry_failed, campaign.event_run)
        count = 0
        for recipient, suppressed in campaign.recipients():
            if suppressed or recipient.address.key in options.only \
                    or not _wanted(campaign, recipient, options):
                continue
            found = due.find(recipient.line, recipient.address.key)
            if found is not None and campaign.plan(*found, options.retry_failed) is not None:
                count += 1
        return count
    if campaign.event is None:
        return journal.remaining(campaign.id, options.retry_failed)
    due = journal.due_list(campaign.id, options.retry_failed, campaign.event_run)
    return sum(1 for state, held in zip(due.states, due.held, strict=True)
               if campaign.plan(STATES[state], None if held < 0 else held,
                                options.retry_failed) is not None)


def _name_removed(removed: list[tuple[str, str, str]], options: SendOptions,
                  reporter: Reporter) -> None:
    if not removed:
        return
    names = ", ".join(email for _, email, _ in removed[:20])
    more = f" and {len(removed) - 20} more" if len(removed) > 20 else ""
    what = "each is sent a cancellation (--cancel-removed)" if options.cancel_removed else \
        "--cancel-removed sends each a cancellation"
    one = len(removed) == 1
    reporter.line(f"{len(removed)} guest{'' if one else 's'} hold{'s' if one else ''} this "
                  f"invitation but {'is' if one else 'are'} no longer on the list: "
                  f"{names}{more}; {what}")


def test_send(campaign: Campaign, to: list[str], recipient_email: str | None,
              options: SendOptions, reporter: Reporter) -> Result:
    """Send the message of one real recipient only to the test addresses."""
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
    messages = [campaign.build(chosen, to=box) for box in boxes]
    from .pool import NullRecorder

    pool = _pool(campaign, NullRecorder(), options, reporter.outcome)
    reporter.start(len(messages))
    try:
        stats = _deliver(pool, iter(messages), reporter)
    finally:
        reporter.stop()
    result = Result(stats)
    reporter.rejected(stats)
    if not reporter.quiet or result.exit_code:
        click.echo(f"test message for {chosen.email} (line {chosen.line}) sent to "
                   f"{', '.join(b.address.normalized for b in boxes)}: {stats.sent} sent, "
                   f"{stats.failed} failed, {stats.deferred} deferred")
    return result
