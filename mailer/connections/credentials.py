"""Logins: who logs in and with what, what may never be shown, and the one rule about
clear text. Light on imports: settings and every connection use it."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pydantic import SecretStr

from ..address import is_loopback
from ..errors import ConfigError


@dataclass(frozen=True)
class Login:
    """A user name and its password (None: no login)."""

    username: str | None = None
    password: SecretStr | None = None

    @property
    def secret(self) -> str:
        return self.password.get_secret_value() if self.password is not None else ""

    def redact(self, text: str) -> str:
        """``text`` without the password, in any form a server or a library might echo it
        (as it is, quoted for IMAP, base64 alone or in a SASL PLAIN string)."""
        secret = self.secret
        if not secret:
            return text
        quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
        forms = {secret, quoted, repr(secret)[1:-1],
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
    if security == "none" and login.username and not is_loopback(host):
        raise ConfigError(f"{setting} is none and a user name is set: refusing to send the "
                          f"password in plain text to {host} (use starttls or tls; plain "
                          f"login only to a server on this machine)")
