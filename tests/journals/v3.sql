-- A journal as mailer wrote it at version 3 (commit 8bfec8b): its schema, taken from
-- that commit's mailer/journal.py, and a few rows, for the upgrade tests.

CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    template TEXT,
    recipients TEXT,
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
        ('queued', 'sending', 'sent', 'deferred', 'failed', 'suppressed')),
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

INSERT INTO campaigns (id, template, recipients, created, updated) VALUES ('t:liste.csv', 't', 'liste.csv', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
INSERT INTO deliveries (campaign, key, email, name, line, state, attempts, code, reply, message_id, created, updated) VALUES ('t:liste.csv', 'p0@example.org', 'p0@example.org', 'Person 0', 2, 'sent', 1, 250, 'OK', '<p0@example.org>', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
INSERT INTO deliveries (campaign, key, email, name, line, state, attempts, code, reply, created, updated) VALUES ('t:liste.csv', 'p1@example.org', 'p1@example.org', 'Person 1', 3, 'failed', 1, 550, 'no such user', '2026-11-01T10:00:00+00:00', '2026-11-01T10:00:00+00:00');
PRAGMA user_version = 3;
