"""The command line: parse options, call the library, map errors to one line + exit code."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from .errors import EXIT_CONFIG, EXIT_TEMPFAIL, MailerError

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int) -> NoReturn:
    """End the command with one line on stderr and a documented exit code."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except MailerError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_TEMPFAIL)
        except BrokenPipeError:
            # The reader went away (``mailer status --format csv | head -1``): what it
            # wanted it has; end quietly, and keep Python from complaining at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:  # a full disk, a folder that cannot be written
            where = f"{exc.filename}: " if exc.filename else ""
            code = EXIT_CONFIG if exc.errno in _CONFIG_ERRNOS else EXIT_TEMPFAIL
            fail(f"{where}{exc.strerror or exc}", code)
        except sqlite3.Error as exc:
            fail(f"the journal cannot be used: {exc}", EXIT_TEMPFAIL)
    return wrapper


# Errors of the file system that only a change of settings or permissions fixes.
_CONFIG_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                  errno.EEXIST, errno.ELOOP}


def _vars(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE with KEY a name such as "
                                     f"arrangement_dato")
        result[key] = value
    return result


def _checked(parse: Callable[[str], object]) -> Callable[..., str | None]:
    """A click callback that keeps an option's text when ``parse`` reads it, and makes
    its ValueError a usage error (exit 2). Settings parse the text again, once."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        return value
    return callback


def _rate(text: str) -> object:
    from .ratelimit import parse_rate

    return parse_rate(text)


def _duration(text: str) -> object:
    from .settings import parse_duration

    return parse_duration(text)


def _window(text: str) -> object:
    from .pacing import parse_window

    return parse_window(text)


def _addresses(ctx: click.Context, param: click.Parameter,
               values: Sequence[str]) -> tuple[str, ...]:
    from .address import AddressError, check_address

    for value in values:
        try:
            check_address(value)
        except AddressError as exc:
            raise click.BadParameter(f"{value!r}: {exc}") from None
    return tuple(values)


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _addresses(ctx, param, [value])[0]


def template_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--sheet", metavar="NAME",
                        help="The worksheet of an .xlsx list [default: the first].")(func)
    func = click.option("--attachments-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Folder the list's attachment column names files in "
                             "[default: the list's folder].")(func)
    func = click.option("--attach", multiple=True,
                        type=click.Path(path_type=Path, exists=True, dir_okay=False),
                        help="A file attached to every message (repeatable).")(func)
    func = click.option("--where", multiple=True, metavar="EXPR",
                        help="Only guests for whom this Jinja expression holds, e.g. "
                             "\"answer is none\" (repeatable: all must hold).")(func)
    func = click.option("--var", "variables", multiple=True, callback=_vars,
                        metavar="KEY=VALUE", help="A value for templates (repeatable).")(func)
    func = click.option("--templates-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Folder of templates [MAILER_TEMPLATES_DIR, default templates].")(func)
    func = click.option("--suppress", multiple=True,
                        type=click.Path(path_type=Path, exists=True, dir_okay=False),
                        help="Addresses never to send to: a text file (one a line) or a "
                             "CSV with an email column (repeatable).")(func)
    return func


RECIPIENTS = click.argument("recipients", type=click.Path(path_type=Path, exists=True,
                                                           dir_okay=False, allow_dash=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mailer")
def cli() -> None:
    """Send personalised invitations and newsletters from a CSV list, exactly once.

    Settings come from MAILER_* environment variables and a .env file in the current
    folder; options override them. Exit codes: 0 success, 1 some recipients rejected,
    2 usage error, 65 invalid input (nothing sent), 75 temporary failure (run again
    later), 78 configuration error.
    """


@cli.command()
@RECIPIENTS
@click.option("--template", help="Also check this template against the list: variables, "
                                 "languages, and a render of every message.")
@template_options
@handle_errors
def validate(recipients: Path, template: str | None, templates_dir: Path | None,
             variables: dict[str, str], suppress: tuple[Path, ...],
             where: tuple[str, ...], attach: tuple[Path, ...],
             attachments_dir: Path | None, sheet: str | None) -> None:
    """Check a recipient list (and a template against it) without sending anything."""
    from . import commands
    from .settings import load_settings

    report = commands.validate(
        recipients, template, settings=load_settings(templates_dir=templates_dir),
        options=commands.ListOptions(variables, suppress, where, attach, attachments_dir,
                                     sheet))
    for line in (*report.errors, *report.warnings):
        click.echo(line)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(65)


@cli.command()
@RECIPIENTS
@click.option("--template", required=True, help="Template folder name under the templates dir.")
@template_options
@click.option("--dry-run", is_flag=True, help="Write .eml files and a preview page; send nothing.")
@click.option("--outbox", type=click.Path(path_type=Path, file_okay=False), default="outbox",
              show_default=True, help="Where --dry-run writes.")
@click.option("--campaign", "campaign_id", help="Campaign ID in the journal "
                                                "[default: TEMPLATE:RECIPIENTS-FILE-NAME].")
@click.option("--journal", type=click.Path(path_type=Path, dir_okay=False),
              help="Journal file [MAILER_JOURNAL, default .mailer/journal.sqlite3].")
@click.option("--concurrency", type=click.IntRange(1, 100),
              help="SMTP connections at once [MAILER_CONCURRENCY, default 4].")
@click.option("--rate-limit", callback=_checked(_rate), metavar="RATE",
              help="N/s, N/min, N/h or N per second [MAILER_RATE_LIMIT, default unlimited].")
@click.option("--retries", type=click.IntRange(0, 20),
              help="Retries of a temporary failure within the run [default 3].")
@click.option("--retry-delay", type=click.FloatRange(0, 3600), metavar="SECONDS",
              help="First retry delay, doubled each time, plus jitter [default 2].")
@click.option("--max-messages", type=click.IntRange(1), metavar="N",
              help="Send at most N messages in this run, then stop (exit 0).")
@click.option("--daily-limit", type=click.IntRange(1), metavar="N",
              help="At most N envelope recipients in any 24 hours, counted across runs and "
                   "campaigns of the journal; then stop (exit 0) [MAILER_DAILY_LIMIT, or the "
                   "relay's preset].")
@click.option("--window", metavar="WINDOW", callback=_checked(_window),
              help="Send only then, e.g. \"Mon-Fri 08:00-16:00,Sat 10:00-12:00\" in "
                   "MAILER_TIMEZONE; outside it exit 0 saying when it opens "
                   "[MAILER_SEND_WINDOW].")
@click.option("--not-before", metavar="\"YYYY-MM-DD HH:MM\"",
              help="The campaign's start (in MAILER_TIMEZONE), kept in the journal: no run "
                   "sends before it.")
@click.option("--retry-failed", is_flag=True, help="Also retry permanently failed recipients.")
@click.option("--only", multiple=True, metavar="EMAIL", callback=_addresses,
              help="Send (or resend) this campaign's message to these guests only "
                   "(repeatable); recorded like any send.")
@click.option("--cancel-removed", is_flag=True,
              help="Send a cancellation to guests who hold the event's invitation but are "
                   "no longer on the list.")
@click.option("--retry-for", metavar="DURATION", callback=_checked(_duration),
              help="Give up on a recipient still deferred this long after the first attempt "
                   "(s, m, h or d) [MAILER_RETRY_FOR, default 3d].")
@click.option("--test-to", multiple=True, metavar="ADDRESS", callback=_addresses,
              help="Send one recipient's message only to ADDRESS (repeatable); "
                   "the journal is untouched.")
@click.option("--test-recipient", metavar="EMAIL", callback=_address,
              help="With --test-to: whose message to send [default: the first].")
@click.option("-q", "--quiet", is_flag=True, help="Nothing on success; failures still shown.")
@handle_errors
def send(recipients: Path, template: str, templates_dir: Path | None,
         variables: dict[str, str], suppress: tuple[Path, ...], where: tuple[str, ...],
         attach: tuple[Path, ...], attachments_dir: Path | None, sheet: str | None,
         only: tuple[str, ...], dry_run: bool, outbox: Path,
         campaign_id: str | None, journal: Path | None, concurrency: int | None,
         rate_limit: str | None, retries: int | None, retry_delay: float | None,
         max_messages: int | None, daily_limit: int | None, window: str | None,
         not_before: str | None, retry_failed: bool, cancel_removed: bool,
         retry_for: str | None, test_to: tuple[str, ...], test_recipient: str | None,
         quiet: bool) -> None:
    """Send TEMPLATE to every recipient in RECIPIENTS (or --dry-run into an outbox).

    The whole list is checked and every message rendered before anything is written
    or sent. Re-running the same campaign sends only to those not yet sent.
    """
    from . import commands
    from .address import check_address
    from .report import Reporter
    from .run import SendOptions
    from .settings import load_settings

    if test_recipient and not test_to:
        raise click.UsageError("--test-recipient goes with --test-to")
    settings = load_settings(templates_dir=templates_dir, journal=journal,
                             concurrency=concurrency, rate_limit=rate_limit,
                             retries=retries, retry_delay=retry_delay,
                             retry_for=retry_for, daily_limit=daily_limit,
                             send_window=window)
    start = None
    if not_before is not None:
        from .pacing import parse_start

        try:
            start = parse_start(not_before, settings.timezone)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--not-before") from None
    lists = commands.ListOptions(variables, suppress, where, attach, attachments_dir, sheet,
                                 campaign_id)
    options = SendOptions(
        concurrency=settings.concurrency, rate=settings.rate, retries=settings.retries,
        retry_delay=settings.retry_delay, max_messages=max_messages, retry_failed=retry_failed,
        retry_for=settings.retry_for_seconds, cancel_removed=cancel_removed,
        only=frozenset(check_address(address).key for address in only),
        daily=settings.daily, timezone=settings.timezone, window=settings.window,
        not_before=start)
    reporter = Reporter(quiet=quiet)
    preset = settings.preset
    line = None if preset is None else preset.describe(
        rate=settings.rate_limit is None, daily=settings.daily_limit is None)
    if line is not None and not quiet and not test_to:
        reporter.line(line)  # the relay's limits, where the settings leave them unset
    if dry_run:
        box = commands.dry_run(recipients, template, outbox, settings=settings, options=lists,
                               send_options=options, reporter=reporter)
        if not quiet:
            kinds = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}"
                              for kind, n in box.kinds.items() if kind != "message")
            if where:
                kinds = ", ".join([*([kinds] if kinds else []), "those that match --where"])
            click.echo(f"dry run: {box.count} messages{f' ({kinds})' if kinds else ''} "
                       f"written to {outbox}/ (nothing sent); "
                       f"preview: {box.index.resolve().as_uri()}")
            from .run import estimate

            line = estimate(box.count, options, settings, settings.journal)
            if line is not None:
                click.echo(line)
        return
    if test_to:
        result = commands.test_send(recipients, template, test_to, test_recipient,
                                    settings=settings, options=lists, send_options=options,
                                    reporter=reporter)
    else:
        result = commands.send(recipients, template, settings=settings, options=lists,
                               send_options=options, reporter=reporter)
    sys.exit(result.exit_code)


@cli.command()
@click.option("--journal", type=click.Path(path_type=Path, dir_okay=False),
              help="Journal file [MAILER_JOURNAL, default .mailer/journal.sqlite3].")
@click.option("--campaign", "campaign_id", help="One campaign [default: all].")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "excel-csv", "xlsx"]),
              default="table", show_default=True,
              help="table: counts per state; csv/json: every recipient, for programs; "
                   "excel-csv (';', BOM, local times) and xlsx (--output): for people.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write to this file (owner-only) instead of standard output; required "
                   "for --format xlsx.")
@click.option("--list", "guest_list", type=click.Path(path_type=Path, dir_okay=False),
              help="Join this guest list's own columns (organisation, role, ...) to every "
                   "guest: the attendee list.")
@click.option("--sheet", metavar="NAME",
              help="The worksheet of an .xlsx --list [default: the first].")
@click.option("--templates-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Templates folder, to compare an event with its event.toml "
                   "[MAILER_TEMPLATES_DIR].")
@handle_errors
def status(journal: Path | None, campaign_id: str | None, fmt: str,
           output: Path | None, guest_list: Path | None, sheet: str | None,
           templates_dir: Path | None) -> None:
    """Who got the message, who answered, who is waiting, who bounced."""
    from . import commands
    from .settings import load_settings

    if fmt == "xlsx" and output is None:
        raise click.UsageError("--format xlsx needs --output FILE")
    count = commands.status(campaign_id, fmt, output=output, guest_list=guest_list,
                            sheet=sheet, settings=load_settings(journal=journal,
                                                                templates_dir=templates_dir))
    if count is not None:
        click.echo(f"{count} guests written to {output}")
    elif output is not None:
        click.echo(f"status ({fmt}) written to {output}")


@cli.command()
@click.option("--campaign", "campaign_id", required=True, help="The campaign to delete.")
@click.option("--journal", type=click.Path(path_type=Path, dir_okay=False),
              help="Journal file [MAILER_JOURNAL, default .mailer/journal.sqlite3].")
@handle_errors
def purge(campaign_id: str, journal: Path | None) -> None:
    """Delete a finished campaign's rows (names, addresses) and compact the journal."""
    from . import commands
    from .settings import load_settings

    settings = load_settings(journal=journal)
    deleted = commands.purge(campaign_id, settings=settings)
    click.echo(f"purged campaign {campaign_id!r}: {deleted} recipients deleted from "
               f"{settings.journal}")


@cli.command()
@click.option("--journal", type=click.Path(path_type=Path, dir_okay=False),
              help="Journal file [MAILER_JOURNAL, default .mailer/journal.sqlite3].")
@click.option("--maildir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Read a local Maildir instead of IMAP.")
@click.option("--mbox", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Read a local mbox file instead of IMAP.")
@click.option("--dry-run", is_flag=True, help="Say what would be recorded; record nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Nothing on success but what needs a human.")
@handle_errors
def inbox(journal: Path | None, maildir: Path | None, mbox: Path | None, dry_run: bool,
          quiet: bool) -> None:
    """Read answers, bounces and unsubscribes from the organiser's mailbox (read-only).

    IMAP from MAILER_IMAP_* by default. Calendar answers are recorded per event and guest,
    a hard bounce marks the guest bounced and suppresses the address for every later send,
    as does a message to MAILER_UNSUBSCRIBE_MAILTO. Each message is read once.
    """
    from . import commands
    from .settings import load_settings

    if maildir is not None and mbox is not None:
        raise click.UsageError("give --maildir or --mbox, not both")
    tally = commands.read_inbox(maildir=maildir, mbox=mbox, dry_run=dry_run, quiet=quiet,
                           say=click.echo, settings=load_settings(journal=journal))
    if not quiet or tally.unplaced:
        click.echo(tally.summary("dry run: nothing recorded" if dry_run else "recorded"))


@cli.command()
@click.argument("address")
@click.option("--journal", type=click.Path(path_type=Path, dir_okay=False),
              help="Journal file [MAILER_JOURNAL, default .mailer/journal.sqlite3].")
@handle_errors
def forget(address: str, journal: Path | None) -> None:
    """Remove ADDRESS from everything in the journal (the right to erasure)."""
    from . import commands
    from .address import AddressError, check_address
    from .settings import load_settings

    try:
        key = check_address(address).key
    except AddressError as exc:
        raise click.BadParameter(f"{address!r}: {exc}") from None
    settings = load_settings(journal=journal)
    deleted = commands.forget(key, settings=settings)
    click.echo(f"forgot {address}: {deleted} rows deleted from {settings.journal}")


@cli.command()
@click.option("--check", is_flag=True,
              help="Get a token without asking and log in to SMTP (and IMAP), sending "
                   "nothing; print who is signed in.")
@handle_errors
def login(check: bool) -> None:
    """Sign in to Microsoft 365 or Google Workspace (MAILER_OAUTH_PROVIDER), once: later
    runs (cron) get their tokens from the kept sign-in."""
    from . import commands
    from .settings import load_settings

    settings = load_settings()
    if check:
        for line in commands.login_check(settings=settings):
            click.echo(line)
        return
    account = commands.login(say=lambda text: click.echo(text), settings=settings)
    click.echo(f"signed in{' as ' + account if account else ''}; the sign-in is kept in "
               f"{settings.oauth_cache} (mailer logout deletes it)")


@cli.command()
@handle_errors
def logout() -> None:
    """Delete the kept sign-in (MAILER_OAUTH_CACHE)."""
    from . import commands
    from .settings import load_settings

    settings = load_settings()
    if commands.logout(settings=settings):
        click.echo(f"signed out: {settings.oauth_cache} deleted")
    else:
        click.echo(f"not signed in: no {settings.oauth_cache}")


@cli.command()
@click.option("--template", metavar="NAME", help="Also check this template (and its event).")
@click.option("--list", "guest_list", type=click.Path(path_type=Path, dir_okay=False),
              help="With --template: render every guest's message (as validate does).")
@click.option("--templates-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Templates folder [MAILER_TEMPLATES_DIR].")
@click.option("--round-trip", is_flag=True,
              help="Send one test message to the organiser's own mailbox and read it back "
                   "over IMAP (up to 2 minutes); the journal is not touched.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@handle_errors
def doctor(template: str | None, guest_list: Path | None, templates_dir: Path | None,
           round_trip: bool, fmt: str) -> None:
    """Is this set-up ready to send? Relay, sign-in, inbox, DNS, template, journal."""
    from . import commands
    from .settings import load_settings

    settings = load_settings(templates_dir=templates_dir)
    say = (lambda check: click.echo(check.line())) if fmt == "text" else None
    report = commands.doctor(template=template, guests=guest_list, round_trip=round_trip,
                             say=say, settings=settings)
    if fmt == "json":
        click.echo(report.json())
    else:
        failed = sum(c.verdict == "failed" for c in report.checks)
        warned = sum(c.verdict == "warning" for c in report.checks)
        click.echo(f"doctor: {len(report.checks)} checks, {failed} failed, {warned} "
                   f"warnings" + (": ready to send" if not failed else ""))
    sys.exit(report.exit_code)


@cli.command("dkim-key")
@click.option("--selector", required=True,
              help="The selector: the key is published at SELECTOR._domainkey.DOMAIN.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the private key [default: SELECTOR.private.pem]; never "
                   "over an existing file.")
@handle_errors
def dkim_key(selector: str, out: Path | None) -> None:
    """Make a DKIM key: write the private key (owner-only) and print the DNS record."""
    import re

    from . import commands
    from .settings import load_settings

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", selector):
        raise click.BadParameter("letters, digits, '.', '_' and '-'", param_hint="--selector")
    path, record = commands.dkim_key(selector, out, settings=load_settings())
    click.echo(f"wrote the private key to {path} (owner-only): set MAILER_DKIM_KEY={path} "
               f"and MAILER_DKIM_SELECTOR={selector}")
    click.echo("publish this TXT record in DNS, then check it with mailer doctor:")
    click.echo(record)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # ends in handle_errors: "interrupted", exit 75


def main() -> None:
    os.umask(os.umask(0o077) | 0o077)  # files we create hold personal data
    # SIGTERM before sending starts (checking, journal sync) ends like Ctrl-C: nothing half
    # done, exit 75. While sending, the event loop takes over both for a graceful stop.
    signal.signal(signal.SIGTERM, _interrupt)
    cli(prog_name="mailer")
