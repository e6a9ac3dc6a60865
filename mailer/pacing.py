"""Pacing that respects the relay across runs: the daily quota of a sending account,
counted from the journal (every accepted envelope recipient in any rolling 24 hours, the
archive copy included, as Microsoft 365 counts it), and the presets of the relays our
users have (Microsoft 365: 30 a minute and 10,000 recipients a day per mailbox; Google
Workspace: 2,000 a day per user), which fill in only what the settings leave unset."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Preset:
    name: str  # as the run's first line says it
    rate: float | None  # messages a second
    daily: int | None  # envelope recipients a day

    def describe(self, *, rate: bool = True, daily: bool = True) -> str | None:
        """The run's first line: the limits this preset fills in (``rate``, ``daily``:
        the settings left them unset); None when it fills in nothing."""
        parts = []
        if rate and self.rate is not None:
            parts.append(f"{self.rate * 60:g}/min")
        if daily and self.daily is not None:
            parts.append(f"{self.daily:,} recipients a day")
        return f"{self.name} limits: {', '.join(parts)}" if parts else None


PRESETS = {
    "microsoft365": Preset("Microsoft 365", 30 / 60, 10_000),
    "google-workspace": Preset("Google Workspace", None, 2_000),
}


def preset_for(provider: str | None, host: str) -> Preset | None:
    """The relay's preset: MAILER_SMTP_PROVIDER, else inferred from the host (none for
    ``none`` or a host we do not know)."""
    if provider is None:
        host = host.lower().rstrip(".")
        if host == "smtp.office365.com" or host.endswith(".mail.protection.outlook.com"):
            provider = "microsoft365"
        elif host in ("smtp.gmail.com", "smtp-relay.gmail.com"):
            provider = "google-workspace"
    return PRESETS.get(provider or "none")


def since(now: datetime) -> str:
    """The start of the quota's window, as the journal writes times."""
    return (now - WINDOW).astimezone(UTC).isoformat(timespec="seconds")


def quota(sends: list[tuple[str, int]], limit: int, cost: int, now: datetime
          ) -> tuple[int, datetime]:
    """(recipients the quota still allows, the moment a message of ``cost`` recipients
    can next go) given the accepted sends of the window, oldest first."""
    used = sum(n for _, n in sends)
    left = limit - used
    if left >= cost:
        return left, now
    for at, n in sends:  # the window slides: the oldest sends leave it first
        used -= n
        if limit - used >= cost:
            return left, datetime.fromisoformat(at) + WINDOW
    return left, now + WINDOW


def limit_line(limit: int, remain: int, next_at: datetime, timezone: str) -> str:
    """What a run says when the daily quota stops it (cron reads it; exit 0)."""
    when = next_at.astimezone(ZoneInfo(timezone))
    return (f"daily limit reached ({limit:,} in 24 h): {remain:,} remain; the next can go "
            f"at {when:%a %H:%M}")
