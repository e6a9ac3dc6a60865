"""Guests' delivery states per campaign: the sync of a run's list, expiry, what the plan
asks of one guest, and the counts and rows that ``status`` shows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import InputError
from ..models import Mark, State
from .store import Store, now


def _duration(seconds: float) -> str:
    """``3d``, ``12h``, ``30m`` or ``45s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Entry:
    """One guest of a campaign as ``status`` lists it."""

    campaign: str
    email: str
    name: str
    line: int | None
    state: str
    attempts: int
    code: int | None
    reply: str | None
    message_id: str | None
    updated: str
    answer: str | None = None  # accepted, declined, tentative (for an event)
    answered_at: str | None = None
    comment: str | None = None  # the guest's comment with the answer
    late: bool | None = None  # the answer came after the event's rsvp_by (None: no answer)
    unsubscribed: bool = False  # by mail (the inbox): service messages still reach them
    bounce: str | None = None  # hard (the address is suppressed) or soft (noted only)
    bounce_status: str | None = None  # its status code, e.g. 5.1.1
    key: str = ""  # the address's key (to join a list's columns)


# A guest as the sync takes it: (key, email, name, line, mark: models.Mark).
ON_LIST, SUPPRESSED, EXCLUDED = Mark.ON_LIST, Mark.SUPPRESSED, Mark.EXCLUDED
Guest = tuple[str, str, str, int, int]


class Deliveries(Store):
    """The ``deliveries`` table."""

    def sync(self, campaign: str, template: str, recipients: str,
             guests: Callable[[], Iterable[Guest]], excluded: bool = True) -> None:
        """Bring the campaign's rows up to this run's list, in one transaction.

        A new guest is queued (or suppressed); a known one gets its name and line, and
        its suppression as the list says now (sent, failed and deferred rows keep their
        state). A guest ``--where`` excludes is not added, and a row of one that was
        never tried goes: it is not the campaign's to send. Rows of addresses no longer
        on the list lose their line (they keep their history, are not sent and do not
        count as remaining); those never tried go too. ``guests()`` is read as a stream
        (100,000 guests are never held in memory), again for those excluded when
        ``excluded`` says there are any.
        """
        stamp = now()
        with self.transaction() as db:
            db.execute("INSERT INTO campaigns (id, template, recipients, created, updated) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET updated = ?",
                       (campaign, template, recipients, stamp, stamp, stamp))
            db.execute("UPDATE deliveries SET line = NULL WHERE campaign = ?", (campaign,))
            db.executemany(
                "INSERT INTO deliveries (campaign, key, email, name, line, state, created, "
                "updated) VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?6 THEN 'suppressed' ELSE "
                "'queued' END, ?7, ?7) ON CONFLICT (campaign, key) DO UPDATE SET "
                "email = ?3, name = ?4, line = ?5, state = CASE "
                "WHEN ?6 AND state IN ('queued', 'deferred') THEN 'suppressed' "
                "WHEN NOT ?6 AND state = 'suppressed' THEN 'queued' ELSE state END, "
                "updated = CASE WHEN state IN ('queued', 'suppressed') THEN ?7 "
                "ELSE updated END",
                ((campaign, key, email, name, line, mark == SUPPRESSED, stamp)
                 for key, email, name, line, mark in guests() if mark != EXCLUDED))
            if excluded:
                self._sync_excluded(db, campaign, guests)
            db.execute("DELETE FROM deliveries WHERE campaign = ? AND line IS NULL AND "
                       "state IN ('queued', 'suppressed') AND attempts = 0", (campaign,))
        self.protect()

    @staticmethod
    def _sync_excluded(db: sqlite3.Connection, campaign: str,
                       guests: Callable[[], Iterable[Guest]]) -> None:
        """Guests --where leaves out keep their rows and lines, but are not queued."""
        db.executemany(
            "UPDATE deliveries SET email = ?, name = ?, line = ? WHERE campaign = ? AND "
            "key = ?", ((email, name, line, campaign, key)
                        for key, email, name, line, mark in guests() if mark == EXCLUDED))
        db.executemany(
            "DELETE FROM deliveries WHERE campaign = ? AND key = ? AND state IN "
            "('queued', 'suppressed') AND attempts = 0",
            ((campaign, key) for key, _, _, _, mark in guests() if mark == EXCLUDED))

    def expire(self, campaign: str, older_than: float) -> list[tuple[str, str]]:
        """Give up on guests still deferred ``older_than`` seconds after their first
        attempt, as an MTA does: they become failed ("expired"). Returns (email, reply)."""
        with self.transaction() as db:
            rows = db.execute(
                "UPDATE deliveries SET state = 'failed', updated = ?, reply = "
                "'expired: still deferred ' || ? || ' after the first attempt (last reply: ' "
                "|| coalesce(code || ' ', '') || coalesce(reply, '') || ')' "
                "WHERE campaign = ? AND state = 'deferred' AND line IS NOT NULL "
                "AND first_attempt IS NOT NULL AND first_attempt <= ? RETURNING email, reply",
                (now(), _duration(older_than), campaign, expiry_cutoff(older_than))).fetchall()
        return [(str(email), str(reply)) for email, reply in rows]

    def has_guests(self, campaign: str) -> bool:
        """Whether the campaign has any row (a first run's plan need ask nothing)."""
        return int(self.db.execute("SELECT EXISTS (SELECT 1 FROM deliveries WHERE campaign = ?)",
                               (campaign,)).fetchone()[0]) == 1

    def state_of(self, campaign: str, key: str) -> tuple[State, str | None] | None:
        """(state, first attempt) of one guest in a campaign, None when not there."""
        row = self.db.execute("SELECT state, first_attempt FROM deliveries WHERE "
                              "campaign = ? AND key = ?", (campaign, key)).fetchone()
        return None if row is None else (State(row[0]), row[1])

    def sends_since(self, since: str) -> list[tuple[str, int]]:
        """(when, envelope recipients) of every accepted transaction since ``since``, oldest
        first: the daily quota's window."""
        return [(str(at), int(n)) for at, n in self.db.execute(
            "SELECT at, recipients FROM sends WHERE at > ? ORDER BY at", (since,))]

    # Reading -----------------------------------------------------------------------

    def require_campaign(self, campaign: str) -> None:
        """InputError (65) naming the known campaigns when this one is not in the journal."""
        known = self.campaigns()
        if campaign not in known:
            raise InputError(f"{self.path}: no campaign {campaign!r} (known: "
                             f"{', '.join(known) or 'none'})")

    def campaigns(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM campaigns ORDER BY created, id")]

    def counts(self, campaign: str | None = None) -> dict[str, dict[State, int]]:
        """campaign → state → count (every state present, zeros included)."""
        result: dict[str, dict[State, int]] = {}
        ids = [campaign] if campaign is not None else self.campaigns()
        for cid in ids:
            result[cid] = dict.fromkeys(State, 0)
        query = "SELECT campaign, state, count(*) FROM deliveries"
        params: tuple[str, ...] = ()
        if campaign is not None:
            query += " WHERE campaign = ?"
            params = (campaign,)
        for cid, state, count in self.db.execute(query + " GROUP BY campaign, state", params):
            result.setdefault(cid, dict.fromkeys(State, 0))[State(state)] = count
        return result

    def entries(self, campaign: str | None = None) -> Iterator[Entry]:
        query = ("SELECT d.campaign, d.email, d.name, d.line, d.state, d.attempts, d.code, "
                 "d.reply, d.message_id, d.updated, a.answer, a.answered_at, a.comment, "
                 "CASE WHEN a.answer IS NOT NULL THEN a.late = 1 END, "
                 "EXISTS (SELECT 1 FROM suppressions s WHERE s.key = d.key AND s.reason = "
                 "'unsubscribe'), "
                 "CASE WHEN d.state = 'bounced' THEN 'hard' WHEN b.key IS NOT NULL THEN 'soft' "
                 "END, CASE WHEN d.state = 'bounced' THEN substr(d.reply, 10) ELSE b.status END, "
                 "d.key "
                 "FROM deliveries d LEFT JOIN campaigns c ON c.id = d.campaign "
                 "LEFT JOIN answers a ON a.uid = c.event AND a.key = d.key "
                 "LEFT JOIN soft_bounces b ON b.key = d.key")
        params: tuple[str, ...] = ()
        if campaign is not None:
            query += " WHERE d.campaign = ?"
            params = (campaign,)
        for row in self.db.execute(query + " ORDER BY d.campaign, d.line, d.key", params):
            values = list(row)
            values[13] = None if row[13] is None else bool(row[13])  # late
            values[14] = bool(row[14])  # unsubscribed
            yield Entry(*values)


def expiry_cutoff(older_than: float) -> str:
    """The first attempt before which a deferred guest has expired, as the journal writes
    times."""
    cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than, UTC)
    return cutoff.isoformat(timespec="seconds")
