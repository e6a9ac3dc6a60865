"""Read answers back from the organiser's mailbox: calendar replies, bounces, auto-replies
and unsubscribe requests, recorded in the journal. Read-only: nothing in the mailbox is
deleted, moved or flagged.

Sources: a local Maildir or mbox file (exports, tests), or IMAP (``EXAMINE`` and
``BODY.PEEK``). Each message is classified in this order, so that a bounce of an
invitation is never taken for an answer: a delivery status notification (RFC 3464, or a
non-standard bounce recognised by flufl.bounce), an auto-reply, a calendar REPLY
(RFC 5546) in any MIME position, an unsubscribe request, anything else.
"""

from __future__ import annotations

import email.utils
import hashlib
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path

from .address import AddressError, check_address
from .errors import InputError
from .journal import Journal
from .models import Item

PARTSTATS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentative"}
_AUTO_SUBJECT = re.compile(
    r"^\s*(fraværsmelding|fravær|autosvar|automatisk svar|out of office|automatic reply|"
    r"auto(matic)?[- ]?reply|abwesenheitsnotiz|frånvaro)", re.I)
_MAILTO = re.compile(r"mailto:(.+)", re.I)


@dataclass(frozen=True)
class Answer:
    uid: str
    email: str
    answer: str  # accepted, declined, tentative
    at: str


@dataclass(frozen=True)
class Bounce:
    email: str
    hard: bool
    status: str
    message_id: str | None


@dataclass
class Finding:
    """What one message is: ``kind`` answer, bounce, auto-reply, unsubscribe or other."""

    kind: str
    answers: list[Answer] = field(default_factory=list)
    bounces: list[Bounce] = field(default_factory=list)
    sender: str | None = None


# Sources ---------------------------------------------------------------------------------

def _ident(data: bytes) -> str:
    """A message's identity in a file source: its Message-ID, else a digest of its bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = re.search(rb"(?im)^message-id:\s*(<[^>\r\n]+>)", head)
    if found:
        return found.group(1).decode("ascii", "replace")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def maildir_items(path: Path) -> Iterator[Item]:
    """The messages of a Maildir (new and cur), read without touching a flag or a file.
    A folder that is not a Maildir is an InputError at once, before anything is read."""
    if not (path / "cur").is_dir() and not (path / "new").is_dir():
        raise InputError(f"{path}: not a Maildir (no cur/ or new/ folder)")
    box = mailbox.Maildir(path, factory=None, create=False)
    return (Item(_ident(data), data) for data in map(box.get_bytes, sorted(box.iterkeys())))


def mbox_items(path: Path) -> Iterator[Item]:
    """The messages of an mbox file (an InputError at once when there is none)."""
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file")
    return _mbox(mailbox.mbox(path, factory=None, create=False))


def _mbox(box: mailbox.mbox) -> Iterator[Item]:
    try:
        for key in box.iterkeys():
            data = box.get_bytes(key)
            yield Item(_ident(data), data)
    finally:
        box.close()


# Classification --------------------------------------------------------------------------

def _addresses(values: list[str]) -> list[str]:
    found = []
    for _, address in email.utils.getaddresses(values):
        try:
            found.append(check_address(address).key)
        except AddressError:
            continue
    return found


def _is_auto_reply(msg: Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return True
    if msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.match(str(msg.get("Subject", ""))))


def _calendar_parts(msg: Message) -> Iterator[bytes]:
    for part in msg.walk():
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if kind in ("text/calendar", "application/ics") or name.endswith(".ics"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                yield payload


def _replies(msg: Message) -> list[Answer]:
    import icalendar

    found: dict[tuple[str, str], Answer] = {}
    for data in _calendar_parts(msg):
        try:
            cal = icalendar.Calendar.from_ical(data)
        except ValueError:
            continue
        if str(cal.get("method", "")).upper() != "REPLY":
            continue
        for event in cal.walk("VEVENT"):
            uid = str(event.get("uid", ""))
            attendees = event.get("attendee")
            if not uid or attendees is None:
                continue
            stamp = event.get("dtstamp")
            at = stamp.dt.astimezone(UTC).isoformat(timespec="seconds") if stamp else \
                datetime.now(UTC).isoformat(timespec="seconds")
            for attendee in attendees if isinstance(attendees, list) else [attendees]:
                state = PARTSTATS.get(str(attendee.params.get("PARTSTAT", "")).upper())
                match = _MAILTO.match(str(attendee))
                if state is None or match is None:
                    continue
                try:
                    address = check_address(match.group(1)).key
                except AddressError:
                    continue
                found[(uid, address)] = Answer(uid, address, state, at)
    return list(found.values())


def _dsn(msg: Message) -> list[Bounce] | None:
    """The recipients of an RFC 3464 delivery status notification, or None if it is not
    one."""
    if msg.get_content_type() != "multipart/report" or \
            str(msg.get_param("report-type", "")).lower() != "delivery-status":
        return None
    original = None
    status_blocks: list[Message] = []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):  # the email package parses it into blocks
                status_blocks = [p for p in payload if isinstance(p, Message)]
        elif kind in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = inner[0].get("Message-ID")
            elif isinstance(inner, str):
                found = re.search(r"(?im)^message-id:\s*(<[^>\r\n]+>)", inner)
                original = found.group(1) if found else None
    bounces = []
    for block in status_blocks[1:]:  # the first holds the per-message fields
        recipient = str(block.get("Final-Recipient", "") or block.get("Original-Recipient", ""))
        action = str(block.get("Action", "")).strip().lower()
        status = str(block.get("Status", "")).strip()
        address = recipient.split(";", 1)[-1].strip()
        try:
            key = check_address(address).key
        except AddressError:
            continue
        if action == "failed":
            bounces.append(Bounce(key, status.startswith("5"), status,
                                  str(original).strip() if original else None))
        elif action == "delayed":
            bounces.append(Bounce(key, False, status or "4.0.0",
                                  str(original).strip() if original else None))
    return bounces


def _flufl(msg: EmailMessage) -> list[Bounce]:
    """Non-standard bounces (Exchange NDRs, qmail, old Exim, ...) by flufl.bounce."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector that chokes on a strange message: not a bounce
        return []
    found = []
    for hard, addresses in ((True, permanent), (False, temporary - permanent)):
        for raw in addresses:
            try:
                key = check_address(raw.decode("utf-8", "replace")).key
            except AddressError:
                continue
            found.append(Bounce(key, hard, "5.0.0" if hard else "4.0.0", None))
    return found


def classify(data: bytes, unsubscribe_to: str | None = None) -> Finding:
    """What one message is (see the module's docstring for the order)."""
    msg = message_from_bytes(data, policy=policy.compat32)
    dsn = _dsn(msg)
    if dsn is not None:
        return Finding("bounce", bounces=dsn)
    sender = next(iter(_addresses([str(msg.get("From", ""))])), None)
    looks_bounced = (sender is not None and sender.split("@")[0] in (
        "mailer-daemon", "postmaster")) or str(msg.get("Return-Path", "")).strip() == "<>"
    if looks_bounced:
        typed = message_from_bytes(data, policy=policy.default)
        assert isinstance(typed, EmailMessage)
        found = _flufl(typed)
        if found:
            return Finding("bounce", bounces=found)
    if _is_auto_reply(msg):
        return Finding("auto-reply", sender=sender)
    answers = _replies(msg)
    if answers:
        return Finding("answer", answers=answers, sender=sender)
    if unsubscribe_to is not None:
        to = _addresses([str(v) for v in msg.get_all("To", []) + msg.get_all("Delivered-To", [])
                         + msg.get_all("X-Original-To", [])])
        if unsubscribe_to in to:
            return Finding("unsubscribe", sender=sender)
    return Finding("other", sender=sender)


# Tally ----------------------------------------------------------------------------------

@dataclass
class Tally:
    """What a run of ``mailer inbox`` read, and what it could not place."""

    read: int = 0
    answers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTSTATS.values(), 0))
    hard: int = 0
    soft: int = 0
    auto_replies: int = 0
    unsubscribes: int = 0
    other: int = 0
    unplaced: list[str] = field(default_factory=list)  # answers or bounces nobody was sent

    def summary(self, source: str) -> str:
        n_answers = sum(self.answers.values())
        answers = ", ".join(f"{count} {name}" for name, count in self.answers.items())

        def plural(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        return (f"inbox: {self.read} read: {plural(n_answers, 'answer', 'answers')} "
                f"({answers}), {plural(self.hard + self.soft, 'bounce', 'bounces')} "
                f"({self.hard} hard, {self.soft} soft), "
                f"{plural(self.auto_replies, 'auto-reply', 'auto-replies')}, "
                f"{plural(self.unsubscribes, 'unsubscribe', 'unsubscribes')}, {self.other} other"
                + (f", {len(self.unplaced)} not recorded (named above)" if self.unplaced else "")
                + f" ({source})")


# One run of ``mailer inbox`` ------------------------------------------------------------

def read(journal: Journal, source: str, items: Iterator[Item], *, unsubscribe_to: str | None,
         dry_run: bool, say: Callable[[str], None], quiet: bool = False) -> Tally:
    """Classify every message not read before and record what it says, in one
    transaction (rolled back by ``dry_run``, which only says what it would record)."""
    tally = Tally()
    db = journal.db
    db.execute("BEGIN IMMEDIATE")
    try:
        for item in items:
            if journal.seen(source, item.ident):
                continue
            journal.mark_seen(source, item.ident)
            tally.read += 1
            finding = classify(item.data, unsubscribe_to)
            _record(journal, finding, tally, dry_run, say, (lambda _: None) if quiet else say)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("ROLLBACK" if dry_run else "COMMIT")
    return tally


def _record(journal: Journal, finding: Finding, tally: Tally, dry_run: bool,
            say: Callable[[str], None], tell: Callable[[str], None]) -> None:
    """Record one finding; ``say`` what needs a human (what could not be placed), ``tell``
    the rest (silent with --quiet)."""
    would = "would record: " if dry_run else ""
    if finding.kind == "answer":
        for answer in finding.answers:
            if journal.record_answer(answer.uid, answer.email, answer.answer, answer.at):
                tally.answers[answer.answer] += 1
                if dry_run:
                    tell(f"{would}{answer.email} {answer.answer} ({answer.uid})")
            else:
                tally.unplaced.append(answer.email)
                say(f"not recorded: an answer from {answer.email} ({answer.answer}) to "
                    f"{answer.uid}, which this journal did not send them")
    elif finding.kind == "bounce":
        for bounce in finding.bounces:
            if not bounce.hard:
                tally.soft += 1
                continue
            tally.hard += 1
            if journal.record_bounce(bounce.email, bounce.message_id, bounce.status):
                tell(f"{would}bounced: {bounce.email} ({bounce.status}); never mailed again")
            else:
                tally.unplaced.append(bounce.email)
                say(f"not recorded: a bounce for {bounce.email} ({bounce.status}), whom "
                    f"this journal sent nothing")
    elif finding.kind == "auto-reply":
        tally.auto_replies += 1
    elif finding.kind == "unsubscribe" and finding.sender is not None:
        tally.unsubscribes += 1
        journal.suppress(finding.sender, finding.sender, "unsubscribe")
        tell(f"{would}unsubscribed: {finding.sender}; never mailed again")
    else:
        tally.other += 1
