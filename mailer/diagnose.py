"""``mailer doctor`` (this module; ``mailer.doctor`` is the library call): is this set-up
ready to send? One line per check, ``ok``, ``warning`` or ``failed``, with what was found
and, for anything not ok, what to do.

The checks, in order: the settings (their effective values, never a secret); the relay
(resolves, answers, TLS and its certificate, what EHLO offers against what is configured,
the login, the sender at ``MAIL FROM``, then ``RSET``: nothing is sent); the inbox (login,
``EXAMINE``, how many messages); the sender's domain in DNS (SPF covering the relay, DMARC,
DKIM keys, MX), asked of ``MAILER_DNS_NAMESERVER`` or the system's resolver; the template
(what ``validate --template`` checks, the event, the largest message against SIZE); the
journal; and with ``--round-trip`` one message through the relay to the organiser's own
mailbox and back over IMAP, with what the receiving server wrote about it.

Exit: 0 when nothing failed (warnings allowed); 78 for a failed setting, login, sender or
DNS record; 65 for a template or list that is not valid; 75 when something could not be
reached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import socket
import ssl
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EXIT_CONFIG, EXIT_DATAERR, EXIT_TEMPFAIL, MailerError
from .text import printable

if TYPE_CHECKING:
    import dns.resolver

    from .connections.config import SmtpConfig
    from .settings import Settings

CERT_WARNING_DAYS = 14
ROUND_TRIP_SECONDS = 120.0
# The SPF include and the usual DKIM selectors of the providers with presets.
PROVIDER_SPF = {"microsoft365": "spf.protection.outlook.com",
                "google-workspace": "_spf.google.com"}
PROVIDER_SELECTORS = {"microsoft365": ("selector1", "selector2"),
                      "google-workspace": ("google",)}
SPAM_HEADERS = ("X-Spam-Status", "X-Spam-Flag", "X-MS-Exchange-Organization-SCL",
                "X-Forefront-Antispam-Report", "X-Microsoft-Antispam")


@dataclass
class Check:
    """One line of the report."""

    area: str
    name: str
    verdict: str  # ok, warning, failed
    found: str
    remedy: str = ""
    code: int = 0  # for a failure: 78 (settings), 65 (input) or 75 (unreachable)

    def line(self) -> str:
        text = f"{self.verdict:<7} {self.area}: {self.name}: {self.found}"
        return text + (f" → {self.remedy}" if self.remedy else "")


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    say: Callable[[Check], None] | None = None  # each check as it is made

    def add(self, area: str, name: str, verdict: str, found: str, remedy: str = "",
            code: int = EXIT_CONFIG) -> Check:
        check = Check(area, name, verdict, printable(found, 400), remedy,
                      code if verdict == "failed" else 0)
        self.checks.append(check)
        if self.say is not None:
            self.say(check)
        return check

    def ok(self, area: str, name: str, found: str) -> Check:
        return self.add(area, name, "ok", found)

    def warn(self, area: str, name: str, found: str, remedy: str) -> Check:
        return self.add(area, name, "warning", found, remedy)

    def fail(self, area: str, name: str, found: str, remedy: str,
             code: int = EXIT_CONFIG) -> Check:
        return self.add(area, name, "failed", found, remedy, code)

    @property
    def exit_code(self) -> int:
        codes = {c.code for c in self.checks if c.verdict == "failed"}
        for code in (EXIT_CONFIG, EXIT_DATAERR, EXIT_TEMPFAIL):
            if code in codes:
                return code
        return 0

    def json(self) -> str:
        return json.dumps({"checks": [asdict(c) for c in self.checks],
                           "exit": self.exit_code}, ensure_ascii=False, indent=2)


# Settings ------------------------------------------------------------------------------

def _settings(settings: Settings, report: Report) -> None:
    login = "none"
    if settings.oauth_token_command:
        login = "OAuth, token command"
    elif settings.oauth_provider:
        login = f"OAuth, {settings.oauth_provider} (mailer login)"
    elif settings.smtp_password is not None:
        login = f"password for {settings.smtp_username}"
    report.ok("settings", "relay", f"{settings.smtp_host}:{settings.smtp_port}, "
                                   f"{settings.smtp_security}, sign-in: {login}")
    report.ok("settings", "sender", settings.sender or "(not set)")
    preset = settings.preset
    rate = settings.rate
    limits = (f"rate {rate * 60:g}/min" if rate else "no rate limit") + ", " + (
        f"{settings.daily:,} recipients a day" if settings.daily else "no daily limit")
    if preset is not None:
        limits += f" (the {preset.name} preset fills in what is not set)"
    report.ok("settings", "limits", limits)
    if settings.dkim_key is not None:
        report.ok("settings", "DKIM", f"signing with {settings.dkim_key} as selector "
                                      f"{settings.dkim_selector}")


# The relay ---------------------------------------------------------------------------

def _tls(report: Report, smtp: Any) -> None:
    """TLS version, trust (the connection verified it) and the days the certificate has."""
    ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    if ssl_object is None:
        return
    cert = ssl_object.getpeercert() or {}
    expires = cert.get("notAfter")
    days = None
    if expires:
        days = int((ssl.cert_time_to_seconds(expires) - time.time()) // 86400)
    found = f"{ssl_object.version()}, certificate trusted" + (
        f", expires in {days} days" if days is not None else "")
    if days is not None and days < CERT_WARNING_DAYS:
        report.warn("relay", "TLS", found, "the relay's certificate must be renewed soon "
                                           "(its administrator)")
    else:
        report.ok("relay", "TLS", found)


def _ehlo(report: Report, smtp: Any, config: SmtpConfig, largest: int | None) -> None:
    has = smtp.supports_extension
    offered = [name for name in ("PIPELINING", "8BITMIME", "SMTPUTF8") if has(name.lower())]
    size_text = smtp.esmtp_extensions.get("size", "") if has("size") else ""
    found = ", ".join(offered + ([f"SIZE {size_text}"] if size_text else []))
    report.ok("relay", "EHLO", found or "no extensions")
    if size_text.strip().isdigit() and largest is not None and int(size_text) and \
            largest > int(size_text):
        report.warn("relay", "SIZE", f"the largest message of the template is {largest:,} "
                                     f"bytes; the relay takes {int(size_text):,}",
                    "make the attachments smaller, or link to them")
    auth = sorted({m.upper() for m in smtp.server_auth_methods})
    login = config.login
    if not login.wanted:
        report.ok("relay", "AUTH", f"offered: {' '.join(auth) or 'none'}; no login set")
        return
    from .connections import sasl

    if not auth:
        report.fail("relay", "AUTH", "the relay offers no AUTH",
                    "a relay that needs no login needs no MAILER_SMTP_USERNAME; else use "
                    "port 587 with starttls")
    elif login.oauth is not None and sasl.choose(set(auth)) is None:
        report.fail("relay", "AUTH", f"offered: {' '.join(auth)}; no XOAUTH2 or OAUTHBEARER",
                    "this relay takes no OAuth: use a password, or the provider's relay")
    elif login.oauth is None and not {"PLAIN", "LOGIN"} & set(auth):
        report.fail("relay", "AUTH", f"offered: {' '.join(auth)}; no PLAIN or LOGIN",
                    "sign in with OAuth (MAILER_OAUTH_PROVIDER)")
    else:
        report.ok("relay", "AUTH", f"offered: {' '.join(auth)}")


async def _relay(settings: Settings, report: Report, largest: int | None, ips: list[str]
                 ) -> bool:
    """Every check of the relay (its addresses into ``ips``); whether the login and the
    sender were accepted."""
    import aiosmtplib

    from .connections.smtp import _is_tls_problem, _log_in, _reason

    sender = settings.sender_mailbox
    config = settings.smtp(sender.domain)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(config.host, config.port,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        report.fail("relay", "DNS", f"{config.host} does not resolve: {exc}",
                    "check MAILER_SMTP_HOST", EXIT_TEMPFAIL)
        return False
    ips.extend(sorted({str(info[4][0]) for info in infos}))
    report.ok("relay", "resolves", f"{config.host}: {', '.join(ips)}")
    smtp = aiosmtplib.SMTP(hostname=config.host, port=config.port, local_hostname=config.helo,
                           timeout=config.timeout, use_tls=config.security == "tls",
                           start_tls=False, validate_certs=True)
    stage = "connect"
    try:
        response = await smtp.connect()
        report.ok("relay", "answers", f"{config.where}: {response.code} "
                                      f"{printable(response.message, 80)}")
        await smtp.ehlo()
        if config.security == "starttls":
            stage = "STARTTLS"
            if not smtp.supports_extension("starttls"):
                report.fail("relay", "TLS", "the relay does not offer STARTTLS",
                            "use MAILER_SMTP_SECURITY=tls and its port, or another relay")
                return False
            await smtp.starttls()
            await smtp.ehlo()
        elif config.security == "none":
            report.warn("relay", "TLS", "none: mail and login cross the network in plain "
                                        "text", "use starttls or tls")
        _tls(report, smtp)
        stage = "EHLO"
        _ehlo(report, smtp, config, largest)
        if config.login.wanted:
            stage = "login"
            await _log_in(smtp, config)
            report.ok("relay", "login", f"accepted for {config.login.username}")
        stage = "MAIL FROM"
        reply = await smtp.mail(sender.address.ascii)
        report.ok("relay", "sender", f"MAIL FROM:<{sender.address.ascii}> {reply.code} "
                                     f"(then RSET: nothing was sent)")
        await smtp.rset()
        await smtp.quit()
        return True
    except MailerError as exc:
        report.fail("relay", stage, str(exc), "see the reason", exc.exit_code)
    except aiosmtplib.SMTPAuthenticationError as exc:
        from .connections.sasl import hint

        text = config.redact(" ".join(exc.message.split()))
        report.fail("relay", "login", f"refused: {exc.code} {text}",
                    hint(text) or "check the user name and the password or sign-in")
    except aiosmtplib.SMTPResponseException as exc:
        text = config.redact(" ".join(exc.message.split()))
        if stage == "MAIL FROM":
            report.fail("relay", "sender", f"MAIL FROM:<{sender.address.ascii}> refused: "
                                           f"{exc.code} {text}",
                        "the relay does not let this login send as MAILER_SENDER",
                        EXIT_CONFIG if exc.code >= 500 else EXIT_TEMPFAIL)
        else:
            report.fail("relay", stage, f"{exc.code} {text}", "see the reply",
                        EXIT_CONFIG if exc.code >= 500 else EXIT_TEMPFAIL)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        if _is_tls_problem(exc):
            report.fail("relay", "TLS", f"not trusted or failed: {_reason(exc)}",
                        "the relay's certificate must be valid for its name and signed by "
                        "a trusted authority (or the system must trust its CA)")
        else:
            report.fail("relay", stage, f"{config.where}: {_reason(exc)}",
                        "check the host, the port and the firewall", EXIT_TEMPFAIL)
    finally:
        smtp.close()
    return False


# The inbox -------------------------------------------------------------------------

def _inbox(settings: Settings, report: Report) -> bool:
    from .connections import imap

    if settings.imap_host is None:
        report.warn("inbox", "IMAP", "MAILER_IMAP_HOST is not set: answers and bounces "
                                     "cannot be read back", "set MAILER_IMAP_* (or OAuth)")
        return False
    try:
        config = settings.imap()
        count = imap.check(config)
    except MailerError as exc:
        report.fail("inbox", "IMAP", str(exc), "check MAILER_IMAP_* and the sign-in",
                    exc.exit_code)
        return False
    report.ok("inbox", "IMAP", f"{config.where}: login accepted as {config.login.username}, "
                               f"{config.folder} holds {count} messages")
    return True


# DNS ---------------------------------------------------------------------------------

class Unreachable(Exception):
    """The nameserver did not answer."""


def resolver(nameserver: str | None) -> dns.resolver.Resolver:
    """The system's resolver, or one that asks MAILER_DNS_NAMESERVER (``address``,
    ``address:port`` or ``[v6-address]:port``) alone."""
    import dns.resolver

    if not nameserver:
        found = dns.resolver.Resolver()
    else:
        found = dns.resolver.Resolver(configure=False)
        host, port = nameserver, 53
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", nameserver)
        if match:
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
        try:
            ipaddress.ip_address(host)
        except ValueError:
            from .errors import ConfigError

            raise ConfigError("invalid setting MAILER_DNS_NAMESERVER: an address, or "
                              "address:port") from None
        found.nameservers = [host]
        found.port = port
    found.lifetime = 5.0
    return found


def _records(resolve: dns.resolver.Resolver, name: str, kind: str) -> list[str]:
    import dns.exception
    import dns.resolver

    try:
        answer = resolve.resolve(name, kind)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise Unreachable(f"{name} {kind}: {exc}") from None
    if kind == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return [r.to_text() for r in answer]


def _spf_covers(resolve: dns.resolver.Resolver, domain: str, ips: list[str],
                include: str | None, lookups: list[int]) -> tuple[bool, str]:
    """Whether the SPF record of ``domain`` lets ``ips`` send for it (ip4, ip6, a, mx,
    include, redirect; no macros), or includes ``include``; and the record."""
    records = [r for r in _records(resolve, domain, "TXT") if r.lower().startswith("v=spf1")]
    if len(records) != 1:
        return False, ""
    record = records[0]
    addresses = [ipaddress.ip_address(i) for i in ips]
    for term in record.split()[1:]:
        qualifier = term[0] if term[0] in "+-~?" else "+"
        mechanism = term.lstrip("+-~?")
        name, _, value = mechanism.partition(":")
        name = name.split("/")[0].lower()
        if name in ("include", "redirect") or mechanism.lower().startswith("redirect="):
            target = value or mechanism.partition("=")[2]
            if include and target.lower().rstrip(".") == include:
                return True, record
            lookups[0] += 1
            if lookups[0] > 10 or not target:
                continue
            if _spf_covers(resolve, target, ips, include, lookups)[0] and qualifier == "+":
                return True, record
        elif name in ("ip4", "ip6") and value and qualifier == "+":
            network = ipaddress.ip_network(value, strict=False)
            if any(a.version == network.version and a in network for a in addresses):
                return True, record
        elif name in ("a", "mx") and qualifier == "+":
            lookups[0] += 1
            target = value.split("/")[0] if value else domain
            hosts = [target] if name == "a" else \
                [r.split()[-1].rstrip(".") for r in _records(resolve, target, "MX")]
            found = {r for h in hosts for kind in ("A", "AAAA")
                     for r in _records(resolve, h, kind)}
            if any(str(a) in found for a in addresses):
                return True, record
    return False, record


def _dns(settings: Settings, report: Report, relay_ips: list[str]) -> None:
    from .dkim import dns_record
    from .pacing import provider_of

    domain = settings.sender_mailbox.domain
    provider = provider_of(settings.smtp_provider, settings.smtp_host)
    try:
        resolve = resolver(settings.dns_nameserver)
        include = PROVIDER_SPF.get(provider or "")
        covered, record = _spf_covers(resolve, domain, relay_ips, include, [0])
        if not record:
            report.fail("DNS", "SPF", f"no SPF record at {domain}",
                        f"publish one that names the relay, e.g. \"v=spf1 "
                        f"{'include:' + include if include else 'ip4:<relay>'} -all\"")
        elif covered:
            report.ok("DNS", "SPF", f"{record} (covers the relay)")
        else:
            what = f"include:{include}" if include else f"the relay ({', '.join(relay_ips)})"
            report.fail("DNS", "SPF", f"{record}: does not cover {what}",
                        f"add {what if include else 'ip4:/ip6: of the relay'} to the record")
        dmarc = [r for r in _records(resolve, f"_dmarc.{domain}", "TXT")
                 if r.lower().startswith("v=dmarc1")]
        if not dmarc:
            report.fail("DNS", "DMARC", f"no DMARC record at _dmarc.{domain}",
                        "Gmail and Yahoo require one from bulk senders: publish at least "
                        "\"v=DMARC1; p=none; rua=mailto:...\"")
        else:
            policy = next((t.split("=", 1)[1].strip() for t in dmarc[0].split(";")
                           if t.strip().lower().startswith("p=")), "?")
            report.ok("DNS", "DMARC", f"policy {policy}: {dmarc[0]}")
        selectors = ([settings.dkim_selector] if settings.dkim_selector else
                     list(PROVIDER_SELECTORS.get(provider or "", ())))
        signer = settings.signer(domain)
        ours = dns_record(signer.key).split("p=", 1)[1] if signer is not None else None
        _dkim(report, resolve, domain, selectors, ours)
        mx = _records(resolve, domain, "MX")
        if mx:
            report.ok("DNS", "MX", ", ".join(sorted(mx)))
        else:
            report.warn("DNS", "MX", f"no MX at {domain}: bounces and answers cannot come "
                                     f"back", "publish the MX of the organiser's mailbox")
    except Unreachable as exc:
        report.fail("DNS", "nameserver", f"no answer: {exc}",
                    "check MAILER_DNS_NAMESERVER or the network", EXIT_TEMPFAIL)


def _dkim(report: Report, resolve: dns.resolver.Resolver, domain: str,
          selectors: list[str], ours: str | None) -> None:
    if not selectors:
        report.warn("DNS", "DKIM", "no selector to look up (no provider preset, no "
                                   "MAILER_DKIM_SELECTOR)",
                    "set MAILER_DKIM_SELECTOR to the relay's selector, or sign with "
                    "MAILER_DKIM_KEY (mailer dkim-key)")
        return
    for selector in selectors:
        name = f"{selector}._domainkey.{domain}"
        keys = [r for r in _records(resolve, name, "TXT") if "p=" in r]
        published = re.sub(r"\s", "", keys[0].split("p=", 1)[1].split(";")[0]) if keys else ""
        if not keys:
            if ours is not None:
                report.fail("DNS", "DKIM", f"no key at {name}",
                            "publish the record mailer dkim-key printed")
            else:
                report.warn("DNS", "DKIM", f"no key at {name}",
                            "ask the relay's administrator which selector it signs with")
        elif ours is not None and published != ours:
            report.fail("DNS", "DKIM", f"the key at {name} is not MAILER_DKIM_KEY's",
                        "publish the record of this key (mailer dkim-key printed it)")
        else:
            report.ok("DNS", "DKIM", f"key at {name}" + (" matches MAILER_DKIM_KEY"
                                                          if ours else ""))


# The template and the journal -----------------------------------------------------------

def _template(settings: Settings, report: Report, template: str, guests: Path | None
              ) -> int | None:
    """What validate --template checks (with a list), the event; the largest message."""
    from .campaign import Campaign
    from .models import Kind

    largest: list[int] = []
    try:
        made = Campaign(settings, guests or Path(os.devnull), template)
    except MailerError as exc:
        report.fail("template", template, str(exc), "fix the template", exc.exit_code)
        return None
    if guests is not None:
        def measure(recipient: Any, decision: Any, rendered: Any, files: Any) -> None:
            if rendered is not None and made.factory is not None:
                kind = Kind.MESSAGE if made.event is None else Kind.INVITATION
                largest.append(len(made.assemble(recipient, rendered, kind, files).data))

        try:
            checked = made.check(mail_clients=True, visit=measure)
        except MailerError as exc:
            report.fail("template", template, str(exc), "fix the list or template",
                        exc.exit_code)
            return None
        if checked.ok:
            report.ok("template", template, checked.summary())
        else:
            report.fail("template", template, f"{len(checked.problems)} problems: "
                        f"{checked.problems[0]}", f"mailer validate {guests} --template "
                        f"{template} names them all", EXIT_DATAERR)
        for warning in checked.warnings[:5]:
            report.warn("template", template, warning, "see mailer validate")
    else:
        report.ok("template", template, "found (give --list to render every message)")
    _event(settings, report, made)
    return max(largest) if largest else None


def _event(settings: Settings, report: Report, made: Any) -> None:
    event = made.event
    if event is None:
        return
    organizer = event.organizer_mailbox
    if event.method != "request" or organizer is None:
        report.warn("template", "event", f"method {event.method}: calendars cannot answer",
                    "method = \"request\" with an organizer, for answers")
    else:
        inbox = (settings.imap_username or "").lower()
        where = organizer.address.key
        if settings.imap_host and inbox and inbox != where and \
                inbox.split("@")[0] != where.split("@")[0]:
            report.warn("template", "event", f"answers go to {where}; the inbox reads "
                                             f"{inbox}", "the organizer must be the mailbox "
                                                         "mailer inbox reads")
        elif settings.preset is not None and settings.preset.name == "Microsoft 365" and \
                settings.smtp_username and settings.smtp_username.lower() != where:
            report.warn("template", "event", f"organizer {where} is not the signed-in "
                                             f"mailbox {settings.smtp_username}",
                        "Microsoft 365 sends as the signed-in mailbox: make it the organizer")
        else:
            report.ok("template", "event", f"method request, answers to {where}")
    if event.starts < datetime.now(UTC):
        report.fail("template", "event", f"it started {event.starts:%Y-%m-%d %H:%M}",
                    "change start and end in event.toml", EXIT_DATAERR)


def _journal(settings: Settings, report: Report) -> None:
    path = settings.journal
    if not path.exists():
        folder = path.parent if path.parent.exists() else Path(".")
        if os.access(folder, os.W_OK):
            report.ok("journal", str(path), "not made yet; the first send makes it "
                                            "(owner-only)")
        else:
            report.fail("journal", str(path), f"{folder} is not writable",
                        "run from a folder you can write, or set MAILER_JOURNAL")
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    from .journal import SCHEMA_VERSION, Journal

    try:
        with Journal(path, create=False) as journal:
            version = int(journal.db.execute("PRAGMA user_version").fetchone()[0])
    except MailerError as exc:
        report.fail("journal", str(path), str(exc), "see the reason", exc.exit_code)
        return
    found = f"version {version}, {path.stat().st_size / 1e6:.1f} MB, mode {mode:o}"
    if not os.access(path, os.W_OK):
        report.fail("journal", str(path), f"{found}: not writable", "check its owner")
    elif mode & 0o077:
        report.warn("journal", str(path), f"{found}: others can read it",
                    f"chmod 600 {path}")
    else:
        report.ok("journal", str(path), found + (" (upgraded on the next send)"
                                                 if version != SCHEMA_VERSION else ""))


# The round trip ----------------------------------------------------------------------

def _round_trip(settings: Settings, report: Report, to: str) -> None:
    """One message through the relay to ``to`` (the organiser's own mailbox), read back
    over IMAP: what the receiving server wrote about it. The journal is not touched."""
    from email import message_from_bytes, policy

    from .connections import imap
    from .connections.smtp import connect
    from .message import wire_form
    from .models import Outgoing

    sender = settings.sender_mailbox
    token = uuid.uuid4().hex[:12]
    msg = EmailMessage()
    msg["From"] = formataddr((sender.name, sender.address.ascii))
    msg["To"] = to
    msg["Subject"] = f"mailer doctor: round trip {token}"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = f"<doctor.{token}@{sender.domain}>"
    msg["MIME-Version"] = "1.0"
    msg.set_content("A test from mailer doctor: it checks that mail from this set-up "
                    "arrives. It can be deleted.\n")
    data = msg.as_bytes(policy=policy.SMTP)
    signer = settings.signer(sender.domain)
    if signer is not None:
        data = signer.sign(data)
    config = settings.smtp(sender.domain)

    message = Outgoing(line=0, key=to, email=to, name="", envelope_from=sender.address.ascii,
                       envelope_to=to, message_id=msg["Message-ID"], data=data,
                       wire=wire_form(data), subject=msg["Subject"])

    async def deliver() -> None:
        conn = await connect(config)
        try:
            await conn.send(message)
        finally:
            await conn.close()

    started = time.monotonic()
    try:
        asyncio.run(deliver())
    except MailerError as exc:
        report.fail("round trip", "send", str(exc), "see the relay's checks", exc.exit_code)
        return
    except Exception as exc:  # the transaction refused or lost (smtp's Refused, Lost)
        report.fail("round trip", "send", f"{type(exc).__name__}: {printable(str(exc), 200)}",
                    "see the relay's log", EXIT_TEMPFAIL)
        return
    deadline = started + ROUND_TRIP_SECONDS
    header: bytes | None = None
    while header is None and time.monotonic() < deadline:
        try:
            header = imap.find(settings.imap(), msg["Message-ID"])
        except MailerError as exc:
            report.fail("round trip", "read back", str(exc), "see the inbox's checks",
                        exc.exit_code)
            return
        if header is None:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    if header is None:
        report.fail("round trip", "arrival", f"not in {settings.imap_folder} after "
                                             f"{ROUND_TRIP_SECONDS:g} s",
                    "look in the spam folder and the relay's log", EXIT_TEMPFAIL)
        return
    seconds = time.monotonic() - started
    report.ok("round trip", "arrival", f"{to}: arrived in {seconds:.1f} s")
    got = message_from_bytes(header, policy=policy.compat32)
    results = [" ".join(str(v).split()) for v in got.get_all("Authentication-Results", [])]
    if results:
        verdicts = re.findall(r"\b(spf|dkim|dmarc)=(\w+)", results[0], re.I)
        found = ", ".join(f"{k.lower()}={v.lower()}" for k, v in verdicts) or results[0]
        failing = [f"{k}={v}" for k, v in verdicts if v.lower() not in ("pass", "none")]
        if failing:
            report.warn("round trip", "Authentication-Results", found,
                        "fix what does not pass (see the DNS checks)")
        else:
            report.ok("round trip", "Authentication-Results", found)
    else:
        report.warn("round trip", "Authentication-Results", "the receiving server wrote none",
                    "nothing to learn about SPF, DKIM and DMARC from this server")
    signatures = re.findall(r"\bd=([^;\s]+)", " ".join(
        str(v) for v in got.get_all("DKIM-Signature", [])))
    report.ok("round trip", "DKIM-Signature", ", ".join(signatures) or "none")
    for name in SPAM_HEADERS:
        value = got.get(name)
        if value is not None:
            report.ok("round trip", name, " ".join(str(value).split())[:200])


# The whole ---------------------------------------------------------------------------

def run(settings: Settings, *, template: str | None = None, guests: Path | None = None,
        round_trip: bool = False, say: Callable[[Check], None] | None = None) -> Report:
    """Every check (see the module's docstring); ``say`` hears each as it is made."""
    report = Report(say=say)
    _settings(settings, report)
    largest = _template(settings, report, template, guests) if template else None
    relay_ok = False
    relay_ips: list[str] = []
    if settings.sender is None:
        report.fail("settings", "sender", "MAILER_SENDER is not set",
                    "set it, e.g. MAILER_SENDER='Digdir <invitasjon@example.org>'")
    else:
        try:
            relay_ok = asyncio.run(_relay(settings, report, largest, relay_ips))
        except MailerError as exc:
            report.fail("relay", "settings", str(exc), "fix the setting", exc.exit_code)
    inbox_ok = _inbox(settings, report)
    if settings.sender is not None:
        try:
            _dns(settings, report, relay_ips)
        except MailerError as exc:
            report.fail("DNS", "settings", str(exc), "fix the setting", exc.exit_code)
    _journal(settings, report)
    if round_trip:
        if relay_ok and inbox_ok:
            to = _round_trip_address(settings, template)
            _round_trip(settings, report, to)
        else:
            report.fail("round trip", "skipped", "the relay or the inbox failed above",
                        "fix those first", EXIT_TEMPFAIL if not report.exit_code else
                        report.exit_code)
    return report


def _round_trip_address(settings: Settings, template: str | None) -> str:
    """The organiser's own mailbox: the event's organizer, else the inbox's user name when
    it is an address, else the sender."""
    if template is not None:
        from .calendar import find_event

        found = find_event(settings.templates_dir / template, settings.templates_dir)
        if found is not None and found[0].organizer_mailbox is not None:
            return found[0].organizer_mailbox.address.ascii
    if settings.imap_username and "@" in settings.imap_username:
        return settings.imap_username
    return settings.sender_mailbox.address.ascii
