"""Email address checks: syntax only (no DNS), normalised, fast for long lists.

email-validator is the authority, but it costs ~50 µs an address. A list of 100,000
people mostly holds plain ``local@domain`` addresses on a handful of domains, so the
local part of such an address is checked with a strict dot-atom pattern and each
distinct domain is asked of email-validator once. Everything else (quoted local
parts, non-ASCII, odd lengths) goes to email-validator directly.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from email.utils import getaddresses

import email_validator
from email_validator import EmailNotValidError, validate_email

# RFC 5322 dot-atom: the local parts email-validator accepts without quoting.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
# What check_address takes on its fast path, for many addresses at once (one a line):
# a dot-atom local part of at most 64 characters, one @, a domain without spaces.
_PLAIN = rf"(?=[^@\n]{{1,64}}@){_ATEXT}+(?:\.{_ATEXT}+)*@[^\s@]+"
_PLAIN_LINES = re.compile(rf"(?:{_PLAIN}\n)*{_PLAIN}")
_DOMAIN_PART = re.compile(r"@([^\n]+)")
_DOMAIN_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Address:
    """A checked address: ``normalized`` for display, ``ascii`` for the wire, ``key`` (the
    case-folded form) for identity: duplicates, suppression, the journal."""

    normalized: str
    ascii: str
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.normalized.casefold())


class AddressError(ValueError):
    """An address is not valid; the message says why."""


_domains: dict[str, tuple[str, str] | str] = {}
_SPECIAL_USE = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)  # arpa, invalid, local, ...
_special = False  # MAILER_ALLOW_SPECIAL_DOMAINS


def allow_special_domains(allow: bool) -> None:
    """Accept addresses at special-use domains (.test, .local, .localhost, .invalid,
    home.arpa: RFC 6761, 6762, 8375), for test set-ups and internal mail systems, or not
    (the default). email-validator documents its list as the place to change this."""
    global _special
    if allow == _special:
        return
    _special = allow
    email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = [] if allow else list(_SPECIAL_USE)
    _domains.clear()


def _reason(exc: EmailNotValidError) -> str:
    text = str(exc)
    if "special-use or reserved" in text:
        text += " (MAILER_ALLOW_SPECIAL_DOMAINS=true accepts it, for test set-ups and " \
                "internal mail systems)"
    return text


def _check_domain(domain: str) -> tuple[str, str]:
    """Return (normalised, ascii) for a domain, or raise AddressError. Cached."""
    cached = _domains.get(domain)
    if cached is None:
        try:
            info = validate_email(f"a@{domain}", check_deliverability=False,
                                  globally_deliverable=not _special)
            cached = (info.domain, info.ascii_domain)
        except EmailNotValidError as exc:
            cached = _reason(exc)
        if len(_domains) < _DOMAIN_CACHE_MAX:
            _domains[domain] = cached
    if isinstance(cached, str):
        raise AddressError(cached)
    return cached


def check_address(text: str) -> Address:
    """Check one address (syntax only) and return it normalised.

    Non-ASCII before the @ is refused: it would need SMTPUTF8, which many relays lack,
    and headers stay 7-bit. Internationalised domains are kept and sent as IDNA.
    """
    text = text.strip()
    if not text:
        raise AddressError("the address is empty")
    local, at, domain = text.rpartition("@")
    if at and len(local) <= 64 and len(text) <= 254 and _LOCAL_DOT_ATOM.match(local):
        norm_domain, ascii_domain = _check_domain(domain)
        return Address(f"{local}@{norm_domain}", f"{local}@{ascii_domain}")
    try:
        info = validate_email(text, check_deliverability=False, allow_smtputf8=False,
                              globally_deliverable=not _special)
    except EmailNotValidError as exc:
        raise AddressError(_reason(exc)) from None
    return Address(info.normalized, info.ascii_email or info.normalized)


def plain_keys(addresses: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """Check many addresses at once, when every one of them takes check_address's fast
    path and its domain is valid and normalised up to case (as good as always: a list
    holds a handful of domains): their keys, in order, and each domain's normalised form
    (``Address.normalized`` is ``local@normalised-domain``). None when any one of them
    does not: check each with check_address then, for its own result or error."""
    if not addresses or max(map(len, addresses)) > 254:
        return None
    joined = "\n".join(addresses)
    if _PLAIN_LINES.fullmatch(joined) is None:
        return None
    domains: dict[str, str] = {}
    for domain in set(_DOMAIN_PART.findall(joined)):
        try:
            normalised, _ = _check_domain(domain)
        except AddressError:
            return None
        if normalised.casefold() != domain.casefold():
            return None
        domains[domain] = normalised
    # casefold maps character by character, so the joined text folds to the keys.
    return joined.casefold().split("\n"), domains


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A display name and an address, as in ``Digdir <invitasjon@example.org>``."""

    name: str
    address: Address

    @property
    def domain(self) -> str:
        return self.address.ascii.rpartition("@")[2]


def mailbox_setting(value: str | None) -> str | None:
    """For settings and event fields: the text unchanged when it is a mailbox, else
    ValueError saying why (pydantic turns it into a validation error)."""
    if value is not None:
        try:
            parse_mailbox(value)
        except AddressError as exc:
            raise ValueError(f"not 'Name <address>' or an address: {exc}") from None
    return value


def parse_mailbox(text: str) -> Mailbox:
    """Parse ``Name <address>`` or a bare address; raise AddressError when it is not one."""
    if any(c in text for c in "\r\n"):
        raise AddressError("it holds a line break")
    found = getaddresses([text])
    if len(found) != 1 or not found[0][1]:
        raise AddressError("expected one 'Name <address>' or one address")
    name, addr = found[0]
    return Mailbox(name.strip(), check_address(addr))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.rstrip(".").lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
