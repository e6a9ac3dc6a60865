"""The journal file: opened safely (never through a symlink, owner-only), upgraded to the
current schema, and the transactions every part of the journal writes in.

WAL mode with synchronous=FULL: every commit is on disk (the write-ahead log fsync'ed)
before the next step depends on it, so a commit survives the machine dying, not only the
process. The delivery promise rests on it: a ``sent`` mark that only reached the page
cache would roll back after a power loss, and that guest would be sent the message again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ConfigError
from ..files import private_dir, private_file
from . import schema


def now() -> str:
    """The time a row is written, as the journal keeps it (UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    """An open journal file: the connection and its transactions."""

    def __init__(self, path: Path, *, create: bool = True, secret: bytes | None = None
                 ) -> None:
        self.path = path
        if path.is_symlink():
            raise ConfigError(f"{path}: the journal is a symbolic link: refusing to follow it "
                              f"(give the real path with --journal or MAILER_JOURNAL)")
        if not path.exists():
            if not create:
                raise ConfigError(f"{path}: no journal here (nothing has been sent with it)")
            try:
                private_dir(path.parent)
                private_file(path)
            except OSError as exc:
                raise ConfigError(f"{path}: cannot create the journal: {exc.strerror}") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Small pages: each commit while sending writes the pages it touched to the WAL,
            # and 1 KiB pages make that a quarter of the bytes (a new journal only).
            self.db.execute("PRAGMA page_size=1024")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # A checkpoint (WAL to the database, and fsync) every 8 MiB of WAL instead of
            # every 1 MiB: a send commits a few pages per message, and each checkpoint cost
            # it more than the commits in between (~15% of the journal's time).
            self.db.execute("PRAGMA wal_autocheckpoint=8192")
            self.db.execute("PRAGMA busy_timeout=10000")
            schema.upgrade(self.db, secret)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a usable journal: {exc}") from None
        self.protect()

    def protect(self) -> None:
        """The WAL and shared-memory files hold the same personal data: owner only."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (the write lock at once: other processes write the same file),
        COMMIT, or ROLLBACK on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def secret(self) -> bytes:
        """The journal's own secret: the key of the MAC in every Message-ID (made once,
        when the journal was created or upgraded to version 6)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        return bytes.fromhex(str(row[0]))

    def note(self, name: str) -> str | None:
        """A value the journal keeps for mailer itself (``meta``), or None."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def notes(self, prefix: str) -> list[tuple[str, str]]:
        """(name, value) of the values kept under names that start with ``prefix``."""
        return [(str(n), str(v)) for n, v in self.db.execute(
            "SELECT name, value FROM meta WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix))]

    def keep_note(self, name: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO "
                       "UPDATE SET value = excluded.value", (name, value))

    def compact(self) -> None:
        """Rewrite the file without free pages, so deleted rows are really gone."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.protect()

    def close(self) -> None:
        self.db.close()
