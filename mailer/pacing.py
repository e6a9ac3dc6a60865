"""Pacing that respects the relay across runs: the daily quota of a sending account,
counted from the journal (every accepted envelope recipient in any rolling 24 hours, the
archive copy included, as Microsoft 365 counts it), and the presets of the relays our
users have (Microsoft 365: 30 a minute and 10,000 recipients a day per mailbox; Google
Workspace: 2,000 a day per user), which fill in only what the settings leave unset."""

from __future__ import annotations

import re
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


def provider_of(provider: str | None, host: str) -> str | None:
    """MAILER_SMTP_PROVIDER, else the provider the relay's host names (None: none, or a
    host we do not know)."""
    if provider is None:
        host = host.lower().rstrip(".")
        if host == "smtp.office365.com" or host.endswith(".mail.protection.outlook.com"):
            provider = "microsoft365"
        elif host in ("smtp.gmail.com", "smtp-relay.gmail.com"):
            provider = "google-workspace"
    return provider if provider in PRESETS else None


def preset_for(provider: str | None, host: str) -> Preset | None:
    """The relay's preset (see ``provider_of``)."""
    found = provider_of(provider, host)
    return None if found is None else PRESETS[found]


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


# Replies that speak of the pace, not of the guest -----------------------------------------

# (code, enhanced status or "", words in the text or ""): a temporary reply that asks the
# sender to slow down. The guest is deferred as any 4xx; the whole run slows down.
SLOW_DOWN = (
    (421, "4.7.0", ""),  # Gmail, Yahoo and others: "try again later", rate or reputation
    (421, "4.7.28", ""),  # Gmail: unusual rate of unsolicited mail
    (450, "4.2.1", ""),  # Gmail: the recipient receives mail too fast
    (451, "4.7.500", ""),  # Outlook: "server busy, please try again later"
    (451, "4.7.650", ""),  # Outlook: temporarily rate limited (IP reputation)
    (454, "4.7.0", "throttl"),  # throttling
    (452, "4.5.3", "too many"),  # too many recipients or messages in a while
    (421, "", "too many"),  # "too many connections/messages", without a status
    (450, "", "rate"),  # "rate limited", "rate exceeded"
    (451, "", "throttl"),
)

# Permanent replies that say the mailbox's own daily sending quota is used up: no guest's
# fault; the run stops (75) and nobody changes state.
QUOTA_USED_UP = ("SubmissionQuotaExceeded", "5.4.5 Daily user sending limit exceeded",
                 "Daily user sending quota exceeded")


def asks_to_slow_down(code: int, text: str) -> bool:
    """Whether a reply (its code, and its text with the enhanced status first) asks the
    sender to slow down."""
    if not 400 <= code < 500:
        return False
    lowered = text.lower()
    status = lowered.split(" ", 1)[0]
    return any(code == c and (not s or status == s) and (not w or w in lowered)
               for c, s, w in SLOW_DOWN)


def quota_used_up(code: int, text: str) -> bool:
    return 500 <= code < 600 and any(marker.lower() in text.lower()
                                     for marker in QUOTA_USED_UP)


# The send window and the start ----------------------------------------------------------

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6,
         "man": 0, "tir": 1, "ons": 2, "tor": 3, "fre": 4, "lør": 5, "søn": 6}
_RANGE = re.compile(r"\s*([a-zæøå]{3})(?:\s*-\s*([a-zæøå]{3}))?\s+(\d{1,2}):(\d{2})\s*-\s*"
                    r"(\d{1,2}):(\d{2})\s*\Z", re.I)


@dataclass(frozen=True)
class Window:
    """When a campaign may send, in local time: ranges of days with a time of day each,
    e.g. ``Mon-Fri 08:00-16:00,Sat 10:00-12:00`` (the end is not in the window)."""

    text: str
    ranges: tuple[tuple[frozenset[int], int, int], ...]  # (weekdays, start, end) in minutes

    def _open(self, moment: datetime) -> datetime | None:
        """The end of the range ``moment`` (local) lies in, or None when it lies in none."""
        minute = moment.hour * 60 + moment.minute
        for days, start, end in self.ranges:
            if moment.weekday() in days and start <= minute < end:
                midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
                return midnight + timedelta(minutes=end)
        return None

    def closes(self, now: datetime, timezone: str) -> datetime | None:
        """When the window closes, if it is open ``now`` (else None)."""
        return self._open(now.astimezone(ZoneInfo(timezone)))

    def opens(self, now: datetime, timezone: str) -> datetime:
        """The next moment the window opens after ``now`` (within two weeks)."""
        local = now.astimezone(ZoneInfo(timezone))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        for day in range(15):
            date = midnight + timedelta(days=day)
            for days, start, _ in sorted(self.ranges, key=lambda r: r[1]):
                moment = (date + timedelta(minutes=start)).replace(tzinfo=local.tzinfo)
                if date.weekday() in days and moment > local:
                    return moment
        return local  # a window with no range at all is refused when parsed


def parse_window(text: str) -> Window:
    """``Mon-Fri 08:00-16:00,Sat 10:00-12:00`` → a Window; ValueError saying why."""
    ranges = []
    for part in text.split(","):
        found = _RANGE.match(part)
        if found is None:
            raise ValueError(f"{part.strip()!r}: use days and times, e.g. "
                             f"'Mon-Fri 08:00-16:00,Sat 10:00-12:00'")
        first, last, h1, m1, h2, m2 = found.groups()
        try:
            a, b = _DAYS[first.lower()], _DAYS[(last or first).lower()]
        except KeyError:
            raise ValueError(f"{part.strip()!r}: days are Mon Tue Wed Thu Fri Sat Sun"
                             ) from None
        days = frozenset(range(a, b + 1)) if a <= b else frozenset([*range(a, 7),
                                                                    *range(0, b + 1)])
        start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if not (0 <= start < end <= 24 * 60 and int(m1) < 60 and int(m2) < 60):
            raise ValueError(f"{part.strip()!r}: the end must be after the start, in the "
                             f"same day (00:00-24:00)")
        ranges.append((days, start, end))
    return Window(text.strip(), tuple(ranges))


def parse_start(text: str, timezone: str) -> datetime:
    """``2027-09-01 09:00`` (in ``timezone``) → that moment; ValueError saying why."""
    try:
        moment = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M")
    except ValueError:
        raise ValueError("use YYYY-MM-DD HH:MM, e.g. 2027-09-01 09:00") from None
    return moment.replace(tzinfo=ZoneInfo(timezone))


def when(moment: datetime, timezone: str) -> str:
    """A moment as a run says it: ``Mon 08:00`` within a week, else ``2027-09-01 09:00``."""
    local = moment.astimezone(ZoneInfo(timezone))
    if local - datetime.now(local.tzinfo) < timedelta(days=6):
        return f"{local:%a %H:%M}"
    return f"{local:%Y-%m-%d %H:%M}"


def _duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def estimate(remain: int, rate: float | None, daily: int | None, left: int | None,
             cost: int, now: datetime, timezone: str) -> str | None:
    """How long ``remain`` messages take at the current limits: ``2,114 remain: about 70
    min at 30/min; after the daily limit, done Thu 10:52`` (None without a limit to
    reckon with). ``left``: the recipients the daily quota allows now."""
    if remain <= 0 or (rate is None and daily is None):
        return None
    text = f"{remain:,} remain"
    seconds = remain / rate if rate else 0.0
    if rate:
        text += f": about {_duration(seconds)} at {rate * 60:.3g}/min"
    if daily is not None and left is not None and remain * cost > left:
        # what today's quota leaves goes now, the rest a day at a time
        later = remain * cost - max(left, 0)
        days = -(-later // daily)  # whole days after this one
        last = later - (days - 1) * daily
        done = now + WINDOW * days + timedelta(seconds=(last / cost) / rate if rate else 0)
        text += f"{';' if rate else ':'} after the daily limit, done {when(done, timezone)}"
    return text
