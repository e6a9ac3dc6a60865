-- A journal as mailer wrote it at version 5 (commit d57d5fc): its schema, taken from
-- that commit's mailer/journal.py, and a few rows, for the upgrade tests.

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

INSERT INTO campaigns (id, template, recipients, created, updated) VALUES ('t:liste.csv', 't', 'liste.csv', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
INSERT INTO deliveries (campaign, key, email, name, line, state, attempts, code, reply, message_id, created, updated) VALUES ('t:liste.csv', 'p0@example.org', 'p0@example.org', 'Person 0', 2, 'sent', 1, 250, 'OK', '<p0@example.org>', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
INSERT INTO deliveries (campaign, key, email, name, line, state, attempts, code, reply, created, updated) VALUES ('t:liste.csv', 'p1@example.org', 'p1@example.org', 'Person 1', 3, 'failed', 1, 550, 'no such user', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
INSERT INTO events (uid, sequence, fingerprint, updated) VALUES ('u1@example.org', 0, 'f', '2026-11-01T10:00:00+00:00');
INSERT INTO holders (uid, key, email, name, sequence, cancelled, updated) VALUES ('u1@example.org', 'p0@example.org', 'p0@example.org', 'Person 0', 0, 0, '2026-11-01T10:00:00+00:00');
INSERT INTO answers (uid, key, email, answer, answered_at) VALUES ('u1@example.org', 'p0@example.org', 'p0@example.org', 'accepted', '2026-11-02T10:00:00+00:00');
INSERT INTO suppressions (key, email, reason, at) VALUES ('p9@example.org', 'p9@example.org', 'unsubscribe', '2026-11-02T10:00:00+00:00');
PRAGMA user_version = 5;
