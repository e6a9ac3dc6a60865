"""The campaign journal: one SQLite row per (campaign, address) and its delivery state.

States: queued → sending → sent | deferred | failed, and queued → suppressed.
``sending`` is committed before DATA; ``sent`` after the server's 250. Results are
committed together with the worker's next ``sending`` mark, and marks of workers that
get there together share a transaction (group commit): a worker never starts another
DATA before its previous result is durable, so after a SIGKILL at most one message per
connection can have arrived without being recorded as sent.
WAL mode with synchronous=NORMAL: a commit survives the process being killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError, TemporaryError
from .files import open_private, private_dir, private_file
from .models import EventRun, Outcome, Outgoing

SCHEMA_VERSION = 5
STATES = ("queued", "sending", "sent", "deferred", "failed", "suppressed", "bounced")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    template TEXT,
    recipients TEXT,
    event TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    campaign TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    line INTEGER,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'sending', 'sent', 'deferred', 'failed', 'suppressed', 'bounced')),
    attempts INTEGER NOT NULL DEFAULT 0,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    first_attempt TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
-- No index on state: every state change would rewrite an index page too (a third of the
-- cost of each commit while sending), and counting a campaign's rows by state scans its
-- primary-key range in milliseconds.
DROP INDEX IF EXISTS deliveries_state;
-- Calendar events: the version last sent (SEQUENCE and what a calendar shows), every
-- version's fields (to tell a guest what changed), and which version each guest holds.
CREATE TABLE IF NOT EXISTS events (
    uid TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS event_versions (
    uid TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (uid, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holders (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    sequence INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
-- What the inbox read: answers per event and guest, addresses never to mail again
-- (bounces, unsubscribes), and the messages already read (so none counts twice).
CREATE TABLE IF NOT EXISTS answers (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppressions (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_seen (
    source TEXT NOT NULL,
    ident TEXT NOT NULL,
    PRIMARY KEY (source, ident)
) WITHOUT ROWID;
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    """``3d``, ``12h``, ``30m`` or ``45s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class Entry:
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
    bounce: str | None = None  # the status of a hard bounce


@dataclass
class DueList:
    """Guests due in a run, by line: walk it beside the list with ``find``."""

    lines: array[int] = field(default_factory=lambda: array("q"))
    keys: array[int] = field(default_factory=lambda: array("q"))
    states: bytearray = field(default_factory=bytearray)
    held: array[int] = field(default_factory=lambda: array("q"))  # -1: holds no version
    _at: int = 0

    def add(self, line: int, key: str, state: str, held: int | None) -> None:
        self.lines.append(line)
        self.keys.append(hash(key))
        self.states.append(STATES.index(state))
        self.held.append(-1 if held is None else held)

    def find(self, line: int, key: str) -> tuple[str, int | None] | None:
        """(state, sequence held) of the guest on ``line`` when due, else None. Lines must
        be asked in increasing order (as the list is read)."""
        lines, at = self.lines, self._at
        while at < len(lines) and lines[at] < line:
            at += 1
        self._at = at
        if at < len(lines) and lines[at] == line and self.keys[at] == hash(key):
            held = self.held[at]
            return STATES[self.states[at]], None if held < 0 else held
        return None


class Journal:
    """An open journal file. Use as a context manager."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        if path.is_symlink():
            raise ConfigError(f"{path}: the journal is a symbolic link: refusing to follow it "
                              f"(give the real path with --journal or MAILER_JOURNAL)")
        if not path.exists():
            if not create:
                raise ConfigError(f"{path}: no journal here (nothing has been sent with it)")
            try:
                private_dir(path.parent)
                private_file(path)
            except OSError as exc:
                raise ConfigError(f"{path}: cannot create the journal: {exc.strerror}") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Small pages: each commit while sending writes the pages it touched to the WAL,
            # and 1 KiB pages make that a quarter of the bytes (a new journal only).
            self.db.execute("PRAGMA page_size=1024")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # A checkpoint (WAL to the database, and fsync) every 8 MiB of WAL instead of
            # every 1 MiB: a send commits a few pages per message, and each checkpoint cost
            # it more than the commits in between (~15% of the journal's time).
            self.db.execute("PRAGMA wal_autocheckpoint=8192")
            self.db.execute("PRAGMA busy_timeout=10000")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"{path}: written by a newer mailer (journal version "
                                  f"{version}); upgrade mailer to use it")
            self.db.executescript(_SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(deliveries)")}
            if "first_attempt" not in columns:  # a version 2 journal
                self.db.execute("ALTER TABLE deliveries ADD COLUMN first_attempt TEXT")
            table = self.db.execute("SELECT sql FROM sqlite_master WHERE name = "
                                    "'deliveries'").fetchone()[0]
            if "'bounced'" not in table:  # before version 5: the state check lacks bounced
                self._rebuild_deliveries()
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(campaigns)")}
            if "event" not in columns:  # a version 3 journal
                self.db.execute("ALTER TABLE campaigns ADD COLUMN event TEXT")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a usable journal: {exc}") from None
        self._protect()
        self._results: list[tuple[Any, ...]] = []
        self._sending: list[tuple[Any, ...]] = []
        self._reverts: list[tuple[Any, ...]] = []
        self._holders: list[tuple[Any, ...]] = []

    def _rebuild_deliveries(self) -> None:
        """SQLite cannot change a CHECK constraint: copy the rows into a new table."""
        new_sql = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS deliveries"):]
        new_sql = new_sql[:new_sql.index("WITHOUT ROWID;") + len("WITHOUT ROWID")]
        columns = ", ".join(row[1] for row in self.db.execute("PRAGMA table_info(deliveries)"))
        with self.transaction() as db:
            db.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
            db.execute(new_sql.replace("IF NOT EXISTS ", ""))
            db.execute(f"INSERT INTO deliveries ({columns}) SELECT {columns} "  # noqa: S608
                       f"FROM deliveries_old")
            db.execute("DROP TABLE deliveries_old")

    def _protect(self) -> None:
        """The WAL and shared-memory files hold the same personal data: owner only."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def close(self) -> None:
        self.flush()
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # A run -------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def sync(self, campaign: str, template: str, recipients_file: str,
             rows: Iterable[tuple[str, str, str, int, bool]]) -> None:
        """Add new recipients as queued (or suppressed) and refresh names and lines.

        ``rows`` are (key, email, name, line, suppressed). Sent, failed and deferred rows
        keep their state; a suppressed address that is no longer suppressed is queued again.
        """
        now = _now()
        with self.transaction() as db:
            db.execute("INSERT INTO campaigns (id, template, recipients, created, updated) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET updated = ?",
                       (campaign, template, recipients_file, now, now, now))
            # Rows of addresses no longer in the list keep their history but lose their
            # line: they are not sent and do not count as remaining.
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
                ((campaign, key, email, name, line, suppressed, now)
                 for key, email, name, line, suppressed in rows))
        self._protect()

    def due_list(self, campaign: str, retry_failed: bool,
                 event: EventRun | None = None) -> DueList:
        """The guests due in this run, in list order: one query, kept compact (a line
        number, a hash of the address, the state and the event version held: 21 bytes a
        guest), so the list can be walked beside it without asking the journal once per
        guest. For the campaign that holds an event, a guest who was sent an older version
        than the current one is due again (an update, or a cancellation)."""
        states = ("queued", "sending", "deferred") + (("failed",) if retry_failed else ())
        uid = event.uid if event is not None else ""
        again = "0"
        if event is not None and event.keeps_calendars:
            again = ("(d.state = 'sent' AND (h.sequence IS NULL OR h.sequence < :seq "
                     "OR (:cancelled AND h.cancelled = 0)))")
        due = DueList()
        query = (f"SELECT d.line, d.key, d.state, "  # noqa: S608
                 f"CASE WHEN h.cancelled THEN NULL ELSE h.sequence END FROM deliveries d "
                 f"LEFT JOIN holders h ON h.uid = :uid AND h.key = d.key "
                 f"WHERE d.campaign = :campaign AND d.line IS NOT NULL AND "
                 f"(d.state IN ({','.join(f':s{i}' for i in range(len(states)))}) OR {again}) "
                 f"ORDER BY d.line")
        params: dict[str, Any] = {"uid": uid, "campaign": campaign,
                                  "seq": event.sequence if event else 0,
                                  "cancelled": bool(event and event.cancelled)}
        params.update({f"s{i}": state for i, state in enumerate(states)})
        for line, key, state, held in self.db.execute(query, params):
            due.add(line, key, state, held)
        return due

    # Events ------------------------------------------------------------------------

    def event_version(self, campaign: str, uid: str, shown: dict[str, str], fingerprint: str,
                      minimum: int, *, write: bool = True) -> tuple[int, dict[int, dict[str, str]]]:
        """The SEQUENCE this run sends and every known version's fields.

        The first time: ``minimum``. When what a calendar shows changed since the version
        last sent: one more (once, however many runs follow). ``write`` False (a dry run)
        computes the same without recording it."""
        row = self.db.execute("SELECT sequence, fingerprint FROM events WHERE uid = ?",
                              (uid,)).fetchone()
        if row is None:
            sequence, new = minimum, True
        elif row[1] != fingerprint or minimum > row[0]:
            sequence, new = max(row[0] + 1, minimum), True
        else:
            sequence, new = row[0], False
        if new and write:
            now = _now()
            with self.transaction() as db:
                db.execute("INSERT INTO events (uid, sequence, fingerprint, updated) VALUES "
                           "(?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET sequence = excluded."
                           "sequence, fingerprint = excluded.fingerprint, updated = excluded."
                           "updated", (uid, sequence, fingerprint, now))
                db.execute("INSERT OR REPLACE INTO event_versions (uid, sequence, fields) "
                           "VALUES (?, ?, ?)", (uid, sequence, json.dumps(shown)))
                if row is None:
                    # Guests a journal from before events were tracked records as sent hold
                    # this version: they must not be invited twice.
                    db.execute("INSERT OR IGNORE INTO holders (uid, key, email, name, "
                               "sequence, cancelled, updated) SELECT ?, key, email, name, ?, "
                               "0, ? FROM deliveries WHERE campaign = ? AND state = 'sent'",
                               (uid, sequence, now, campaign))
        versions = {int(seq): json.loads(fields) for seq, fields in self.db.execute(
            "SELECT sequence, fields FROM event_versions WHERE uid = ?", (uid,))}
        if new and not write:
            versions[sequence] = shown
        return sequence, versions

    def removed_holders(self, campaign: str, uid: str) -> list[tuple[str, str, str]]:
        """(key, email, name) of guests who hold the event (not cancelled) but are no longer
        on this campaign's list."""
        rows = self.db.execute(
            "SELECT h.key, h.email, h.name FROM holders h WHERE h.uid = ? AND h.cancelled = 0 "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign = ? AND d.key = h.key "
            "AND d.line IS NOT NULL) ORDER BY h.email", (uid, campaign)).fetchall()
        return [(str(k), str(e), str(n)) for k, e, n in rows]

    def holder_counts(self, uid: str) -> tuple[int, int]:
        """(guests holding the current version, guests holding an older one)."""
        row = self.db.execute(
            "SELECT count(*) FILTER (WHERE h.sequence = e.sequence), "
            "count(*) FILTER (WHERE h.sequence < e.sequence) FROM holders h JOIN events e "
            "ON e.uid = h.uid WHERE h.uid = ? AND h.cancelled = 0", (uid,)).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def guest(self, campaign: str, key: str, uid: str) -> tuple[str | None, int | None]:
        """(state in this campaign, version held of the event) of one guest: for a dry run,
        which asks without having synced the list."""
        row = self.db.execute("SELECT state FROM deliveries WHERE campaign = ? AND key = ?",
                              (campaign, key)).fetchone()
        held = self.db.execute("SELECT sequence FROM holders WHERE uid = ? AND key = ? "
                               "AND cancelled = 0", (uid, key)).fetchone()
        return (None if row is None else str(row[0]), None if held is None else int(held[0]))

    # The inbox --------------------------------------------------------------------

    def seen(self, source: str, ident: str) -> bool:
        return self.db.execute("SELECT 1 FROM inbox_seen WHERE source = ? AND ident = ?",
                               (source, ident)).fetchone() is not None

    def mark_seen(self, source: str, ident: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO inbox_seen (source, ident) VALUES (?, ?)",
                        (source, ident))

    def record_answer(self, uid: str, key: str, answer: str, at: str) -> bool:
        """Record a guest's answer to an event this journal sent them; False (nothing
        recorded) for an unknown event or a guest who was not invited. A later answer
        replaces an earlier one."""
        row = self.db.execute("SELECT email FROM holders WHERE uid = ? AND key = ?",
                              (uid, key)).fetchone()
        if row is None:
            return False
        self.db.execute(
            "INSERT INTO answers (uid, key, email, answer, answered_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (uid, key) DO UPDATE SET answer = excluded.answer, answered_at = "
            "excluded.answered_at WHERE excluded.answered_at >= answers.answered_at",
            (uid, key, row[0], answer, at))
        return True

    def record_bounce(self, key: str, message_id: str | None, status: str) -> bool:
        """A hard bounce: the guest's rows become 'bounced' and the address is suppressed
        for every later send. Matched by the returned Message-ID, else by the address among
        guests sent something; False when nobody matches."""
        rows = []
        if message_id:
            rows = self.db.execute("SELECT campaign, key, email FROM deliveries WHERE "
                                   "message_id = ?", (message_id,)).fetchall()
        if not rows:
            rows = self.db.execute("SELECT campaign, key, email FROM deliveries WHERE key = ? "
                                   "AND state IN ('sent', 'sending')", (key,)).fetchall()
        if not rows:
            return False
        now = _now()
        for campaign, found, address in rows:
            self.db.execute("UPDATE deliveries SET state = 'bounced', reply = ?, updated = ? "
                            "WHERE campaign = ? AND key = ?",
                            (f"bounced: {status}", now, campaign, found))
            self.suppress(found, address, f"bounce {status}")
        return True

    def suppress(self, key: str, address: str, reason: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO suppressions (key, email, reason, at) "
                        "VALUES (?, ?, ?, ?)", (key, address, reason, _now()))

    def suppressed_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT key FROM suppressions")}

    def answers_for(self, uid: str) -> dict[str, tuple[str, str]]:
        """key → (answer, answered_at) for an event."""
        return {str(k): (str(a), str(t)) for k, a, t in self.db.execute(
            "SELECT key, answer, answered_at FROM answers WHERE uid = ?", (uid,))}

    def bounced_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute(
            "SELECT key FROM suppressions WHERE reason LIKE 'bounce%'")}

    def forget(self, key: str) -> int:
        """Remove an address from everything in the journal (the right to erasure) and
        compact the file so it is really gone. Returns the rows deleted."""
        deleted = 0
        with self.transaction() as db:
            for table in ("deliveries", "holders", "answers", "suppressions"):
                deleted += db.execute(f"DELETE FROM {table} WHERE key = ?",  # noqa: S608
                                      (key,)).rowcount
        self.compact()
        return deleted

    def compact(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._protect()

    def event_of(self, campaign: str) -> str | None:
        row = self.db.execute("SELECT event FROM campaigns WHERE id = ?", (campaign,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_event(self, campaign: str, uid: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE campaigns SET event = ? WHERE id = ?", (uid, campaign))

    def remaining(self, campaign: str, retry_failed: bool = False) -> int:
        states = ("queued", "sending", "deferred") + (("failed",) if retry_failed else ())
        marks = ",".join("?" * len(states))
        row = self.db.execute(f"SELECT count(*) FROM deliveries WHERE campaign = ? "  # noqa: S608
                              f"AND line IS NOT NULL AND state IN ({marks})",
                              (campaign, *states)).fetchone()
        return int(row[0])

    def expire(self, campaign: str, older_than: float) -> list[tuple[str, str]]:
        """Give up on guests still deferred ``older_than`` seconds after their first
        attempt, as an MTA does: they become failed ("expired"). Returns (email, reply)."""
        cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than, UTC)
        with self.transaction() as db:
            rows = db.execute(
                "UPDATE deliveries SET state = 'failed', updated = ?, reply = "
                "'expired: still deferred ' || ? || ' after the first attempt (last reply: ' "
                "|| coalesce(code || ' ', '') || coalesce(reply, '') || ')' "
                "WHERE campaign = ? AND state = 'deferred' AND line IS NOT NULL "
                "AND first_attempt IS NOT NULL AND first_attempt <= ? RETURNING email, reply",
                (_now(), _duration(older_than), campaign,
                 cutoff.isoformat(timespec="seconds"))).fetchall()
        return [(str(email), str(reply)) for email, reply in rows]

    def recorder(self, campaign: str) -> JournalRecorder:
        return JournalRecorder(self, campaign)

    # Reading -----------------------------------------------------------------------

    def require_campaign(self, campaign: str) -> None:
        """InputError (65) naming the known campaigns when this one is not in the journal."""
        known = self.campaigns()
        if campaign not in known:
            raise InputError(f"{self.path}: no campaign {campaign!r} (known: "
                             f"{', '.join(known) or 'none'})")

    def campaigns(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM campaigns ORDER BY created, id")]

    def started(self, campaign: str) -> bool:
        """Whether any guest of the campaign is past ``queued`` (a run has sent, tried or
        suppressed something)."""
        row = self.db.execute("SELECT EXISTS (SELECT 1 FROM deliveries WHERE campaign = ? "
                              "AND state != 'queued')", (campaign,)).fetchone()
        return bool(row[0])

    def counts(self, campaign: str | None = None) -> dict[str, dict[str, int]]:
        """campaign → state → count (every state present, zeros included)."""
        result: dict[str, dict[str, int]] = {}
        ids = [campaign] if campaign is not None else self.campaigns()
        for cid in ids:
            result[cid] = dict.fromkeys(STATES, 0)
        query = "SELECT campaign, state, count(*) FROM deliveries"
        params: tuple[str, ...] = ()
        if campaign is not None:
            query += " WHERE campaign = ?"
            params = (campaign,)
        for cid, state, count in self.db.execute(query + " GROUP BY campaign, state", params):
            result.setdefault(cid, dict.fromkeys(STATES, 0))[state] = count
        return result

    def entries(self, campaign: str | None = None) -> Iterator[Entry]:
        query = ("SELECT d.campaign, d.email, d.name, d.line, d.state, d.attempts, d.code, "
                 "d.reply, d.message_id, d.updated, a.answer, a.answered_at, "
                 "CASE WHEN d.state = 'bounced' THEN substr(d.reply, 10) END "
                 "FROM deliveries d LEFT JOIN campaigns c ON c.id = d.campaign "
                 "LEFT JOIN answers a ON a.uid = c.event AND a.key = d.key")
        params: tuple[str, ...] = ()
        if campaign is not None:
            query += " WHERE d.campaign = ?"
            params = (campaign,)
        for row in self.db.execute(query + " ORDER BY d.campaign, d.line, d.key", params):
            yield Entry(*row)

    def answer_counts(self, campaign: str) -> dict[str, int] | None:
        """For an event campaign: accepted, declined, tentative, no answer, bounced among
        the guests on its list; None for another campaign."""
        uid = self.event_of(campaign)
        if uid is None:
            return None
        counts = {"accepted": 0, "declined": 0, "tentative": 0, "no answer": 0, "bounced": 0}
        for answer, state in self.db.execute(
                "SELECT a.answer, d.state FROM deliveries d LEFT JOIN answers a ON a.uid = ? "
                "AND a.key = d.key WHERE d.campaign = ? AND d.line IS NOT NULL", (uid, campaign)):
            if state == "bounced":
                counts["bounced"] += 1
            elif answer is not None:
                counts[answer] += 1
            elif state == "sent":
                counts["no answer"] += 1
        return counts

    def purge(self, campaign: str) -> int:
        """Delete a campaign's rows and compact the file so the addresses are gone."""
        with self.transaction() as db:
            row = db.execute("SELECT event FROM campaigns WHERE id = ?", (campaign,)).fetchone()
            if row is not None and row[0] is not None:  # the event's guests go with it
                others = db.execute("SELECT count(*) FROM campaigns WHERE event = ? AND id != ?",
                                    (row[0], campaign)).fetchone()[0]
                if not others:
                    for table in ("holders", "event_versions", "events", "answers"):
                        db.execute(f"DELETE FROM {table} WHERE uid = ?", (row[0],))  # noqa: S608
            deleted = db.execute("DELETE FROM deliveries WHERE campaign = ?",
                                 (campaign,)).rowcount
            db.execute("DELETE FROM campaigns WHERE id = ?", (campaign,))
        self.compact()
        return int(deleted)

    # Writes during a run (group commit) ----------------------------------------------

    def queue_result(self, campaign: str, key: str, state: str, code: int | None,
                     reply: str) -> None:
        self._results.append((state, code, reply[:500], _now(), campaign, key))

    def queue_sending(self, campaign: str, key: str, message_id: str) -> None:
        self._sending.append((message_id, _now(), campaign, key))

    def queue_holder(self, uid: str, key: str, email: str, name: str, sequence: int,
                     cancelled: bool) -> None:
        """A guest's calendar now holds this version of the event (committed with the
        result that says the message was delivered)."""
        self._holders.append((uid, key, email, name, sequence, int(cancelled), _now()))

    def queue_revert(self, campaign: str, key: str, state: str) -> None:
        """Put a guest back as it was before this run marked it (a refusal that was no
        fault of the guest's)."""
        self._reverts.append((state, campaign, key))

    def flush(self) -> None:
        """Commit every queued change in one transaction (results before sending marks,
        so a retried message ends as 'sending')."""
        if not self._results and not self._sending and not self._reverts \
                and not self._holders:
            return
        self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: two workers may write
        try:
            if self._results:
                self.db.executemany(
                    "UPDATE deliveries SET state = ?, code = ?, reply = ?, updated = ? "
                    "WHERE campaign = ? AND key = ?", self._results)
            if self._sending:
                self.db.executemany(
                    "UPDATE deliveries SET first_attempt = CASE WHEN state = 'failed' "
                    "OR first_attempt IS NULL THEN ?2 ELSE first_attempt END, "
                    "state = 'sending', attempts = attempts + 1, "
                    "message_id = ?1, updated = ?2 WHERE campaign = ?3 AND key = ?4",
                    self._sending)
            if self._holders:
                self.db.executemany(
                    "INSERT INTO holders (uid, key, email, name, sequence, cancelled, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid, key) DO UPDATE SET "
                    "email = excluded.email, name = excluded.name, sequence = excluded.sequence,"
                    " cancelled = excluded.cancelled, updated = excluded.updated",
                    self._holders)
            if self._reverts:
                self.db.executemany(
                    "UPDATE deliveries SET state = ?, attempts = max(attempts - 1, 0) "
                    "WHERE campaign = ? AND key = ?", self._reverts)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._results.clear()
        self._sending.clear()
        self._reverts.clear()
        self._holders.clear()


class JournalRecorder:
    """The sender's Recorder: state changes are queued and committed together by
    ``flush()``, which the pool calls before each transaction starts (a group commit for
    the workers that are ready at once; see ``SenderPool._durable``)."""

    def __init__(self, journal: Journal, campaign: str) -> None:
        self.journal = journal
        self.campaign = campaign

    def sending(self, message: Outgoing) -> None:
        self.journal.queue_sending(self.campaign, message.key, message.message_id)

    def result(self, message: Outgoing, outcome: Outcome, code: int | None,
               reply: str) -> None:
        self.journal.queue_result(self.campaign, message.key, outcome.value, code, reply)
        if outcome is Outcome.SENT and message.holds is not None:
            uid, sequence, cancelled = message.holds
            self.journal.queue_holder(uid, message.key, message.email, message.name, sequence,
                                      cancelled)

    def revert(self, message: Outgoing) -> None:
        self.journal.queue_revert(self.campaign, message.key, message.prior or "queued")

    def flush(self) -> None:
        try:
            self.journal.flush()
        except sqlite3.Error as exc:
            raise TemporaryError(f"{self.journal.path}: cannot write the journal: "
                                 f"{exc}") from None


class CampaignLock:
    """One ``send`` per journal + campaign: an flock on a file beside the journal.

    The kernel drops an flock when its process dies, so the lock never outlives a killed
    run; the file keeps the holder's PID and host for the message to a second run.
    """

    def __init__(self, journal: Path, campaign: str) -> None:
        digest = hashlib.sha256(campaign.encode()).hexdigest()[:12]
        self.path = journal.with_name(f"{journal.name}.{digest}.lock")
        self.campaign = campaign
        self._fd: int | None = None

    def __enter__(self) -> CampaignLock:
        try:
            private_dir(self.path.parent)
            fd = open_private(self.path)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create the lock file: "
                              f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise TemporaryError(f"campaign {self.campaign!r} is in use by {holder} "
                                 f"(lock {self.path}); try again when it has finished"
                                 ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
