"""Calendar events: the version each run sends, every version's fields, which version
each guest's calendar holds, and the answers to an event."""

from __future__ import annotations

import json

from .store import Store, now

Holder = tuple[str, str, str, str | None]  # key, email, name, language of the message


class Events(Store):
    """The ``events``, ``event_versions`` and ``holders`` tables (and ``answers``, read)."""

    def event_version(self, campaign: str, uid: str, shown: dict[str, str], fingerprint: str,
                      minimum: int, *, write: bool = True) -> tuple[int, dict[int, dict[str, str]]]:
        """The SEQUENCE this run sends and every known version's fields.

        The first time: ``minimum``. When what a calendar shows changed since the version
        last sent: one more (once, however many runs follow). ``write`` False (the plan,
        a dry run) computes the same without recording it."""
        row = self.db.execute("SELECT sequence, fingerprint FROM events WHERE uid = ?",
                              (uid,)).fetchone()
        if row is None:
            sequence, new = minimum, True
        elif row[1] != fingerprint or minimum > row[0]:
            sequence, new = max(row[0] + 1, minimum), True
        else:
            sequence, new = row[0], False
        if new and write:
            stamp = now()
            with self.transaction() as db:
                db.execute("INSERT INTO events (uid, sequence, fingerprint, updated) VALUES "
                           "(?, ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET sequence = excluded."
                           "sequence, fingerprint = excluded.fingerprint, updated = excluded."
                           "updated", (uid, sequence, fingerprint, stamp))
                db.execute("INSERT OR REPLACE INTO event_versions (uid, sequence, fields) "
                           "VALUES (?, ?, ?)", (uid, sequence, json.dumps(shown)))
                if row is None:
                    # Guests a journal from before events were tracked records as sent hold
                    # this version: they must not be invited twice.
                    db.execute("INSERT OR IGNORE INTO holders (uid, key, email, name, "
                               "sequence, cancelled, updated) SELECT ?, key, email, name, ?, "
                               "0, ? FROM deliveries WHERE campaign = ? AND state = 'sent'",
                               (uid, sequence, stamp, campaign))
        versions = {int(seq): json.loads(fields) for seq, fields in self.db.execute(
            "SELECT sequence, fields FROM event_versions WHERE uid = ?", (uid,))}
        if new and not write:
            versions[sequence] = shown
        return sequence, versions

    def tracked(self, uid: str) -> bool:
        """Whether the event has been sent before (its version is in the journal)."""
        return int(self.db.execute("SELECT EXISTS (SELECT 1 FROM events WHERE uid = ?)",
                               (uid,)).fetchone()[0]) == 1

    def held(self, uid: str, key: str) -> int | None:
        """The version of the event a guest's calendar holds (None: none, or cancelled)."""
        row = self.db.execute("SELECT sequence FROM holders WHERE uid = ? AND key = ? "
                              "AND cancelled = 0", (uid, key)).fetchone()
        return None if row is None else int(row[0])

    def holders(self, uid: str) -> dict[str, Holder]:
        """key → (key, email, name, language) of every guest whose calendar holds the
        event (not cancelled), by address."""
        return {str(k): (str(k), str(e), str(n), lang) for k, e, n, lang in self.db.execute(
            "SELECT key, email, name, language FROM holders WHERE uid = ? AND cancelled = 0 "
            "ORDER BY email", (uid,))}

    def removed_holders(self, campaign: str, uid: str) -> list[Holder]:
        """(key, email, name, language) of guests who hold the event (not cancelled) but
        are no longer on this campaign's list."""
        rows = self.db.execute(
            "SELECT h.key, h.email, h.name, h.language FROM holders h WHERE h.uid = ? AND "
            "h.cancelled = 0 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.campaign = ? "
            "AND d.key = h.key AND d.line IS NOT NULL) ORDER BY h.email",
            (uid, campaign)).fetchall()
        return [(str(k), str(e), str(n), lang) for k, e, n, lang in rows]

    def holder_counts(self, uid: str) -> tuple[int, int]:
        """(guests holding the current version, guests holding an older one)."""
        row = self.db.execute(
            "SELECT count(*) FILTER (WHERE h.sequence = e.sequence), "
            "count(*) FILTER (WHERE h.sequence < e.sequence) FROM holders h JOIN events e "
            "ON e.uid = h.uid WHERE h.uid = ? AND h.cancelled = 0", (uid,)).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def set_deadline(self, uid: str, deadline: str | None) -> None:
        """The moment the event's ``rsvp_by`` ends (UTC): later answers are late."""
        with self.transaction() as db:
            db.execute("UPDATE events SET deadline = ? WHERE uid = ?", (deadline, uid))

    def event_uids(self) -> list[str]:
        return [str(row[0]) for row in self.db.execute("SELECT uid FROM events ORDER BY uid")]

    def last_sent(self, uid: str) -> tuple[int, str] | None:
        """(SEQUENCE, fingerprint) of the version of the event last sent, or None."""
        row = self.db.execute("SELECT sequence, fingerprint FROM events WHERE uid = ?",
                              (uid,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def cancelled_count(self, uid: str) -> int:
        """Guests whose calendar was sent the event's cancellation."""
        return int(self.db.execute("SELECT count(*) FROM holders WHERE uid = ? AND "
                                   "cancelled = 1", (uid,)).fetchone()[0])

    def answer_notes(self, campaign: str) -> tuple[int, int]:
        """(answers with a comment, answers after the deadline) of a campaign's guests."""
        row = self.db.execute(
            "SELECT count(a.comment), count(*) FILTER (WHERE a.late = 1) FROM deliveries d "
            "JOIN campaigns c ON c.id = d.campaign JOIN answers a ON a.uid = c.event AND "
            "a.key = d.key WHERE d.campaign = ? AND d.line IS NOT NULL", (campaign,)).fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def guest_notes(self, campaign: str) -> tuple[list[str], list[tuple[str, str, str]]]:
        """The campaign's guests (on its list) who unsubscribed by mail, and (email,
        status, when) of those whose last bounce was soft (and who did not bounce hard)."""
        unsubscribed = [str(r[0]) for r in self.db.execute(
            "SELECT d.email FROM deliveries d JOIN suppressions s ON s.key = d.key WHERE "
            "d.campaign = ? AND d.line IS NOT NULL AND s.reason = 'unsubscribe' ORDER BY "
            "d.email", (campaign,))]
        soft = [(str(e), str(s), str(a)) for e, s, a in self.db.execute(
            "SELECT d.email, b.status, b.at FROM deliveries d JOIN soft_bounces b ON "
            "b.key = d.key WHERE d.campaign = ? AND d.line IS NOT NULL AND d.state != "
            "'bounced' ORDER BY d.email", (campaign,))]
        return unsubscribed, soft

    def template_of(self, campaign: str) -> str | None:
        row = self.db.execute("SELECT template FROM campaigns WHERE id = ?",
                              (campaign,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def event_of(self, campaign: str) -> str | None:
        row = self.db.execute("SELECT event FROM campaigns WHERE id = ?", (campaign,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def set_event(self, campaign: str, uid: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE campaigns SET event = ? WHERE id = ?", (uid, campaign))

    def answers_for(self, uid: str) -> dict[str, tuple[str, str]]:
        """key → (answer, answered_at) for an event."""
        return {str(k): (str(a), str(t)) for k, a, t in self.db.execute(
            "SELECT key, answer, answered_at FROM answers WHERE uid = ?", (uid,))}

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
