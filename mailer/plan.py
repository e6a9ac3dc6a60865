"""The plan: what each guest gets in this run, and why not. One rule (``decide``) that the
real run, the dry run, the remaining count and ``status`` all follow, so they cannot
disagree.

``Knowledge`` is what the journal knows that the rule needs (the guest's state in this
campaign, the version of the event their calendar holds, suppressions, bounces and
answers), read before the list is; the plan never writes. The list is read once, by the
pass in ``Campaign.check``, which asks the plan about each guest as it comes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .models import Decision, EventRun, Kind, Recipient, Skip, State

if TYPE_CHECKING:
    from .journal import Journal


def kind_for(event: EventRun | None, held: int | None) -> Kind | Skip:
    """What a guest who holds version ``held`` of the event (None: none) gets, or why
    nothing: the rules that keep every calendar up to date."""
    if event is None:
        return Kind.MESSAGE
    if event.cancelled:
        return Kind.CANCELLATION if held is not None else Skip.NOT_HELD
    if held is None:
        return Kind.INVITATION
    if held < event.sequence:
        return Kind.UPDATE
    return Skip.UP_TO_DATE if event.keeps_calendars else Kind.REMINDER


SERVICE = (Kind.UPDATE, Kind.CANCELLATION)  # what a guest who unsubscribed still gets


def decide(state: State | None, held: int | None, *, event: EventRun | None,
           suppressed: bool = False, unsubscribed: bool = False, matches: bool = True,
           retry_failed: bool = False, expired: bool = False, only: bool | None = None
           ) -> Decision:
    """The one rule: what a guest in journal ``state`` (None: new to the campaign) who
    holds event version ``held`` gets in this run. ``only`` is None without --only, else
    whether --only names the guest (it sends, or sends again, whatever was sent).
    ``suppressed``: never mail (a suppression file, a bounce); ``unsubscribed`` (by
    mail): nothing but a service message, the update or cancellation of an event the
    guest's calendar holds (else that calendar keeps a wrong or cancelled event)."""
    def skip(why: Skip) -> Decision:
        return Decision(None, why, state, held)

    if only is False:
        return skip(Skip.NOT_ONLY)
    if state is State.BOUNCED:
        return skip(Skip.BOUNCED)
    if suppressed:
        return skip(Skip.SUPPRESSED)
    if not matches:
        return skip(Skip.EXCLUDED)
    if state is State.FAILED and not retry_failed and not only:
        return skip(Skip.FAILED)
    if state is State.DEFERRED and expired:
        return skip(Skip.EXPIRED)
    kind = kind_for(event, held)
    if only:  # sent again, as the campaign sends it
        if isinstance(kind, Skip):
            kind = Kind.INVITATION if event is not None and event.keeps_calendars \
                else Kind.REMINDER if event is not None else Kind.MESSAGE
        return Decision(kind, None, state, held)
    if state is State.SENT and (event is None or not event.keeps_calendars):
        return skip(Skip.SENT_BEFORE)
    if isinstance(kind, Skip):
        return skip(kind)
    if unsubscribed and kind not in SERVICE:
        return skip(Skip.SUPPRESSED)
    return Decision(kind, None, state, held)


@dataclass
class Knowledge:
    """What the journal knows, for the plan (empty without a journal: a first run, a dry
    run or validate before anything was sent)."""

    campaign: str
    event: EventRun | None = None
    suppressed: set[str] = field(default_factory=set)  # bounces, unsubscribes (journal)
    unsubscribed: set[str] = field(default_factory=set)  # of those, the unsubscribes
    bounced: set[str] = field(default_factory=set)
    answers: dict[str, str] = field(default_factory=dict)  # key → answer to the event
    sequence: int | None = None  # the event version this run sends
    versions: dict[int, dict[str, str]] = field(default_factory=dict)
    expiry: str = ""  # a deferred guest first tried before this has expired
    secret: bytes = b""  # the journal's (see message.message_id)
    untracked: bool = False  # the event is not in the journal yet
    journal: Journal | None = None  # asked guest by guest (None: nobody is known)

    def guest(self, key: str) -> tuple[State | None, int | None, bool]:
        """(state in this campaign, event version held, expired) of one guest."""
        journal = self.journal
        if journal is None:
            return None, None, False
        found = journal.state_of(self.campaign, key)
        held = journal.held(self.event.uid, key) if self.event is not None else None
        if found is None:
            return None, held, False
        state, first = found
        if self.untracked and state is State.SENT and held is None:
            held = self.sequence  # sent before events were tracked: holds this version
            # (the journal records it so when this run writes the event's first version)
        return state, held, state is State.DEFERRED and first is not None \
            and first <= self.expiry


def read_knowledge(path: Path | None, campaign: str, *, uid: str = "",
                   event_fields: tuple[dict[str, str], str, int] | None = None,
                   retry_for: float = 0.0) -> tuple[Knowledge, Journal | None]:
    """What the journal at ``path`` knows of this campaign, without writing to it (a
    journal that does not exist knows nothing). Returns the knowledge and the open
    journal (to be closed by the caller), or None."""
    knowledge = Knowledge(campaign)
    if path is None or not path.exists():
        return knowledge, None
    from .journal import Journal
    from .journal.deliveries import expiry_cutoff

    journal = Journal(path, create=False)
    knowledge.secret = journal.secret
    knowledge.suppressed = journal.suppressed_keys()
    knowledge.unsubscribed = journal.unsubscribed_keys()
    knowledge.bounced = journal.bounced_keys()
    knowledge.expiry = expiry_cutoff(retry_for)
    if uid:
        knowledge.untracked = not journal.tracked(uid)
        knowledge.answers = {k: a for k, (a, _) in journal.answers_for(uid).items()}
        if event_fields is not None:
            shown, fingerprint, minimum = event_fields
            knowledge.sequence, knowledge.versions = journal.event_version(
                campaign, uid, shown, fingerprint, minimum, write=False)
    if journal.has_guests(campaign) or (uid and journal.tracked(uid)):
        knowledge.journal = journal
    return knowledge, journal


@dataclass
class Tally:
    """What the plan gave the guests of the list: messages by kind, nothing by reason."""

    kinds: Counter[Kind] = field(default_factory=Counter)
    skipped: Counter[Skip] = field(default_factory=Counter)

    def add(self, decision: Decision) -> None:
        if decision.kind is not None:
            self.kinds[decision.kind] += 1
        elif decision.skip is not None:
            self.skipped[decision.skip] += 1

    @property
    def due(self) -> int:
        return sum(self.kinds.values())


class Planner:
    """The plan of one run, asked guest by guest as the pass reads the list: the rule,
    with what the journal knows and the run's options (--retry-failed, --only)."""

    def __init__(self, knowledge: Knowledge, *, retry_failed: bool = False,
                 only: frozenset[str] = frozenset()) -> None:
        self.knowledge = knowledge
        self.retry_failed = retry_failed
        self.only = only
        self.named: set[str] = set()  # --only addresses found on the list
        self.tally = Tally()

    def decide(self, recipient: Recipient, *, suppressed: bool, matches: bool,
               unsubscribed: bool = False) -> Decision:
        key = recipient.address.key
        state, held, expired = self.knowledge.guest(key)
        only = None
        if self.only:
            only = key in self.only
            if only:
                self.named.add(key)
        decision = decide(state, held, event=self.knowledge.event, suppressed=suppressed,
                          unsubscribed=unsubscribed, matches=matches,
                          retry_failed=self.retry_failed, expired=expired, only=only)
        self.tally.add(decision)
        return decision

    @property
    def not_on_list(self) -> list[str]:
        """The --only addresses that are no guest of the list (after the pass)."""
        return sorted(self.only - self.named)
