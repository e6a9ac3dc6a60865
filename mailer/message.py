"""Build the wire form of a message: headers 7-bit, bodies UTF-8 quoted-printable.

The email package's EmailMessage costs about a millisecond a message in header
machinery; a list of 100,000 people would spend minutes there. The structure of these
messages is fixed (text and HTML alternatives, optionally an attachment), so they are
written directly, with the standard library's encoders for every value that comes from
outside (RFC 2047 encoded words for headers, quoted-printable for bodies). The tests
parse every shape back with the email package.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate
from typing import cast
from urllib.parse import quote

from .address import Mailbox
from .models import Rendered

CRLF = "\r\n"
_PRINTABLE_ASCII = re.compile(r"[ -~]*\Z")
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to messages, base64-encoded once."""

    filename: str
    content_type: str  # with parameters, e.g. 'text/calendar; charset="utf-8"; method=PUBLISH'
    data: bytes
    source: str = ""  # the URI of the file it was read from (the preview page links to it)
    encoded: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", _base64_lines(self.data))


def wire_form(data: bytes) -> bytes:
    """What follows the server's 354: the message dot-stuffed (RFC 5321 4.5.2) and ended
    by ``.``, made once per message. ``data`` has CRLF line ends (``build`` makes it so),
    so every line start is the start of the data or follows a CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def message_id(campaign: str, key: str, domain: str, secret: bytes = b"") -> str:
    """Unique per message, stable for campaign + recipient: a re-send after a crash carries
    the same Message-ID, so a duplicate is recognisable. A MAC keyed by the journal's
    secret: nobody else can make the Message-ID of a guest's message, so a bounce that
    returns one speaks for that message (a dry run before the first send, with no journal
    yet, uses an empty key)."""
    digest = hmac.new(secret, f"{campaign}\x00{key}".encode(), hashlib.sha256).hexdigest()
    return f"<{digest[:32]}@{domain}>"


def _base64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return CRLF.join(encoded[i:i + 76] for i in range(0, len(encoded), 76))


# Lines already encoded: a template's lines are the same in every guest's message, so a
# line is encoded once per run and only what differs per guest is encoded again (b2a_qp
# costs ~15 ns a byte: ~50 µs a message of 5 KB, ~10 µs with the memo).
_QP_LINES: dict[str, str] = {}
_QP_MEMO_SIZE = 4096


def _qp(text: str) -> str:
    """UTF-8 quoted-printable with CRLF line ends (every line ≤ 76 characters), encoded
    line by line (a whole text at once lets b2a_qp write 78 characters before an
    encoded trailing space)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    memo = _QP_LINES
    lines = text.split("\n")
    encoded = list(map(memo.get, lines))  # the lines seen before, at C speed
    at = -1
    with contextlib.suppress(ValueError):  # .index: no None left
        while True:
            at = encoded.index(None, at + 1)
            line = lines[at]
            done = binascii.b2a_qp(line.encode("utf-8"), quotetabs=False, istext=True) \
                .decode("ascii").replace("\n", CRLF)
            if len(memo) >= _QP_MEMO_SIZE:
                memo.clear()
            memo[line] = encoded[at] = done
    return CRLF.join(cast(list[str], encoded))


# RFC 2047 "Q" encoding, restricted to the characters allowed in a phrase (section 5(3)), so
# the same words serve in Subject and in display names. "_" stands for a space.
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_OVERHEAD = len("=?utf-8?q??=")


class _QTable(dict[int, str]):
    """A character's Q form, for ``str.translate``: computed once per character."""

    def __missing__(self, char: int) -> str:
        form = "".join(f"={b:02X}" for b in chr(char).encode("utf-8", "replace"))
        self[char] = form
        return form


_Q_TABLE = _QTable({ord(c): c for c in _Q_SAFE} | {ord(" "): "_"})


def encoded_words(text: str, first_room: int) -> str:
    """``text`` as RFC 2047 encoded words, folded so that no line passes 76 characters.

    The text is encoded at once, then cut: never inside an ``=XX``, never between the
    bytes of one character (before a UTF-8 continuation byte ``=8X``..``=BX``), and after a
    space where there is one (some parsers keep the folding space between two words).
    ``first_room`` is what the first line has left after the field name."""
    encoded = text.translate(_Q_TABLE)
    room = max(first_room - _Q_OVERHEAD, 12)
    words: list[str] = []
    while len(encoded) > room:
        cut = room
        if encoded[cut - 1] == "=":
            cut -= 1
        elif encoded[cut - 2] == "=":
            cut -= 2
        while encoded[cut] == "=" and encoded[cut + 1] in "89AB":
            cut -= 3
        space = encoded.rfind("_", 0, cut)
        if space > 0:
            cut = space + 1
        words.append(encoded[:cut])
        encoded = encoded[cut:]
        room = 75 - _Q_OVERHEAD
    words.append(encoded)
    return f"{CRLF} ".join(f"=?utf-8?q?{word}?=" for word in words)


def _fold_ascii(name: str, value: str) -> str:
    """Fold a long ASCII value at spaces (RFC 5322 2.2.3); words are never broken."""
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > 78 and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = ""
        line += f" {word}"
    lines.append(line)
    return CRLF.join(lines)


def encode_header(name: str, value: str) -> str:
    """``Name: value`` ready for the wire: 7-bit, folded, with no way for the value to
    start a new header (line breaks and control characters become spaces)."""
    value = _UNSAFE_HEADER.sub(" ", value)
    if _PRINTABLE_ASCII.match(value) and "=?" not in value:
        if len(name) + len(value) < 77:
            return f"{name}: {value}"
        if max(len(word) for word in value.split(" ")) < 70:
            return _fold_ascii(name, value)
    return f"{name}: {encoded_words(value, 76 - len(name) - 2)}"


def address_header(field_name: str, mailbox: Mailbox) -> str:
    """``Field: Name <address>`` with the name quoted or RFC 2047 encoded as it needs."""
    address = mailbox.address.ascii
    name = " ".join(_UNSAFE_HEADER.sub(" ", mailbox.name).split())
    if not name:
        return f"{field_name}: {address}"
    if name.isascii() and "=?" not in name:
        line = f"{field_name}: {formataddr((name, address))}"
        if len(line) <= 78:
            return line
        phrase = _fold_ascii(field_name, formataddr((name, address)).rpartition(" <")[0])
    else:
        phrase = f"{field_name}: {encoded_words(name, 76 - len(field_name) - 2)}"
        if CRLF in phrase and len(encoded_words(name, 10_000)) <= 75:
            # One encoded word fits on a line of its own: fold before it rather than split
            # the name (parsers differ on the space between two words of one phrase).
            phrase = f"{field_name}:{CRLF} {encoded_words(name, 10_000)}"
    last = phrase.rpartition(CRLF)[2]
    fold = " " if len(last) + len(address) + 3 <= 78 else f"{CRLF} "
    return f"{phrase}{fold}<{address}>"


class _DateCache:
    """RFC 5322 Date for now, computed once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, localtime=True)
        return self._value


_dates = _DateCache()


def fresh_date(data: bytes) -> bytes:
    """The message with its Date header set to now (a message built earlier in the run);
    the header is the one ``MessageFactory.build`` writes, after From, To and Subject."""
    start = data.find(b"\r\nDate: ") + 8
    end = data.find(b"\r\n", start)
    if start < 8 or end < 0:
        return data
    return data[:start] + _dates.now().encode("ascii") + data[end:]


@dataclass(frozen=True, slots=True)
class MessageFactory:
    """Per-run constant parts of every message: From, Reply-To, attachments, domain."""

    sender: Mailbox
    reply_to: Mailbox | None = None
    attachments: Sequence[Attachment] = ()
    unsubscribe_mailto: str | None = None  # List-Unsubscribe: <mailto:…?subject=unsubscribe>
    inline: Sequence[Attachment] = ()  # images the HTML shows as cid:NAME@mailer (a logo)
    # The same for every message: encoded once.
    _fixed: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fixed = [address_header("From", self.sender)]
        if self.reply_to is not None:
            fixed.append(address_header("Reply-To", self.reply_to))
        object.__setattr__(self, "_fixed", tuple(fixed))

    @property
    def domain(self) -> str:
        return self.sender.domain

    def build(self, rendered: Rendered, to: Mailbox, msgid: str, *,
              date: str | None = None, calendar: Invitation | None = None,
              files: Sequence[Attachment] = ()) -> bytes:
        """The whole message as bytes with CRLF line ends, ready for DATA or a .eml file."""
        headers = [
            self._fixed[0],  # From
            address_header("To", to),
            *self._fixed[1:],  # Reply-To
            encode_header("Subject", rendered.subject),
            f"Date: {date or _dates.now()}",
            f"Message-ID: {msgid}",
        ]
        unsubscribe_url = rendered.unsubscribe_url
        targets = [f"<{unsubscribe_url}>"] if unsubscribe_url else []
        if self.unsubscribe_mailto:
            targets.append(f"<mailto:{self.unsubscribe_mailto}?subject=unsubscribe>")
        if targets:
            # Printable ASCII without spaces (checked when rendered): a URL is never folded,
            # since a folded URL breaks in many clients; the two go on lines of their own.
            headers.append("List-Unsubscribe: " + f",{CRLF} ".join(targets))
            if unsubscribe_url and unsubscribe_url.startswith("https://"):
                headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        headers.append("MIME-Version: 1.0")
        boundary = f"=_{msgid[1:17]}"
        body = _body(rendered, boundary, [*self.attachments, *files], calendar, self.inline)
        return (CRLF.join(headers) + CRLF + body).encode("ascii")


def _text_part(subtype: str, text: str, lang: str) -> str:
    return (f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
            f"Content-Language: {lang}{CRLF}"
            f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}{_qp(text)}")


def _multipart(subtype: str, boundary: str, parts: Sequence[str]) -> str:
    inner = "".join(f"{CRLF}--{boundary}{CRLF}{part}" for part in parts)
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"{CRLF}{CRLF}' \
           f"This is a multi-part message in MIME format.{CRLF}{inner}{CRLF}--{boundary}--{CRLF}"


@dataclass(frozen=True, slots=True)
class Invitation:
    """A guest's own calendar object and its iTIP method (PUBLISH, REQUEST, CANCEL)."""

    data: bytes
    method: str
    filename: str = "invitasjon.ics"


def _filename_params(filename: str) -> tuple[str, str]:
    """(name=…, filename=…) parameters: quoted ASCII, or RFC 2231 UTF-8 for æøå (with an
    ASCII fallback ``name`` for old clients)."""
    clean = "".join(c for c in filename if c.isprintable() and c not in '"\\')
    if clean.isascii():
        return f'name="{clean}"', f'filename="{clean}"'
    encoded = quote(clean.encode("utf-8"), safe="")
    fallback = clean.encode("ascii", "replace").decode().replace("?", "_")
    return (f'name="{fallback}"; name*=utf-8\'\'{encoded}',
            f"filename*=utf-8''{encoded}")


def _attachment(content_type: str, filename: str, encoded: str) -> str:
    name, disposition = _filename_params(filename)
    return (f"Content-Type: {content_type}; {name}{CRLF}"
            f"Content-Disposition: attachment; {disposition}{CRLF}"
            f"Content-Transfer-Encoding: base64{CRLF}{CRLF}{encoded}")


def content_id(filename: str) -> str:
    """The Content-ID of an inline image; the HTML refers to it as ``cid:`` + this."""
    return f"{filename}@mailer"


def _inline(image: Attachment) -> str:
    name, disposition = _filename_params(image.filename)
    return (f"Content-Type: {image.content_type}; {name}{CRLF}"
            f"Content-Disposition: inline; {disposition}{CRLF}"
            f"Content-ID: <{content_id(image.filename)}>{CRLF}"
            f"Content-Transfer-Encoding: base64{CRLF}{CRLF}{image.encoded}")


def _body(rendered: Rendered, boundary: str, attachments: Sequence[Attachment],
          calendar: Invitation | None, inline: Sequence[Attachment] = ()) -> str:
    """The MIME tree. With an iTIP REQUEST or CANCEL (RFC 6047), the calendar object is the
    last alternative, ``text/calendar; method=…`` (as Outlook sends it and Gmail updates in
    place), and the same object is attached as a file for clients that show only files
    (``application/ics``, as Google attaches it, so no client takes it for a second
    invitation). A PUBLISH object is an attachment only."""
    alternatives = []
    if rendered.text is not None:
        alternatives.append(_text_part("plain", rendered.text, rendered.lang))
    if rendered.html is not None:
        html = _text_part("html", rendered.html, rendered.lang)
        used = [i for i in inline if f"cid:{content_id(i.filename)}" in rendered.html]
        if used:  # the images travel with the HTML only: text readers never see them
            html = _multipart("related", f"{boundary}r", [html, *(_inline(i) for i in used)])
        alternatives.append(html)
    files = [_attachment(a.content_type, a.filename, a.encoded) for a in attachments]
    if calendar is not None:
        encoded = _base64_lines(calendar.data)
        if calendar.method == "PUBLISH":
            files.insert(0, _attachment('text/calendar; charset="utf-8"; method=PUBLISH',
                                        calendar.filename, encoded))
        else:
            alternatives.append(
                f'Content-Type: text/calendar; charset="utf-8"; method={calendar.method}{CRLF}'
                f"Content-Transfer-Encoding: base64{CRLF}{CRLF}{encoded}")
            files.insert(0, _attachment("application/ics", calendar.filename, encoded))
    content = alternatives[0] if len(alternatives) == 1 else \
        _multipart("alternative", f"{boundary}a", alternatives)
    if not files:
        return content
    return _multipart("mixed", f"{boundary}m", [content, *files])
