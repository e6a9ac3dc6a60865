"""Read answers back from the organiser's mailbox: calendar replies, bounces, auto-replies
and unsubscribe requests, recorded in the journal. Read-only: nothing in the mailbox is
deleted, moved or flagged.

Sources: a local Maildir or mbox file (exports, tests), or IMAP (``connections.imap``).
Each message is classified in this order, so that a bounce of an invitation is never taken
for an answer: a delivery status notification (RFC 3464, or a non-standard bounce
recognised by flufl.bounce), an auto-reply (unless it holds a calendar REPLY), a calendar
REPLY (RFC 5546) in any MIME position, an unsubscribe request, anything else.

The mailbox is written to by strangers, so:

- **Each message on its own, within limits.** At most ``MAX_BYTES`` of a message are read
  (IMAP fetches only those), at most ``MAX_PARTS`` MIME parts and ``MAX_HEADER``
  characters of an address header are looked at, and classifying one may take
  ``SECONDS``. A message that cannot be understood is counted, named once by its place and
  Message-ID, marked as read and never stops the rest.
- **Short transactions.** Messages are classified before the journal's write lock is
  taken, and recorded ``BATCH`` at a time, so a ``send`` on the same journal never waits
  long.
- **Nothing forged changes a guest.** A bounce counts only through a Message-ID that this
  journal made (a MAC keyed by its secret) for the bounced address; a calendar answer only
  from the guest (the ATTENDEE, or a SENT-BY who is a guest too), one ATTENDEE, a DTSTAMP
  no later than the moment it is read, never replacing an answer to a newer version; an
  unsubscribe by mail only when the organiser's own mail server vouches for the sender
  (an ``Authentication-Results`` header of ``MAILER_INBOX_TRUSTED_AUTHSERV`` saying
  ``dmarc=pass``, or ``dkim=pass`` aligned with the From). What is not recorded is named,
  with the reason.
"""

from __future__ import annotations

import email.utils
import hashlib
import mailbox
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path

from .address import AddressError, check_address
from .connections.config import MESSAGE_LIMIT
from .errors import InputError
from .journal import Journal
from .limits import TooSlow, within
from .models import Item
from .rsvp import ANSWERS, COMMENT_LIMIT, LinkAnswer, find, verifies
from .text import printable

PARTSTATS = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentative"}
_AUTO_SUBJECT = re.compile(
    r"^\s*(fraværsmelding|fravær|autosvar|automatisk svar|out of office|automatic reply|"
    r"auto(matic)?[- ]?reply|abwesenheitsnotiz|frånvaro)", re.I)
_MAILTO = re.compile(r"mailto:(.+)", re.I)
_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^<>\s]{1,250}>)")
_MULTIPART = re.compile(rb"(?i)content-type:[ \t]*multipart/")

MAX_BYTES = MESSAGE_LIMIT  # what is read of one message: answers and bounces are small
MAX_PARTS = 100  # MIME containers in a message (a message nested 1,000 deep is refused)
MAX_HEADER = 4096  # characters of an address header that are parsed
SECONDS = 5.0  # to classify one message
BATCH = 100  # messages recorded per transaction


@dataclass(frozen=True)
class Answer:
    uid: str
    email: str
    answer: str  # accepted, declined, tentative
    at: str
    sequence: int = 0
    sent_by: str | None = None  # a delegate who answered for the guest (SENT-BY)
    comment: str | None = None  # the REPLY's COMMENT ("respond with comments")


@dataclass(frozen=True)
class Bounce:
    email: str  # the bounced address (Original-Recipient when the DSN gives one)
    hard: bool
    status: str
    message_ids: tuple[str, ...] = ()  # every Message-ID the bounce returns


@dataclass
class Finding:
    """What one message is: ``kind`` answer, link (an answer link's message), bounce,
    auto-reply, unsubscribe, other or unreadable (``why``)."""

    kind: str
    answers: list[Answer] = field(default_factory=list)
    link: LinkAnswer | None = None
    at: str = ""  # when a link answer was written (its Date, never later than now)
    bounces: list[Bounce] = field(default_factory=list)
    sender: str | None = None
    vouched: str | None = None  # pass / fail: the trusted server's word on the From
    why: str = ""  # why it is unreadable, or why its answer cannot count


# Sources ---------------------------------------------------------------------------------

def _ident(data: bytes) -> str:
    """A message's identity in a file source: its Message-ID, else a digest of its bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    if found:
        return found.group(1).decode("ascii", "replace")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def maildir_items(path: Path) -> Iterator[Item]:
    """The messages of a Maildir (new/ and cur/, either may be missing), read without
    touching a flag or a file; a file that vanishes while it is read (another client
    moved it) is passed over. A folder that is neither is an InputError at once."""
    folders = [path / sub for sub in ("new", "cur") if (path / sub).is_dir()]
    if not folders:
        raise InputError(f"{path}: not a Maildir (no cur/ or new/ folder)")
    names = sorted(f for folder in folders for f in os.listdir(folder)
                   if not f.startswith("."))

    def read() -> Iterator[Item]:
        for name in names:
            for folder in folders:
                try:
                    with open(folder / name, "rb") as handle:
                        data = handle.read(MAX_BYTES)
                except (FileNotFoundError, IsADirectoryError):
                    continue
                yield Item(_ident(data), data, f"file {folder.name}/{name}")
                break

    return read()


def mbox_items(path: Path) -> Iterator[Item]:
    """The messages of an mbox file (an InputError at once when there is none)."""
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file")
    return _mbox(mailbox.mbox(path, factory=None, create=False))


def _mbox(box: mailbox.mbox) -> Iterator[Item]:
    try:
        for key in box.iterkeys():
            with box.get_file(key) as handle:
                data = handle.read(MAX_BYTES)
            yield Item(_ident(data), data, f"number {int(key) + 1} of the mbox")
    finally:
        box.close()


# Classification --------------------------------------------------------------------------

def _addresses(values: list[str]) -> list[str]:
    found = []
    for _, address in email.utils.getaddresses([v[:MAX_HEADER] for v in values]):
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


def _stamp(value: object, now: datetime) -> str:
    """A DTSTAMP as the journal keeps it: a date alone is its midnight in UTC, anything
    unreadable or in the future (it would lock the answer) is the moment it was read."""
    moment: datetime | None = None
    try:
        found = getattr(value, "dt", None)
    except Exception:  # icalendar's broken property: a DTSTAMP that is not a time
        found = None
    if isinstance(found, datetime):
        moment = found if found.tzinfo is not None else found.replace(tzinfo=UTC)
    elif isinstance(found, date):
        moment = datetime(found.year, found.month, found.day, tzinfo=UTC)
    if moment is None or moment > now:
        moment = now
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _mailto(value: object) -> str | None:
    match = _MAILTO.match(str(value or ""))
    if match is None:
        return None
    try:
        return check_address(match.group(1)).key
    except AddressError:
        return None


def _replies(msg: Message) -> tuple[list[Answer], str]:
    """The answers of every calendar REPLY in a message (one ATTENDEE each), and why a
    REPLY found could not count (empty when none)."""
    import icalendar

    now = datetime.now(UTC)
    found: dict[tuple[str, str], Answer] = {}
    why = ""
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
                why = why or "a REPLY without UID or ATTENDEE"
                continue
            attendees = attendees if isinstance(attendees, list) else [attendees]
            if len(attendees) != 1:
                why = f"a REPLY with {len(attendees)} ATTENDEEs (one answers for one guest)"
                continue
            attendee = attendees[0]
            state = PARTSTATS.get(str(attendee.params.get("PARTSTAT", "")).upper())
            address = _mailto(attendee)
            if state is None or address is None:
                why = f"a REPLY whose ATTENDEE cannot be read ({printable(str(attendee), 80)})"
                continue
            try:
                sequence = int(str(event.get("sequence", 0)))
            except ValueError:
                sequence = 0
            found[(uid, address)] = Answer(uid, address, state, _stamp(event.get("dtstamp"), now),
                                           sequence, _mailto(attendee.params.get("SENT-BY")),
                                           _reply_comment(event.get("comment")))
    return list(found.values()), why


def _reply_comment(value: object) -> str | None:
    """A REPLY's COMMENT (Outlook's "respond with comments"), within the comment limit."""
    values = value if isinstance(value, list) else [value] if value is not None else []
    text = "\n".join(str(v) for v in values).strip()
    if not text:
        return None
    text = printable(text, COMMENT_LIMIT - 1)
    return text


def _text(msg: Message) -> str | None:
    """The text of a message as its writer typed it: the first text/plain part that is
    no attachment, else the first text/html part as text."""
    html = None
    for part in msg.walk():
        if part.is_multipart() or part.get_filename() or \
                str(part.get("Content-Disposition", "")).lower().startswith("attachment"):
            continue
        kind = part.get_content_type()
        if kind not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("utf-8", "replace")
        if kind == "text/plain":
            return text
        html = html if html is not None else text
    if html is None:
        return None
    from .render import html_to_text

    return html_to_text(html)


def _written(msg: Message, now: datetime) -> str:
    """When a message was written: its Date, never later than now (a date in the future
    would lock the answer)."""
    try:
        moment = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        moment = None
    if moment is None or moment.tzinfo is None or moment > now:
        moment = now
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _returned_ids(msg: Message, data: bytes) -> tuple[str, ...]:
    """Every Message-ID a bounce returns (of the message it is about), not its own."""
    own = str(msg.get("Message-ID", "")).strip()
    body = data.split(b"\r\n\r\n", 1)[-1] if b"\r\n\r\n" in data else \
        data.split(b"\n\n", 1)[-1]
    found = [m.decode("ascii", "replace") for m in _MESSAGE_ID.findall(body)]
    return tuple(dict.fromkeys(i for i in found if i != own))


def _dsn(msg: Message, data: bytes) -> list[Bounce] | None:
    """The recipients of an RFC 3464 delivery status notification, or None if it is not
    one."""
    if msg.get_content_type() != "multipart/report" or \
            str(msg.get_param("report-type", "")).lower() != "delivery-status":
        return None
    status_blocks: list[Message] = []
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            if isinstance(payload, list):  # the email package parses it into blocks
                status_blocks = [p for p in payload if isinstance(p, Message)]
    returned = _returned_ids(msg, data)
    bounces = []
    for block in status_blocks[1:]:  # the first holds the per-message fields
        recipient = str(block.get("Original-Recipient", "") or block.get("Final-Recipient", ""))
        action = str(block.get("Action", "")).strip().lower()
        status = printable(str(block.get("Status", "")).strip(), 60)
        try:
            key = check_address(recipient.split(";", 1)[-1].strip()).key
        except AddressError:
            continue
        if action == "failed":
            bounces.append(Bounce(key, status.startswith("5"), status, returned))
        elif action == "delayed":
            bounces.append(Bounce(key, False, status or "4.0.0", returned))
    return bounces


def _flufl(msg: EmailMessage, data: bytes) -> list[Bounce]:
    """Non-standard bounces (Exchange NDRs, qmail, old Exim, ...) by flufl.bounce."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector that chokes on a strange message: not a bounce
        return []
    returned = _returned_ids(msg, data)
    found = []
    for hard, addresses in ((True, permanent), (False, temporary - permanent)):
        for raw in addresses:
            try:
                key = check_address(raw.decode("utf-8", "replace")).key
            except AddressError:
                continue
            found.append(Bounce(key, hard, "5.0.0" if hard else "4.0.0", returned))
    return found


def vouch(msg: Message, sender: str | None, authserv: str | None) -> str | None:
    """What the organiser's own mail server (``authserv``, its authserv-id) says of the
    From: ``pass`` (dmarc=pass, or dkim=pass for the From's domain), ``fail``
    (dmarc=fail), or None (no such header, nothing said, or no server trusted). Only the
    first such header counts: the server writes it above anything the sender wrote."""
    if not authserv or sender is None:
        return None
    domain = sender.rpartition("@")[2]
    for header in msg.get_all("Authentication-Results", []):
        text = re.sub(r"\([^()]*\)", " ", str(header)[:MAX_HEADER])  # comments out
        parts = [p.strip() for p in text.split(";")]
        if not parts or (parts[0].split()[:1] != [authserv.lower()] and \
                parts[0].split()[:1] != [authserv]):
            continue
        results = [p.lower().split() for p in parts[1:] if p]
        for words in results:
            if words and words[0] == "dmarc=pass":
                return "pass"
            if words and words[0] == "dmarc=fail":
                return "fail"
        for words in results:
            if words and words[0] == "dkim=pass":
                signer = next((w.split("=", 1)[1] for w in words[1:]
                               if w.startswith(("header.d=", "header.i="))), "")
                signer = signer.rpartition("@")[2]
                if signer and (domain == signer or domain.endswith("." + signer)):
                    return "pass"
        return None
    return None


def classify(data: bytes, unsubscribe_to: str | None = None,
             authserv: str | None = None) -> Finding:
    """What one message is (see the module's docstring for the order). It may raise on
    a message built to break a parser: ``classify_safely`` is the one to call."""
    if len(_MULTIPART.findall(data)) > MAX_PARTS:
        return Finding("unreadable", why=f"more than {MAX_PARTS} nested MIME parts")
    msg = message_from_bytes(data, policy=policy.compat32)
    dsn = _dsn(msg, data)
    if dsn is not None:
        return Finding("bounce", bounces=dsn)
    sender = next(iter(_addresses([str(msg.get("From", ""))])), None)
    looks_bounced = (sender is not None and sender.split("@")[0] in (
        "mailer-daemon", "postmaster")) or str(msg.get("Return-Path", "")).strip() == "<>"
    if looks_bounced:
        typed = message_from_bytes(data, policy=policy.default)
        assert isinstance(typed, EmailMessage)
        found = _flufl(typed, data)
        if found:
            return Finding("bounce", bounces=found)
    vouched = vouch(msg, sender, authserv)
    answers, why = _replies(msg)  # an answer, even when sent as auto-generated
    if answers or why:
        return Finding("answer", answers=answers, sender=sender, vouched=vouched, why=why)
    text = _text(msg)
    link = find(text) if text is not None else None
    if link is not None:  # an answer link's message (its token is checked when recorded)
        return Finding("link", link=link, sender=sender, at=_written(msg, datetime.now(UTC)))
    if _is_auto_reply(msg):
        return Finding("auto-reply", sender=sender)
    if unsubscribe_to is not None:
        to = _addresses([str(v) for v in msg.get_all("To", []) + msg.get_all("Delivered-To", [])
                         + msg.get_all("X-Original-To", [])])
        if unsubscribe_to in to:
            return Finding("unsubscribe", sender=sender, vouched=vouched)
    return Finding("other", sender=sender)


def classify_safely(data: bytes, unsubscribe_to: str | None = None,
                    authserv: str | None = None) -> Finding:
    """``classify`` within the limits: whatever goes wrong (a parser's recursion, a bad
    date, a header built to be slow) makes the message ``unreadable``, with the reason."""
    try:
        with within(SECONDS):
            return classify(data[:MAX_BYTES], unsubscribe_to, authserv)
    except TooSlow:
        return Finding("unreadable", why=f"not understood within {SECONDS:g} s")
    except RecursionError:
        return Finding("unreadable", why="nested too deep to read")
    except Exception as exc:  # a message built to break a parser: named, never fatal
        return Finding("unreadable", why=printable(f"{type(exc).__name__}: {exc}", 120))


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
    unreadable: int = 0
    unplaced: Counter[str] = field(default_factory=Counter)  # reason → messages not recorded
    guests: set[tuple[str, str]] = field(default_factory=set)  # (event, guest) answering
    late: int = 0  # answers after the event's deadline
    rsvp_key: bytes = b""  # the key of the answer links' tokens
    events: list[str] | None = None  # the journal's event UIDs, read once a run

    def summary(self, source: str) -> str:
        n_answers = sum(self.answers.values())
        answers = ", ".join(f"{count} {name}" for name, count in self.answers.items())

        def plural(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        unplaced = sum(self.unplaced.values())
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.unplaced.items()))
        who = f" from {plural(len(self.guests), 'guest', 'guests')}" if n_answers else ""
        return (f"inbox: {self.read} read: {plural(n_answers, 'answer', 'answers')}{who} "
                f"({answers}), {plural(self.hard + self.soft, 'bounce', 'bounces')} "
                f"({self.hard} hard, {self.soft} soft), "
                f"{plural(self.auto_replies, 'auto-reply', 'auto-replies')}, "
                f"{plural(self.unsubscribes, 'unsubscribe', 'unsubscribes')}, {self.other} other"
                + (f", {self.late} late" if self.late else "")
                + (f", {self.unreadable} unreadable" if self.unreadable else "")
                + (f", {unplaced} not recorded: {why} (named above)" if unplaced else "")
                + f" ({source})")


# One run of ``mailer inbox`` ------------------------------------------------------------

def read(journal: Journal, source: str, items: Iterator[Item], *, unsubscribe_to: str | None,
         dry_run: bool, say: Callable[[str], None], quiet: bool = False,
         authserv: str | None = None, rsvp_key: bytes | None = None) -> Tally:
    """Classify every message not read before and record what it says, ``BATCH`` messages
    a transaction, each classified before the write lock is taken (``dry_run`` rolls each
    batch back and only says what it would record). ``rsvp_key`` verifies answer links
    (default: the journal's secret)."""
    tally = Tally(rsvp_key=journal.secret if rsvp_key is None else rsvp_key)
    tell = (lambda _: None) if quiet else say
    batch: list[tuple[Item, Finding]] = []
    for item in items:
        if journal.seen(source, item.ident) or any(i.ident == item.ident for i, _ in batch):
            continue
        tally.read += 1
        batch.append((item, classify_safely(item.data, unsubscribe_to, authserv)))
        if len(batch) >= BATCH:
            _write(journal, source, batch, tally, dry_run, say, tell)
    _write(journal, source, batch, tally, dry_run, say, tell)
    return tally


def _write(journal: Journal, source: str, batch: list[tuple[Item, Finding]], tally: Tally,
           dry_run: bool, say: Callable[[str], None], tell: Callable[[str], None]) -> None:
    """Record a batch in one short transaction (rolled back by a dry run) and empty it."""
    if not batch:
        return
    db = journal.db
    db.execute("BEGIN IMMEDIATE")
    try:
        for item, finding in batch:
            journal.mark_seen(source, item.ident)
            _record(journal, item, finding, tally, dry_run, say, tell)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("ROLLBACK" if dry_run else "COMMIT")
    batch.clear()


def _where(item: Item) -> str:
    """A message named once: its place in the source (an IMAP UID, a file) and its
    Message-ID."""
    msgid = _ident(item.data)
    name = f"message {printable(item.place or item.ident, 120)}"
    return name if msgid.startswith("sha256:") or msgid == item.place \
        else f"{name} {printable(msgid, 120)}"


def _record(journal: Journal, item: Item, finding: Finding, tally: Tally, dry_run: bool,
            say: Callable[[str], None], tell: Callable[[str], None]) -> None:
    """Record one finding; ``say`` what needs a human (what could not be placed), ``tell``
    the rest (silent with --quiet)."""
    would = "would record: " if dry_run else ""

    def refuse(reason: str, text: str) -> None:
        tally.unplaced[reason] += 1
        say(f"not recorded ({reason}): {text}")

    if finding.kind == "unreadable":
        tally.unreadable += 1
        say(f"not read: {_where(item)}: {finding.why}")
    elif finding.kind == "answer":
        sender = finding.sender or "an unknown sender"
        if finding.why and not finding.answers:
            refuse("unreadable answer", f"{finding.why}, from {sender}")
        for answer in finding.answers:
            what = f"an answer for {answer.email} ({answer.answer}) from {sender}"
            if finding.vouched == "fail":
                refuse("unverified", f"{what}: the sender failed DMARC at the organiser's "
                                     f"mail server")
                continue
            if finding.sender != answer.email and not (
                    answer.sent_by is not None and answer.sent_by == finding.sender
                    and journal.held(answer.uid, answer.sent_by) is not None):
                refuse("unverified", f"{what}: not sent by the guest")
                continue
            done = journal.record_answer(answer.uid, answer.email, answer.answer, answer.at,
                                         answer.sequence, answer.comment)
            if done == "not invited":
                refuse("not invited", f"{what} to {printable(answer.uid, 120)}, which this "
                                      f"journal did not send them")
            else:
                _answered(tally, done, answer, would, dry_run, tell)
    elif finding.kind == "link" and finding.link is not None:
        _link(journal, finding, finding.link, tally, would, dry_run, refuse, tell)
    elif finding.kind == "bounce":
        for bounce in finding.bounces:
            if not bounce.hard:
                tally.soft += 1
                kept = journal.record_bounce(bounce.email, bounce.message_ids, bounce.status,
                                             hard=False)
                tell(f"soft bounce: {bounce.email} ({bounce.status}); "
                     + ("noted for status, not suppressed" if kept else
                        "not noted: it returns no Message-ID this journal sent them"))
                continue
            tally.hard += 1
            if journal.record_bounce(bounce.email, bounce.message_ids, bounce.status):
                tell(f"{would}bounced: {bounce.email} ({bounce.status}); never mailed again")
            else:
                refuse("unverified bounce", f"a bounce for {bounce.email} ({bounce.status}) "
                                            f"returns no Message-ID this journal sent them")
    elif finding.kind == "auto-reply":
        tally.auto_replies += 1
    elif finding.kind == "unsubscribe" and finding.sender is not None:
        tally.unsubscribes += 1
        if finding.vouched == "pass":
            journal.suppress(finding.sender, finding.sender, "unsubscribe")
            tell(f"{would}unsubscribed: {finding.sender}; never mailed again")
        else:
            journal.note_unverified("unsubscribe", finding.sender, item.ident)
            refuse("unverified", f"an unsubscribe from {finding.sender}: the organiser's "
                                 f"mail server does not vouch for the sender (confirm with "
                                 f"mailer forget or a suppression file; mailer status lists "
                                 f"it)")
    else:
        tally.other += 1



def _answered(tally: Tally, done: str, answer: Answer, would: str, dry_run: bool,
              tell: Callable[[str], None]) -> None:
    """Count an answer the journal took (``recorded``, ``late`` or ``history``)."""
    tally.guests.add((answer.uid, answer.email))
    tally.answers[answer.answer] += 1
    comment = " with a comment" if answer.comment else ""
    if done == "history":
        tell(f"{would}{answer.email} {answer.answer}{comment} to an earlier version of "
             f"{answer.uid}: kept as history")
        return
    if done == "late":
        tally.late += 1
        tell(f"{would}{answer.email} {answer.answer}{comment} ({answer.uid}): after the "
             f"deadline (rsvp_by), marked late")
    elif dry_run or comment:
        tell(f"{would}{answer.email} {answer.answer}{comment} ({answer.uid})")


def _link(journal: Journal, finding: Finding, link: LinkAnswer, tally: Tally, would: str,
          dry_run: bool, refuse: Callable[[str, str], None], tell: Callable[[str], None]
          ) -> None:
    """An answer link's message: it counts for the guest its token names, whoever sent
    it, when the token's MAC verifies for one of the journal's events."""
    sender = finding.sender or "an unknown sender"
    named = printable(link.guest, 120)
    what = f"an answer link for {named} ({printable(link.answer, 20)}) from {sender}"
    try:
        key = check_address(link.guest).key
    except AddressError:
        key = ""
    if tally.events is None:
        tally.events = journal.event_uids()
    uid = next((u for u in tally.events
                if key and verifies(tally.rsvp_key, u, key, link.answer, link.mac)), None)
    if uid is None:
        refuse("forged answer link", f"{what}: its token does not verify (edited, or made "
                                     f"for another guest or answer)")
        return
    held = journal.held(uid, key)
    if held is None:
        refuse("unknown guest", f"{what}: {named} holds no invitation to "
                                f"{printable(uid, 120)} in this journal")
        return
    answer = Answer(uid, key, ANSWERS[link.answer], finding.at, held, comment=link.comment)
    done = journal.record_answer(uid, key, answer.answer, answer.at, held, link.comment)
    if done == "not invited":  # held a moment ago: cannot happen inside the transaction
        refuse("unknown guest", f"{what}: not a guest of {printable(uid, 120)}")
        return
    via = "" if finding.sender == key else f" (sent by {sender})"
    if via and done != "late":
        tell(f"{would}{key} {answer.answer} by answer link{via}")
    _answered(tally, done, answer, would, dry_run, tell)
