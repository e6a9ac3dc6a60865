"""What the inbox records: messages read, answers, bounces and suppressions."""

from __future__ import annotations

from .store import Store, now


class InboxRecords(Store):
    """The ``inbox_seen``, ``answers`` and ``suppressions`` tables (written)."""

    def seen(self, source: str, ident: str) -> bool:
        return self.db.execute("SELECT 1 FROM inbox_seen WHERE source = ? AND ident = ?",
                               (source, ident)).fetchone() is not None

    def mark_seen(self, source: str, ident: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO inbox_seen (source, ident) VALUES (?, ?)",
                        (source, ident))

    def record_answer(self, uid: str, key: str, answer: str, at: str, sequence: int = 0,
                      comment: str | None = None) -> str:
        """Record a guest's answer to an event this journal sent them, with its comment:
        ``recorded`` (``late`` when it came after the event's deadline); kept as history
        only (``history``) when it answers an older version than the guest holds; ``not
        invited`` (nothing recorded) for an unknown event or a guest who was not invited.
        Of answers to the same version the later one wins (DTSTAMP, or the Date of an
        answer link), and of equal ones the one read last."""
        row = self.db.execute("SELECT h.email, h.sequence, e.deadline FROM holders h LEFT "
                              "JOIN events e ON e.uid = h.uid WHERE h.uid = ? AND h.key = ?",
                              (uid, key)).fetchone()
        if row is None:
            return "not invited"
        self.db.execute("INSERT INTO answer_history (uid, key, sequence, answer, answered_at, "
                        "read_at, comment) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (uid, key, sequence, answer, at, now(), comment))
        if sequence < int(row[1]):
            return "history"
        late = row[2] is not None and at >= str(row[2])
        self.db.execute(
            "INSERT INTO answers (uid, key, email, answer, answered_at, sequence, comment, "
            "late) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uid, key) DO UPDATE SET "
            "answer = excluded.answer, answered_at = excluded.answered_at, sequence = "
            "excluded.sequence, comment = excluded.comment, late = excluded.late WHERE "
            "excluded.sequence > answers.sequence OR (excluded.sequence = answers.sequence "
            "AND excluded.answered_at >= answers.answered_at)",
            (uid, key, row[0], answer, at, sequence, comment, int(late)))
        return "late" if late else "recorded"

    def record_bounce(self, key: str, message_ids: tuple[str, ...], status: str,
                      hard: bool = True) -> bool:
        """A hard bounce: the guest's row becomes 'bounced' and the address is suppressed
        for every later send; a soft one is noted for ``status`` (the latest per address).
        Either only when the bounce returns a Message-ID this journal sent to that very
        address (Message-IDs are a MAC keyed by the journal's secret: nobody else can
        make one). False, nothing recorded, otherwise."""
        stamp = now()
        found = False
        for message_id in message_ids:
            for campaign, address in self.db.execute(
                    "SELECT campaign, email FROM deliveries WHERE message_id = ? AND key = ?",
                    (message_id, key)).fetchall():
                found = True
                if not hard:
                    self.db.execute("INSERT OR REPLACE INTO soft_bounces (key, email, status, "
                                    "at) VALUES (?, ?, ?, ?)", (key, address, status, stamp))
                    continue
                self.db.execute("UPDATE deliveries SET state = 'bounced', reply = ?, "
                                "updated = ? WHERE campaign = ? AND key = ?",
                                (f"bounced: {status}", stamp, campaign, key))
                self.suppress(key, address, f"bounce {status}")
        return found

    def note_unverified(self, kind: str, email: str, ident: str) -> None:
        """Something the inbox could not verify (an unsubscribe by mail whose sender no
        trusted server vouched for), for ``status`` to list for a human to confirm."""
        self.db.execute("INSERT OR REPLACE INTO unverified (kind, email, ident, at) VALUES "
                        "(?, ?, ?, ?)", (kind, email, ident, now()))

    def unverified(self) -> list[tuple[str, str, str]]:
        """(kind, email, when) of what waits for a human, oldest first, not yet forgotten
        or suppressed."""
        return [(str(k), str(e), str(a)) for k, e, a in self.db.execute(
            "SELECT kind, email, at FROM unverified u WHERE NOT EXISTS (SELECT 1 FROM "
            "suppressions s WHERE s.key = u.email) ORDER BY at, email")]

    def suppress(self, key: str, address: str, reason: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO suppressions (key, email, reason, at) "
                        "VALUES (?, ?, ?, ?)", (key, address, reason, now()))

    def suppressed_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT key FROM suppressions")}

    def unsubscribed_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute(
            "SELECT key FROM suppressions WHERE reason = 'unsubscribe'")}

    def bounced_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute(
            "SELECT key FROM suppressions WHERE reason LIKE 'bounce%'")}
