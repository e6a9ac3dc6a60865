"""Every command of the CLI as one library call, for Python users and for ``cli.py``
(which only parses options, calls one of these and prints): ``validate``, ``send``,
``dry_run``, ``test_send``, ``status``, ``read_inbox`` (``mailer inbox``), ``purge``,
``forget``.

Each takes plain values (paths, names) and a ``Settings`` (default: from the environment
and ``.env``, as the CLI reads them), and raises a ``MailerError`` whose ``exit_code`` is
the CLI's. ``import mailer; mailer.send(...)`` works too (see ``mailer/__init__.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import InputError
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from .calendar import Event
    from .campaign import Campaign, CheckReport
    from .diagnose import Check
    from .diagnose import Report as DoctorReport
    from .inbox import Tally
    from .outbox import Outbox
    from .report import Reporter
    from .run import Result, SendOptions


@dataclass
class ListOptions:
    """What a campaign is made of besides its list and template (the options that
    ``validate`` and ``send`` share)."""

    variables: Mapping[str, str] = field(default_factory=dict)
    suppress: Sequence[Path] = ()
    where: Sequence[str] = ()
    attach: Sequence[Path] = ()
    attachments_dir: Path | None = None
    sheet: str | None = None
    campaign_id: str | None = None


def campaign(recipients: Path, template: str | None, settings: Settings,
             options: ListOptions | None = None, *, need_sender: bool = True) -> Campaign:
    """The campaign of a list (a path, or ``-`` for standard input) and a template."""
    from .campaign import Campaign

    options = options or ListOptions()
    return Campaign(settings, recipients, template, variables=options.variables,
                    suppress=options.suppress, campaign_id=options.campaign_id,
                    need_sender=need_sender, where=options.where, attach=options.attach,
                    attachments_dir=options.attachments_dir, sheet=options.sheet)


def validate(recipients: Path, template: str | None = None, *,
             settings: Settings | None = None, options: ListOptions | None = None
             ) -> CheckReport:
    """Check a list (and a template against it, rendering every message); nothing is
    sent or written. The report's ``ok`` says whether a send could go ahead."""
    from .plan import read_knowledge

    settings = settings or load_settings()
    made = campaign(recipients, template, settings, options, need_sender=False)
    knowledge, journal = read_knowledge(settings.journal, made.id, uid=made.uid)
    if journal is not None:
        journal.close()
    made.use_knowledge(knowledge)
    return made.check(mail_clients=True)


def send(recipients: Path, template: str, *, settings: Settings | None = None,
         options: ListOptions | None = None, send_options: SendOptions | None = None,
         reporter: Reporter | None = None) -> Result:
    """Send the template to every guest of the list that the plan says is due, recording
    each in the journal (``Result.exit_code`` is the CLI's)."""
    from . import run
    from .report import Reporter

    settings = settings or load_settings()
    made = campaign(recipients, template, settings, options)
    return run.send(made, settings.journal, send_options or run.SendOptions(),
                    reporter or Reporter())


def dry_run(recipients: Path, template: str, outbox: Path = Path("outbox"), *,
            settings: Settings | None = None, options: ListOptions | None = None,
            send_options: SendOptions | None = None, reporter: Reporter | None = None
            ) -> Outbox:
    """Write what ``send`` would send into ``outbox`` (.eml files and a preview page)."""
    from . import run
    from .report import Reporter

    settings = settings or load_settings()
    made = campaign(recipients, template, settings, options)
    return run.dry_run(made, outbox, reporter or Reporter(), settings.journal, send_options)


def test_send(recipients: Path, template: str, to: Sequence[str],
              recipient: str | None = None, *, settings: Settings | None = None,
              options: ListOptions | None = None, send_options: SendOptions | None = None,
              reporter: Reporter | None = None) -> Result:
    """Send one guest's message (the first, or ``recipient``'s) only to ``to``."""
    from . import run
    from .report import Reporter

    settings = settings or load_settings()
    made = campaign(recipients, template, settings, options)
    return run.test_send(made, list(to), recipient, send_options or run.SendOptions(),
                         reporter or Reporter())


def status(campaign_id: str | None = None, fmt: str = "table", *,
           out: IO[str] | None = None, output: Path | None = None,
           settings: Settings | None = None, guest_list: Path | None = None,
           sheet: str | None = None) -> int | None:
    """Write the journal's status (``export.FORMATS``) to ``out`` (default stdout), or to
    the file ``output`` (owner-only: it holds personal data; every format); returns the
    guests written to a workbook. ``guest_list`` joins that list's own columns to every
    guest (the attendee list); an event is compared with its ``event.toml`` as it is now."""
    from . import export
    from .files import open_private
    from .journal import Journal

    settings = settings or load_settings()
    extras = export.Extras(language=settings.language)
    if guest_list is not None:
        extras.columns, extras.guests = _list_columns(guest_list, sheet)
    with Journal(settings.journal, create=False) as journal:
        extras.events = {cid: _event_now(settings, journal.template_of(cid))
                         for cid in journal.campaigns() if journal.event_of(cid) is not None}
        if output is None or fmt == "xlsx":
            return export.status(journal, campaign_id, fmt, out or sys.stdout, output, extras)
        with open(open_private(output, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8",
                  newline="") as handle:
            return export.status(journal, campaign_id, fmt, handle, extras=extras)


def _list_columns(path: Path, sheet: str | None) -> tuple[list[str], dict[str, list[str]]]:
    """The list's own columns (not its address or name: the journal has those) and their
    values by guest. A row with a problem is passed over: ``validate`` names it."""
    from .export import FIELDS
    from .models import Recipient
    from .recipients import RecipientList

    listing = RecipientList(path, sheet)
    guests: dict[str, list[str]] = {}
    keep: list[int] | None = None
    columns: list[str] = []
    for item in listing.scan():
        if not isinstance(item, Recipient):
            continue
        if keep is None:
            skip = {listing.email_column, listing.name_column}
            keep = [i for i, h in enumerate(listing.headers)
                    if i not in skip and h.strip() and h.strip().lower() not in FIELDS]
            columns = [listing.headers[i].strip() for i in keep]
        row = item.row
        guests[item.address.key] = [row[i] if i < len(row) else "" for i in keep]
    return columns, guests


def _event_now(settings: Settings, template: str | None) -> Event | None:
    """A campaign's event as its file says it now (None when it cannot be read: the
    status then says what the journal knows)."""
    from .calendar import find_event

    if template is None:
        return None
    folder = settings.templates_dir / template
    try:
        found = find_event(folder, settings.templates_dir) if folder.is_dir() else None
    except InputError:
        return None
    return None if found is None else found[0]


def read_inbox(*, maildir: Path | None = None, mbox: Path | None = None, dry_run: bool = False,
          quiet: bool = False, say: Callable[[str], None] | None = None,
          settings: Settings | None = None) -> Tally:
    """Read answers, bounces and unsubscribes from the organiser's mailbox (IMAP from the
    settings, or a local Maildir or mbox) into the journal; read-only for the mailbox."""
    from . import inbox as reader
    from .journal import Journal

    settings = settings or load_settings()
    if maildir is not None:
        source, items = f"maildir:{os.path.realpath(maildir)}", reader.maildir_items(maildir)
    elif mbox is not None:
        source, items = f"mbox:{os.path.realpath(mbox)}", reader.mbox_items(mbox)
    else:
        from .connections import imap

        source, items = imap.items(settings.imap())
    with Journal(settings.journal, create=False) as journal:
        return reader.read(journal, source, items, unsubscribe_to=settings.unsubscribe_mailto,
                           dry_run=dry_run, say=say or (lambda text: None), quiet=quiet,
                           authserv=settings.inbox_trusted_authserv,
                           rsvp_key=settings.rsvp_key(journal.secret))


def purge(campaign_id: str, *, settings: Settings | None = None) -> int:
    """Delete a campaign's rows and compact the journal; the guests deleted."""
    from .journal import CampaignLock, Journal

    settings = settings or load_settings()
    with Journal(settings.journal, create=False) as journal:
        journal.require_campaign(campaign_id)  # a typo must not look like a purge that worked
        with CampaignLock(settings.journal, campaign_id):  # never under a running send
            return journal.purge(campaign_id)


def forget(key: str, *, settings: Settings | None = None) -> int:
    """Remove an address (its key: ``address.check_address(a).key``) from everything in
    the journal, under every campaign's lock; the rows deleted."""
    from .journal import CampaignLock, Journal

    settings = settings or load_settings()
    with Journal(settings.journal, create=False) as journal, contextlib.ExitStack() as locks:
        for name in journal.campaigns():  # never under a running send's feet
            locks.enter_context(CampaignLock(settings.journal, name))
        return journal.forget(key)


def login(*, say: Callable[[str], None], settings: Settings | None = None) -> str:
    """Sign in interactively with MAILER_OAUTH_PROVIDER (Microsoft: the device code;
    Google: the browser, with a redirect to 127.0.0.1) and keep the sign-in in
    MAILER_OAUTH_CACHE; returns the account."""
    from .oauth import signed_in

    settings = settings or load_settings()
    return signed_in(settings).sign_in(say)


def login_check(*, settings: Settings | None = None) -> list[str]:
    """Get a token without asking anyone and log in to SMTP (and IMAP when it is set),
    sending nothing: a line for each."""
    import asyncio

    from .connections import imap
    from .connections.smtp import connect

    settings = settings or load_settings()
    tokens = settings.tokens
    if tokens is None:
        from .errors import ConfigError

        raise ConfigError("no OAuth sign-in is set: MAILER_OAUTH_PROVIDER (then mailer "
                          "login) or MAILER_OAUTH_TOKEN_COMMAND")
    domain = settings.sender_mailbox.domain if settings.sender else "localhost"
    smtp = settings.smtp(domain)
    lines = [f"signed in as {smtp.login.username} ({tokens.setting})"]

    async def once() -> None:
        conn = await connect(smtp)
        await conn.close()

    asyncio.run(once())
    lines.append(f"SMTP {smtp.where}: login accepted (nothing sent)")
    if settings.imap_host is not None:
        config = settings.imap()
        count = imap.check(config)
        lines.append(f"IMAP {config.where}: login accepted, {config.folder} holds {count} "
                     f"message{'s' if count != 1 else ''}")
    return lines


def logout(*, settings: Settings | None = None) -> bool:
    """Delete the sign-in cache (MAILER_OAUTH_CACHE); whether there was one."""
    from .oauth import logout as forget_sign_in

    return forget_sign_in(settings or load_settings())


def dkim_key(selector: str, out: Path | None = None, *,
             settings: Settings | None = None) -> tuple[Path, str]:
    """Write a new DKIM private key (owner-only; default ``SELECTOR.private.pem`` here,
    never over an existing file): (its path, the DNS TXT record to publish, as a zone
    file line)."""
    from .dkim import dns_record, new_key, zone_line

    settings = settings or load_settings()
    path = out or Path(f"{selector}.private.pem")
    key = new_key(path)
    domain = settings.dkim_domain or (settings.sender_mailbox.domain if settings.sender
                                      else None)
    return path, zone_line(selector, domain, dns_record(key))


def doctor(*, template: str | None = None, guests: Path | None = None,
           round_trip: bool = False, say: Callable[[Check], None] | None = None,
           settings: Settings | None = None) -> DoctorReport:
    """Check a set-up before a send: settings, relay, inbox, DNS, template, journal, and
    with ``round_trip`` one message through the relay and back (``diagnose.run``)."""
    from .diagnose import run as checkup

    settings = settings or load_settings()
    return checkup(settings, template=template, guests=guests, round_trip=round_trip,
                      say=say)
