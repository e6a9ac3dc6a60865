"""The optional calendar event of a template: ``event.toml`` → Event → ICS bytes."""

from __future__ import annotations

import hashlib
import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .address import Mailbox, mailbox_setting, parse_mailbox
from .errors import InputError

EVENT_FILE = "event.toml"
ICS_FILENAME = "invitasjon.ics"
ICS_CONTENT_TYPE = 'text/calendar; charset="utf-8"; method=PUBLISH'


class Event(BaseModel):
    """A calendar event as written in ``event.toml``; times are local to ``timezone``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str = Field(min_length=1)
    start: datetime
    end: datetime
    timezone: str = "Europe/Oslo"
    location: str | None = None
    description: str | None = None
    url: str | None = None
    organizer: str | None = None
    uid: str | None = None
    sequence: int = Field(0, ge=0, le=2**31 - 1)  # RFC 5545: INTEGER is 32-bit signed

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                             f"Europe/Oslo)") from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            raise ValueError("give a local date-time (e.g. 2022-10-27T10:15:00) and set "
                             "'timezone'")
        return value

    _organizer = field_validator("organizer")(mailbox_setting)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// or http://")
        if value is not None and (not value.isprintable() or " " in value):
            raise ValueError("must be one URL without spaces or line breaks")
        return value

    @field_validator("uid", "summary", "timezone")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be one line without control characters")
        return value

    @model_validator(mode="after")
    def _order(self) -> Event:
        if self.end <= self.start:
            raise ValueError("'end' must be after 'start'")
        return self

    # What templates use ---------------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def starts(self) -> datetime:
        """Start as an aware date-time in the event's time zone."""
        return self.start.replace(tzinfo=self.zone)

    @property
    def ends(self) -> datetime:
        return self.end.replace(tzinfo=self.zone)

    @property
    def organizer_mailbox(self) -> Mailbox | None:
        return None if self.organizer is None else parse_mailbox(self.organizer)

    def stable_uid(self, template: str, domain: str) -> str:
        """The UID from the file, else one derived from the template: the same for every
        recipient and every run, so an update with a higher SEQUENCE replaces the event."""
        if self.uid:
            return self.uid
        digest = hashlib.sha256(template.encode()).hexdigest()[:16]
        return f"{digest}@{domain}"

    def to_ics(self, uid: str, stamp: datetime | None = None) -> bytes:
        """An RFC 5545 calendar (METHOD:PUBLISH) with VTIMEZONE, built with icalendar."""
        import icalendar

        cal = icalendar.Calendar()
        cal.add("prodid", "-//mailer//invitation//EN")
        cal.add("version", "2.0")
        cal.add("calscale", "GREGORIAN")
        cal.add("method", "PUBLISH")
        event = icalendar.Event()
        event.add("uid", uid)
        event.add("sequence", self.sequence)
        event.add("dtstamp", (stamp or datetime.now(UTC)).replace(microsecond=0))
        event.add("dtstart", self.starts)
        event.add("dtend", self.ends)
        event.add("summary", self.summary)
        if self.location:
            event.add("location", self.location)
        if self.description:
            event.add("description", self.description)
        if self.url:
            event.add("url", self.url)
        organizer = self.organizer_mailbox
        if organizer is not None:
            address = icalendar.vCalAddress(f"mailto:{organizer.address.ascii}")
            if organizer.name:
                address.params["cn"] = icalendar.vText(organizer.name)
            event.add("organizer", address)
        event.add("status", "CONFIRMED")
        event.add("transp", "OPAQUE")
        cal.add_component(event)
        cal.add_missing_timezones()
        data: bytes = cal.to_ical()
        return data


def load_event(folder: Path, templates_dir: Path) -> Event | None:
    """Read ``event.toml`` of a template folder; None when there is none."""
    path = folder / EVENT_FILE
    if not os.path.lexists(path):
        return None
    real, root = os.path.realpath(path), os.path.realpath(templates_dir)
    if os.path.commonpath([real, root]) != root:
        raise InputError(f"{path}: lies outside the templates folder (a symlink?)")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8: save the file as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: {exc}") from None
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in error["loc"])
        reason = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            reason = "missing"
        elif error["type"] == "extra_forbidden":
            reason = "unknown field"
        where = f"field '{field}': " if field else ""
        raise InputError(f"{path}: {where}{reason}") from None
