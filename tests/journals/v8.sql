-- A journal as mailer wrote it at version 8 (the sends of the daily quota): made by that
-- release's code, dumped with sqlite3's iterdump, for the upgrade tests.

CREATE TABLE answer_history (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    read_at TEXT NOT NULL
);
INSERT INTO "answer_history" VALUES('u1@example.org','p0@example.org',0,'accepted','2026-11-02T10:00:00+00:00','2026-11-02T10:05:00+00:00');
CREATE TABLE answers (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL, sequence INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
INSERT INTO "answers" VALUES('u1@example.org','p0@example.org','p0@example.org','accepted','2026-11-02T10:00:00+00:00',0);
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    template TEXT,
    recipients TEXT,
    event TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
INSERT INTO "campaigns" VALUES('t:liste.csv','t','liste.csv',NULL,'2026-11-01T10:00:00+00:00','2026-11-01T10:00:00+00:00');
CREATE TABLE deliveries (
    campaign TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    line INTEGER,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'deferred', 'failed', 'suppressed', 'bounced')),
    attempts INTEGER NOT NULL DEFAULT 0,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    first_attempt TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
INSERT INTO "deliveries" VALUES('t:liste.csv','p0@example.org','p0@example.org','Person 0',2,'sent',1,250,'OK','<p0@example.org>','2026-11-01T10:00:00+00:00','2026-11-01T10:00:00+00:00','2026-11-01T10:00:00+00:00');
INSERT INTO "deliveries" VALUES('t:liste.csv','p1@example.org','p1@example.org','Person 1',3,'failed',1,550,'no such user',NULL,NULL,'2026-11-01T10:00:00+00:00','2026-11-01T10:00:00+00:00');
CREATE TABLE event_versions (
    uid TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (uid, sequence)
) WITHOUT ROWID;
CREATE TABLE events (
    uid TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated TEXT NOT NULL
);
INSERT INTO "events" VALUES('u1@example.org',0,'f','2026-11-01T10:00:00+00:00');
CREATE TABLE holders (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    sequence INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL, language TEXT,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
INSERT INTO "holders" VALUES('u1@example.org','p0@example.org','p0@example.org','Person 0',0,0,'2026-11-01T10:00:00+00:00','nb');
CREATE TABLE inbox_seen (
    source TEXT NOT NULL,
    ident TEXT NOT NULL,
    PRIMARY KEY (source, ident)
) WITHOUT ROWID;
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO "meta" VALUES('secret','000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f');
CREATE TABLE sends (at TEXT NOT NULL, recipients INTEGER NOT NULL);
INSERT INTO "sends" VALUES('2026-11-01T10:00:00+00:00',2);
CREATE TABLE suppressions (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO "suppressions" VALUES('p9@example.org','p9@example.org','unsubscribe','2026-11-02T10:00:00+00:00');
CREATE TABLE unverified (
    kind TEXT NOT NULL,
    email TEXT NOT NULL,
    ident TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (kind, email)
) WITHOUT ROWID;
CREATE INDEX sends_at ON sends (at);
PRAGMA user_version = 8;
