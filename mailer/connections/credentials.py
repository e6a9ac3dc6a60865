"""Logins: who logs in and with what (a password, or an OAuth 2.0 access token from a
``TokenSource``), what may never be shown, and the one rule about clear text. Light on
imports: settings and every connection use it (the token sources live in ``oauth``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pydantic import SecretStr

from ..address import is_loopback
from ..errors import ConfigError


class TokenSource:
    """Where access tokens come from (``oauth``: a command, or the cache of ``mailer
    login``). ``token()`` is asked at every login (a run longer than a token's life gets
    a fresh one on each new connection); ``fresh`` asks for one not cached. Every token
    handed out is remembered, so that no message can show it."""

    setting = "MAILER_OAUTH_TOKEN_COMMAND"  # what the user set: named in messages

    def __init__(self) -> None:
        self.issued: set[str] = set()
        self.accepted = False  # a server took one of its tokens in this run

    def token(self, fresh: bool = False) -> str:
        raise NotImplementedError

    def account(self) -> str | None:
        """Who is signed in, when the source knows (the user name to log in as)."""
        return None

    def hand_out(self, token: str) -> str:
        self.issued.add(token)
        return token


@dataclass(frozen=True)
class Login:
    """A user name and its password, or its OAuth token source (neither: no login)."""

    username: str | None = None
    password: SecretStr | None = None
    oauth: TokenSource | None = None

    @property
    def secret(self) -> str:
        return self.password.get_secret_value() if self.password is not None else ""

    @property
    def wanted(self) -> bool:
        """Whether to log in at all."""
        return bool(self.username) or self.oauth is not None

    def redact(self, text: str) -> str:
        """``text`` without the password or any token handed out, in any form a server or
        a library might echo it (as it is, quoted for IMAP, base64 alone or in a SASL
        PLAIN string)."""
        forms: set[str] = set()
        for secret in ({self.secret} | (self.oauth.issued if self.oauth else set())) - {""}:
            quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
            forms |= {secret, quoted, repr(secret)[1:-1],
                      base64.b64encode(secret.encode("utf-8", "surrogatepass")).decode()}
            if self.username:
                forms.add(base64.b64encode(
                    f"\0{self.username}\0{secret}".encode("utf-8", "surrogatepass")).decode())
        for form in sorted(forms, key=len, reverse=True):
            if form:
                text = text.replace(form, "***")
        return text


def refuse_clear_text(setting: str, host: str, security: str, login: Login) -> None:
    """ConfigError when a password would cross the network unencrypted: a login with
    ``security`` none is allowed only to a server on this machine."""
    if security == "none" and login.wanted and not is_loopback(host):
        raise ConfigError(f"{setting} is none and a user name is set: refusing to send the "
                          f"password in plain text to {host} (use starttls or tls; plain "
                          f"login only to a server on this machine)")
