"""The writes of a run while it sends: each outcome queued, all of them committed
together (group commit).

``sending`` is committed before DATA; ``sent`` after the server's 250. Results are
committed together with the worker's next ``sending`` mark, and marks of workers that get
there together share a transaction: a worker never starts another DATA before its
previous result is committed, so after a SIGKILL at most one message per connection can
have arrived without being recorded as sent.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ..errors import TemporaryError
from ..models import Outcome, Outgoing, State
from ..text import printable
from .store import Store, now


class Recorder:
    """The pool's Recorder for one campaign: ``sending``, ``result`` and ``revert`` queue
    a change; ``flush()`` commits all of them in one transaction."""

    def __init__(self, store: Store, campaign: str) -> None:
        self.store = store
        self.campaign = campaign
        self._results: list[tuple[Any, ...]] = []
        self._sending: list[tuple[Any, ...]] = []
        self._reverts: list[tuple[Any, ...]] = []
        self._holders: list[tuple[Any, ...]] = []
        self._sends: list[tuple[Any, ...]] = []

    def sending(self, message: Outgoing) -> None:
        self._sending.append((message.message_id, now(), self.campaign, message.key))

    def result(self, message: Outgoing, outcome: Outcome, code: int | None,
               reply: str, accepted: int = 1) -> None:
        """``accepted``: the envelope recipients the relay took (with the archive copy,
        2), counted against the daily quota when the message was sent."""
        stamp = now()
        self._results.append((outcome.value, code, printable(reply, 500), stamp,
                              self.campaign, message.key))
        if outcome is Outcome.SENT:
            self._sends.append((stamp, accepted))
        if outcome is Outcome.SENT and message.holds is not None:
            # the guest's calendar now holds this version of the event
            uid, sequence, cancelled = message.holds
            self._holders.append((uid, message.key, message.email, message.name, sequence,
                                  int(cancelled), now(), message.lang or None))

    def revert(self, message: Outgoing) -> None:
        """Put a guest back as it was before this run marked it (a refusal that was no
        fault of the guest's)."""
        self._reverts.append((message.prior or State.QUEUED, self.campaign, message.key))

    def flush(self) -> None:
        """Commit every queued change in one transaction (results before sending marks,
        so a retried message ends as 'sending'); TemporaryError when the journal cannot
        be written."""
        if not self._results and not self._sending and not self._reverts \
                and not self._holders:
            return
        try:
            with self.store.transaction() as db:
                self._write(db)
        except sqlite3.Error as exc:
            raise TemporaryError(f"{self.store.path}: cannot write the journal: "
                                 f"{exc}") from None
        for queued in (self._results, self._sending, self._reverts, self._holders,
                       self._sends):
            queued.clear()

    def _write(self, db: sqlite3.Connection) -> None:
        if self._results:
            db.executemany("UPDATE deliveries SET state = ?, code = ?, reply = ?, updated = ? "
                           "WHERE campaign = ? AND key = ?", self._results)
        if self._sending:
            db.executemany(
                "UPDATE deliveries SET first_attempt = CASE WHEN state = 'failed' "
                "OR first_attempt IS NULL THEN ?2 ELSE first_attempt END, "
                "state = 'sending', attempts = attempts + 1, "
                "message_id = ?1, updated = ?2 WHERE campaign = ?3 AND key = ?4",
                self._sending)
        if self._holders:
            db.executemany(
                "INSERT INTO holders (uid, key, email, name, sequence, cancelled, updated, "
                "language) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid, key) DO UPDATE "
                "SET email = excluded.email, name = excluded.name, sequence = "
                "excluded.sequence, cancelled = excluded.cancelled, updated = "
                "excluded.updated, language = excluded.language", self._holders)
        if self._reverts:
            db.executemany("UPDATE deliveries SET state = ?, attempts = max(attempts - 1, 0) "
                           "WHERE campaign = ? AND key = ?", self._reverts)
        if self._sends:
            db.executemany("INSERT INTO sends (at, recipients) VALUES (?, ?)", self._sends)
