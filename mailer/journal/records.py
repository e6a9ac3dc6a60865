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
        stamp = now()
        for campaign, found, address in rows:
            self.db.execute("UPDATE deliveries SET state = 'bounced', reply = ?, updated = ? "
                            "WHERE campaign = ? AND key = ?",
                            (f"bounced: {status}", stamp, campaign, found))
            self.suppress(found, address, f"bounce {status}")
        return True

    def suppress(self, key: str, address: str, reason: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO suppressions (key, email, reason, at) "
                        "VALUES (?, ?, ?, ?)", (key, address, reason, now()))

    def suppressed_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT key FROM suppressions")}

    def bounced_keys(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute(
            "SELECT key FROM suppressions WHERE reason LIKE 'bounce%'")}
