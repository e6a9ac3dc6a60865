"""Deleting personal data: one address from everything (the right to erasure), or a whole
campaign; then the file is compacted so the rows are really gone."""

from __future__ import annotations

from .store import Store


class Erasure(Store):
    def forget(self, key: str) -> int:
        """Remove an address from everything in the journal and compact the file. Returns
        the rows deleted."""
        deleted = 0
        with self.transaction() as db:
            for table in ("deliveries", "holders", "answers", "answer_history",
                          "suppressions", "soft_bounces"):
                deleted += db.execute(f"DELETE FROM {table} WHERE key = ?",  # noqa: S608
                                      (key,)).rowcount
            db.execute("DELETE FROM unverified WHERE email = ?", (key,))
        self.compact()
        return deleted

    def purge(self, campaign: str) -> int:
        """Delete a campaign's rows (and its event's, when no other campaign shares it) and
        compact the file so the addresses are gone. Returns the guests deleted."""
        with self.transaction() as db:
            row = db.execute("SELECT event FROM campaigns WHERE id = ?", (campaign,)).fetchone()
            if row is not None and row[0] is not None:  # the event's guests go with it
                others = db.execute("SELECT count(*) FROM campaigns WHERE event = ? AND id != ?",
                                    (row[0], campaign)).fetchone()[0]
                if not others:
                    for table in ("holders", "event_versions", "events", "answers",
                                  "answer_history"):
                        db.execute(f"DELETE FROM {table} WHERE uid = ?", (row[0],))  # noqa: S608
            deleted = db.execute("DELETE FROM deliveries WHERE campaign = ?",
                                 (campaign,)).rowcount
            db.execute("DELETE FROM campaigns WHERE id = ?", (campaign,))
            db.execute("DELETE FROM meta WHERE name IN (?, ?)",
                       (f"removed:{campaign}", f"not-before:{campaign}"))
        self.compact()
        return int(deleted)
