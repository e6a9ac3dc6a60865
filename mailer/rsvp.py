"""Answer links: an answer from every guest, not only from those whose calendar sends one.

For an event with ``method = "request"`` templates get ``rsvp.yes``, ``rsvp.no`` and
``rsvp.maybe``: ``mailto:`` links to the organiser's mailbox (``MAILER_RSVP_MAILTO``, else
the event's organizer) with the subject and the body prefilled in the guest's language. The
body asks for a comment above a marker line, and under it carries a token line::

    Skriv gjerne en kommentar over streken (allergier, spørsmål, om du tar med en kollega):


    ----- ikke endre teksten under streken -----
    RSVP yes ola.nordmann@example.org 3KQ7ZC4MXA2B9DFE

The token names the guest and the answer, with a MAC (HMAC-SHA-256, 80 bits in base32)
over the event's UID, the guest's address and the answer, keyed by ``MAILER_RSVP_SECRET``
or the journal's own secret. So an answer counts for the invited guest even when a
colleague or an alias sends it, and nobody can make a token for another guest or another
answer. ``mailer inbox`` finds the token line (never in quoted text), checks the MAC and
keeps the guest's own text above the marker as the comment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

ANSWERS = {"yes": "accepted", "no": "declined", "maybe": "tentative"}
COMMENT_LIMIT = 1000  # characters of a comment that are kept
LINE_WORD = "RSVP"  # the first word of the token line
_MAC_BYTES = 10  # 80 bits: 16 characters of base32


@dataclass(frozen=True)
class Wording:
    yes: str
    no: str
    maybe: str
    prompt: str  # the line that asks for a comment
    marker: str  # the line above the token


WORDING = {
    "nb": Wording("Ja, jeg kommer", "Nei, jeg kommer ikke", "Kanskje",
                  "Skriv gjerne en kommentar over streken (allergier, spørsmål, om du tar "
                  "med en kollega):", "----- ikke endre teksten under streken -----"),
    "nn": Wording("Ja, eg kjem", "Nei, eg kjem ikkje", "Kanskje",
                  "Skriv gjerne ein kommentar over streken (allergiar, spørsmål, om du tek "
                  "med ein kollega):", "----- ikkje endre teksten under streken -----"),
    "en": Wording("Yes, I will attend", "No, I cannot attend", "Maybe",
                  "Add a comment above the line if you like (allergies, questions, a "
                  "colleague coming along):", "----- please do not change the text below "
                  "the line -----"),
}
_PROMPTS = {w.prompt for w in WORDING.values()}


def wording(lang: str) -> Wording:
    """The words of a language: Norwegian for nb and nn (and no), else English."""
    return WORDING.get({"no": "nb"}.get(lang, lang), WORDING["en"])


def mac(key: bytes, uid: str, guest: str, answer: str) -> str:
    """The token's MAC: ``guest`` is the address's key (``address.check_address(a).key``)."""
    message = "\x00".join(("mailer-rsvp-1", uid, guest, answer)).encode("utf-8")
    digest = hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.b32encode(digest).decode("ascii")


def verifies(key: bytes, uid: str, guest: str, answer: str, given: str) -> bool:
    return answer in ANSWERS and hmac.compare_digest(mac(key, uid, guest, answer),
                                                     given.upper())


class Links:
    """What a template sees as ``rsvp``: ``yes``, ``no`` and ``maybe`` (``mailto:`` URLs,
    made when a template first asks for one) and ``to`` (the address they go to)."""

    def __init__(self, key: bytes, uid: str, guest: str, to: str, summary: str,
                 lang: str) -> None:
        self._key, self._uid, self._guest = key, uid, guest
        self.to, self.summary, self.lang = to, summary, lang

    def link(self, answer: str) -> str:
        words = wording(self.lang)
        subject = f"{getattr(words, answer)} – {self.summary}"
        code = mac(self._key, self._uid, self._guest, answer)
        token = f"{LINE_WORD} {answer} {self._guest} {code}"
        body = f"{words.prompt}\r\n\r\n\r\n{words.marker}\r\n{token}\r\n"
        return (f"mailto:{quote(self.to, safe='@')}?subject={quote(subject, safe='')}"
                f"&body={quote(body, safe='')}")

    @cached_property
    def yes(self) -> str:
        return self.link("yes")

    @cached_property
    def no(self) -> str:
        return self.link("no")

    @cached_property
    def maybe(self) -> str:
        return self.link("maybe")


# Reading an answer ------------------------------------------------------------------------

_TOKEN = re.compile(rf"^[ \t]*{LINE_WORD}[ \t]+(\S{{1,20}})[ \t]+(\S{{1,320}})[ \t]+"
                    r"([A-Za-z2-7]{1,40})[ \t]*$")
# the line a mail client writes above quoted text: "On 1 Dec 2026, Digdir wrote:", "Den 1.
# des. 2026 kl. 10:00 skrev Digdir <invitasjon@example.org>:"
_WROTE = re.compile(r"^\s*(On|Den|På|Am|Le)\b.{0,200}\b(wrote|skrev|schrieb|a écrit)\b.{0,200}"
                    r":\s*$", re.I)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class LinkAnswer:
    """A token line found in a message, not yet verified, and the comment above it."""

    answer: str  # as the token says it: yes, no, maybe (or anything, when forged)
    guest: str
    mac: str
    comment: str | None


def find(text: str) -> LinkAnswer | None:
    """The answer link's token line in the text of a message (quoted lines never count),
    and the guest's comment: the text above the marker, without the prompt, quoted text,
    a signature, at most ``COMMENT_LIMIT`` characters."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for index, line in enumerate(lines):
        if line.lstrip().startswith(">"):
            continue
        match = _TOKEN.match(line)
        if match is not None:
            word, guest, given = match.groups()
            return LinkAnswer(word.lower(), guest, given, _comment(lines[:index]))
    return None


def _comment(lines: list[str]) -> str | None:
    kept: list[str] = []
    for line in lines:
        stripped = line.strip()
        if line.lstrip().startswith(">") or stripped in _PROMPTS or _WROTE.match(line):
            continue
        if line == "-- ":  # a signature: the rest is not the guest's comment
            break
        kept.append(line.rstrip())
    while kept and (not kept[-1].strip() or kept[-1].strip().startswith("-----")):
        kept.pop()  # the marker and the blank lines above it
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    text = _CONTROLS.sub("", text)
    if len(text) > COMMENT_LIMIT:
        text = text[:COMMENT_LIMIT - 1].rstrip() + "…"
    return text or None
