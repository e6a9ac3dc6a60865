"""The journal's tables as the current version has them, and the numbered upgrades that
bring a journal written by an earlier release up to it (``PRAGMA user_version``).

A new journal is created at the current version in one script. An older one runs every
upgrade after its version, in order, in one transaction; each step is what that release
changed. The CHECK on a guest's state is generated from ``models.State``.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable

from ..models import State

VERSION = 9

STATE_CHECK = "CHECK (state IN ({}))".format(", ".join(f"'{s.value}'" for s in State))

CAMPAIGNS = """
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    template TEXT,
    recipients TEXT,
    event TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
"""

DELIVERIES = f"""
CREATE TABLE deliveries (
    campaign TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    line INTEGER,
    state TEXT NOT NULL {STATE_CHECK},
    attempts INTEGER NOT NULL DEFAULT 0,
    code INTEGER,
    reply TEXT,
    message_id TEXT,
    first_attempt TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (campaign, key)
) WITHOUT ROWID;
"""
# No index on state: every state change would rewrite an index page too (a third of the
# cost of each commit while sending), and counting a campaign's rows by state scans its
# primary-key range in milliseconds.

# Calendar events: the version last sent (SEQUENCE and what a calendar shows), every
# version's fields (to tell a guest what changed), and which version each guest holds.
EVENTS = """
CREATE TABLE events (
    uid TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE event_versions (
    uid TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (uid, sequence)
) WITHOUT ROWID;
CREATE TABLE holders (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    sequence INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
"""

# What the inbox read: answers per event and guest, addresses never to mail again
# (bounces, unsubscribes), and the messages already read (so none counts twice).
INBOX = """
CREATE TABLE answers (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    email TEXT NOT NULL,
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (uid, key)
) WITHOUT ROWID;
CREATE TABLE suppressions (
    key TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE inbox_seen (
    source TEXT NOT NULL,
    ident TEXT NOT NULL,
    PRIMARY KEY (source, ident)
) WITHOUT ROWID;
"""

# Since version 6: the journal's secret (the key of the MAC in every Message-ID, so that
# a bounce can be matched only through a Message-ID this journal made), every answer ever
# read (an answer to an older version of the event is kept here and never replaces one to
# the current version), and what the inbox could not verify, for a human to confirm.
TRUST = """
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE answer_history (
    uid TEXT NOT NULL,
    key TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    answer TEXT NOT NULL,
    answered_at TEXT NOT NULL,
    read_at TEXT NOT NULL
);
CREATE TABLE unverified (
    kind TEXT NOT NULL,
    email TEXT NOT NULL,
    ident TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (kind, email)
) WITHOUT ROWID;
"""

# A new journal: the tables as version 5 made them, then every later upgrade (so a new
# journal and an upgraded one are the same by construction).
BASE, BASE_VERSION = CAMPAIGNS + DELIVERIES + EVENTS + INBOX, 5


def _to_2(db: sqlite3.Connection) -> None:
    """0.1.0 dropped the index on state (see DELIVERIES)."""
    db.execute("DROP INDEX IF EXISTS deliveries_state")


def _to_3(db: sqlite3.Connection) -> None:
    """When a guest was first tried: a deferred guest expires MAILER_RETRY_FOR after it."""
    db.execute("ALTER TABLE deliveries ADD COLUMN first_attempt TEXT")


def _to_4(db: sqlite3.Connection) -> None:
    """Calendar events: a campaign's event, its versions, who holds which."""
    db.execute("ALTER TABLE campaigns ADD COLUMN event TEXT")
    _script(db, EVENTS)


def _to_5(db: sqlite3.Connection) -> None:
    """The inbox: answers, suppressions, messages read; the state ``bounced``, which the
    CHECK of a guest's state did not allow (SQLite cannot change a CHECK: the table is
    copied into a new one)."""
    _rebuild_deliveries(db)
    _script(db, INBOX)


def _to_6(db: sqlite3.Connection) -> None:
    """The journal's secret, the sequence an answer was given to, every answer read, and
    what the inbox could not verify (see TRUST). Message-IDs sent before keep their form:
    a bounce of one of them is matched by the Message-ID as the journal recorded it."""
    db.execute("ALTER TABLE answers ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0")
    _script(db, TRUST)


def _to_7(db: sqlite3.Connection) -> None:
    """The language of the message each guest's calendar got: a cancellation sent to a
    guest taken off the list speaks it (the list no longer says it)."""
    db.execute("ALTER TABLE holders ADD COLUMN language TEXT")


def _to_8(db: sqlite3.Connection) -> None:
    """Every transaction the relay accepted, when and for how many envelope recipients
    (the archive copy counts, as Microsoft counts it): the daily quota across runs and
    campaigns of one sending account."""
    db.execute("CREATE TABLE sends (at TEXT NOT NULL, recipients INTEGER NOT NULL)")
    db.execute("CREATE INDEX sends_at ON sends (at)")


def _to_9(db: sqlite3.Connection) -> None:
    """Answers from every guest: an answer's comment (an answer link's text, a REPLY's
    COMMENT) and whether it came after the event's deadline (``rsvp_by``, kept per event
    as the moment it ends, for the inbox, which reads no event file); soft bounces, for
    ``status`` to show."""
    for table in ("answers", "answer_history"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN comment TEXT")
    db.execute("ALTER TABLE answers ADD COLUMN late INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE events ADD COLUMN deadline TEXT")
    db.execute("CREATE TABLE soft_bounces (key TEXT PRIMARY KEY, email TEXT NOT NULL, "
               "status TEXT NOT NULL, at TEXT NOT NULL) WITHOUT ROWID")


UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5, 6: _to_6, 7: _to_7, 8: _to_8, 9: _to_9}


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of a script inside the caller's transaction (executescript
    would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _rebuild_deliveries(db: sqlite3.Connection) -> None:
    columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(deliveries)"))
    db.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
    db.execute(DELIVERIES)
    db.execute(f"INSERT INTO deliveries ({columns}) SELECT {columns} "  # noqa: S608
               f"FROM deliveries_old")
    db.execute("DROP TABLE deliveries_old")


def upgrade(db: sqlite3.Connection, secret: bytes | None = None) -> int:
    """Bring a journal (a new, empty file: version 0) to VERSION, in one transaction, and
    return the version it had (a new journal: 5, as it is made). The journal's secret is
    ``secret`` when it has none yet (else a new random one). ValueError for a journal of a
    newer release, or a database that is not a journal."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == VERSION:
        return version
    db.execute("BEGIN IMMEDIATE")  # another process may be upgrading it: read again
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > VERSION:
            raise ValueError(f"written by a newer mailer (journal version {version}); "
                             f"upgrade mailer to use it")
        tables = {str(row[0]) for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version == 0 and tables:  # before journals had a version: the first schema
            if "deliveries" not in tables:
                raise ValueError("a database of something else, not a mailer journal")
            version = 1
        if version == 0:
            _script(db, BASE)
            version = BASE_VERSION
        for step in range(version + 1, VERSION + 1):
            UPGRADES[step](db)
        db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('secret', ?)",
                   ((secret or secrets.token_bytes(32)).hex(),))
        db.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return version
