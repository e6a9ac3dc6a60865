"""The types that cross stages, in one place: every stage imports this module and the
stages below it, never one above (see the module list in README.md).

recipients → Recipient, Plain, Problem; render → Rendered; plan → Decision (State, Kind,
Skip); campaign → Outgoing; inbox sources → Item;
smtp/pool → Outcome; journal and report → Stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from .address import Address


class State(StrEnum):
    """A guest's state in a campaign (the journal's ``deliveries.state``; its CHECK
    constraint is generated from this enum)."""

    QUEUED = "queued"
    SENDING = "sending"  # written before the transaction: after a crash, sent again
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"  # on a suppression list, or unsubscribed
    BOUNCED = "bounced"  # the inbox read a hard bounce


class Kind(StrEnum):
    """What a guest is sent: for an event, what brings their calendar up to date."""

    INVITATION = "invitation"
    UPDATE = "update"
    CANCELLATION = "cancellation"
    REMINDER = "reminder"  # a sub-template of an event's folder: sent once
    MESSAGE = "message"  # a campaign without an event


class Skip(StrEnum):
    """Why the plan gives a guest nothing in this run."""

    SENT_BEFORE = "sent before"
    UP_TO_DATE = "holds the current version"
    NOT_HELD = "holds nothing to cancel"
    FAILED = "failed before (--retry-failed tries again)"
    EXPIRED = "expired (deferred longer than MAILER_RETRY_FOR)"
    SUPPRESSED = "suppressed"
    BOUNCED = "bounced"
    EXCLUDED = "excluded by --where"
    NOT_ONLY = "not named by --only"


@dataclass(slots=True)
class Recipient:
    """One checked recipient of a list; ``fields`` holds every column by its header."""

    line: int
    address: Address
    name: str
    language: str | None
    headers: Sequence[str] = ()
    row: Sequence[str] = ()
    multiline: tuple[str, ...] = ()  # headers of the columns whose value holds a line break

    @property
    def email(self) -> str:
        return self.address.normalized

    @property
    def fields(self) -> dict[str, str]:
        """Every column by its header (made when asked: a check of a list without a
        template never needs it)."""
        return dict(zip(self.headers, self.row, strict=True))


@dataclass(frozen=True, slots=True)
class Plain:
    """Valid, unique recipients on consecutive lines from ``line``, read in bulk (a check
    that needs no Recipient objects): their identity keys and, when the list has a
    language column, their languages."""

    line: int
    keys: list[str]
    languages: list[str | None] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """An error or a warning about one record of the list."""

    path: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.path}:{self.line}: {kind}{self.message}"


@dataclass(slots=True)
class Rendered:
    """What the templates made for one recipient."""

    subject: str
    text: str | None
    html: str | None
    lang: str
    unsubscribe_url: str | None = None


@dataclass(slots=True)
class Outgoing:
    """One message ready for SMTP (or the outbox).

    ``data`` is the message as a file holds it (CRLF line ends); ``wire`` is what follows
    the server's 354: the same bytes dot-stuffed and ended with ``.``, made once when the
    message is built, so a retry resends exactly the same bytes."""

    line: int
    key: str  # the recipient's case-folded address: identity in the journal
    email: str  # where the message goes (normalised): the recipient, or a test address
    name: str
    envelope_from: str
    envelope_to: str
    message_id: str
    data: bytes
    wire: bytes
    subject: str = ""
    lang: str = ""
    rendered: Rendered | None = None
    attempt: int = 0  # temporary failures so far in this run
    prior: State | None = None  # the journal state before this run touched it
    kind: Kind = Kind.MESSAGE
    holds: tuple[str, int, bool] | None = None  # (event UID, SEQUENCE, cancelled) once sent
    files: tuple[tuple[str, str], ...] = ()  # attached files: (name, file URI)
    archive: str | None = None  # a second envelope recipient: the archive copy (no header)


class Outcome(StrEnum):
    """What became of one message in a run."""

    SENT = "sent"
    FAILED = "failed"  # permanent (5xx): not retried
    DEFERRED = "deferred"  # temporary (4xx, drop, timeout) after the retries
    UNCONFIRMED = "unconfirmed"  # no reply to the end of the message: may have arrived;
    # the guest stays ``sending`` in the journal and the next run sends it again


class Mark(IntEnum):
    """What the journal's sync does with a guest of the list who is sent nothing."""

    ON_LIST = 0  # a guest of the campaign (sent before, up to date, ...)
    SUPPRESSED = 1  # recorded as suppressed
    EXCLUDED = 2  # left out by --where: not the campaign's to send, never queued


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan's word on one guest: what to send (``kind``), or why nothing (``skip``)."""

    kind: Kind | None
    skip: Skip | None = None
    state: State | None = None  # the guest's state before this run (None: new)
    held: int | None = None  # the event version the guest's calendar holds


@dataclass(frozen=True, slots=True)
class Item:
    """A message of a mailbox: its identity there (so it is read once) and its bytes."""

    ident: str
    data: bytes
    place: str = ""  # where it is, to name it (an IMAP UID, a file); default: ident


@dataclass(frozen=True)
class EventRun:
    """The event of a campaign in this run: its UID, the SEQUENCE sent, whether it is
    cancelled, and whether this campaign keeps calendars up to date (the template that
    holds event.toml) or sends each guest once (a sub-template: a reminder)."""

    uid: str
    sequence: int
    cancelled: bool
    keeps_calendars: bool


Named = tuple[str, int | None, str]  # (address, code, reply)


@dataclass
class Stats:
    """The outcomes of one run, and every address that needs a human's eye."""

    sent: int = 0
    failed: list[Named] = field(default_factory=list)
    deferred: list[Named] = field(default_factory=list)
    unconfirmed: list[Named] = field(default_factory=list)
    expired: list[tuple[str, str]] = field(default_factory=list)  # deferred too long: failed
    archive_refused: list[Named] = field(default_factory=list)  # the guest's went out
    stopped: str | None = None  # why the run stopped early, if it did
    quota: bool = False  # the daily quota ended the run (not a failure: exit 0)
    closed: bool = False  # the send window closed (not a failure: exit 0)

    def count(self, outcome: Outcome, named: Named) -> None:
        if outcome is Outcome.SENT:
            self.sent += 1
        elif outcome is Outcome.FAILED:
            self.failed.append(named)
        elif outcome is Outcome.DEFERRED:
            self.deferred.append(named)
        else:
            self.unconfirmed.append(named)
