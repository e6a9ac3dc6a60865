"""The campaign journal: one SQLite file that remembers, across runs, what each guest of
each campaign was sent, which version of an event each guest's calendar holds, and what
the inbox read back.

One module a job: ``store`` (the file, its safety, transactions), ``schema`` (the tables
and the numbered upgrades by ``PRAGMA user_version``), ``deliveries`` (guests' states:
sync, expiry, status), ``events`` (versions, holders, answers read), ``records`` (what
the inbox writes), ``erasure`` (forget, purge), ``recorder`` (a run's writes, group
commit), ``lock`` (one send per campaign). ``Journal`` is all of them on one connection.

States (``models.State``): queued → sending → sent | deferred | failed, and queued →
suppressed; sent → bounced when the inbox reads a hard bounce.
"""

from __future__ import annotations

from pathlib import Path

from .deliveries import EXCLUDED, ON_LIST, SUPPRESSED, Deliveries, Entry, Guest
from .erasure import Erasure
from .events import Events
from .lock import CampaignLock
from .recorder import Recorder
from .records import InboxRecords
from .schema import VERSION as SCHEMA_VERSION

__all__ = ["EXCLUDED", "ON_LIST", "SCHEMA_VERSION", "SUPPRESSED", "CampaignLock", "Entry",
           "Guest", "Journal", "Recorder"]


class Journal(Deliveries, Events, InboxRecords, Erasure):
    """An open journal file. Use as a context manager."""

    def __init__(self, path: Path, *, create: bool = True, secret: bytes | None = None
                 ) -> None:
        super().__init__(path, create=create, secret=secret)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recorder(self, campaign: str) -> Recorder:
        return Recorder(self, campaign)
