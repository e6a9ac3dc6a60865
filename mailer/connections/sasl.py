"""SASL for OAuth 2.0 access tokens, for SMTP and IMAP alike: XOAUTH2 (Google's, the one
Microsoft documents) and OAUTHBEARER (RFC 7628), the error challenge a server sends for a
refused token, and the one line that says what to do about the replies Microsoft 365
users meet."""

from __future__ import annotations

import base64
import json
import re

from ..text import printable

MECHANISMS = ("XOAUTH2", "OAUTHBEARER")  # in the order of preference


def initial(mechanism: str, username: str, token: str, host: str, port: int) -> bytes:
    """The client's first message (not yet base64)."""
    if mechanism == "XOAUTH2":
        return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    # RFC 7628 3.1: gs2 header with the authorization identity, then key=value pairs
    user = username.replace("=", "=3D").replace(",", "=2C")
    return (f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
            ).encode()


def abort(mechanism: str) -> bytes:
    """What the client answers to the server's error challenge, as the mechanism requires
    (XOAUTH2: an empty line; OAUTHBEARER, RFC 7628 3.2.3: a single ^A), to get the final
    reply."""
    return b"" if mechanism == "XOAUTH2" else b"\x01"


def choose(offered: set[str]) -> str | None:
    """XOAUTH2 when the server offers it, else OAUTHBEARER, else None."""
    return next((m for m in MECHANISMS if m in {o.upper() for o in offered}), None)


def reason(challenge: bytes | str) -> str:
    """The server's words in an error challenge: base64 of a JSON status (``{"status":
    "invalid_token", "scope": ..., "schemes": ...}``), or whatever it sent instead."""
    data = challenge.encode() if isinstance(challenge, str) else challenge
    try:
        text = base64.b64decode(data.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        text = data.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except ValueError:
        return printable(text.strip(), 200)
    if not isinstance(document, dict):
        return printable(text.strip(), 200)
    parts = [f"{key} {document[key]}" for key in ("status", "scope") if document.get(key)]
    return printable(", ".join(parts) or text.strip(), 200)


# What a Microsoft 365 user meets, and what to do (the codes in Microsoft's replies).
HINTS = (
    (re.compile(r"5\.7\.139"), "SMTP AUTH is disabled for this mailbox or the tenant: an "
     "admin enables it for the mailbox with Set-CASMailbox -Identity <mailbox> "
     "-SmtpClientAuthenticationDisabled $false"),
    (re.compile(r"5\.7\.30\b"), "basic authentication is not supported: sign in with OAuth "
     "(MAILER_OAUTH_PROVIDER=microsoft, then mailer login)"),
    (re.compile(r"5\.7\.3\b"), "authentication unsuccessful: check MAILER_SMTP_USERNAME, "
     "and the password or the signed-in account (mailer login --check)"),
    (re.compile(r"5\.2\.252|SendAsDenied", re.I), "the sender (MAILER_SENDER) must be the "
     "signed-in mailbox or one it may send as (an admin grants Send As)"),
)


def hint(text: str) -> str:
    """The one line that says what to do about a reply, or ''."""
    return next((what for pattern, what in HINTS if pattern.search(text)), "")


def send_as_denied(code: int, text: str) -> bool:
    """Microsoft 365's refusal of the sender at the end of the message: the settings'
    problem, not the guest's."""
    return code >= 500 and bool(re.search(r"5\.2\.252|SendAsDenied", text, re.I))
