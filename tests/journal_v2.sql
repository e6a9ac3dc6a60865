-- The journal schema of mailer 0.1.0 (version 2), for the upgrade test.

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
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
-- No index on state: every state change would rewrite an index page too (a third of the
-- cost of each commit while sending), and counting a campaign's rows by state scans its
-- primary-key range in milliseconds.
DROP INDEX IF EXISTS deliveries_state;
