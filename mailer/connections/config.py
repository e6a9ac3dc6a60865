"""The typed configurations of the connections, built once from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from .credentials import Login

DATA_TIMEOUT = 600.0  # RFC 5321 4.5.3.2.6: the reply to the end of the message
MESSAGE_LIMIT = 1 << 20  # what the inbox reads of one message: answers and bounces are small


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the relay."""

    host: str
    port: int
    security: str  # starttls, tls or none
    login: Login = field(default_factory=Login)
    timeout: float = 30.0
    helo: str = "localhost"
    per_connection: int = 100
    data_timeout: float = DATA_TIMEOUT

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def redact(self, text: str) -> str:
        return self.login.redact(text)


@dataclass(frozen=True)
class ImapConfig:
    """How to reach the organiser's mailbox."""

    host: str
    port: int
    security: str  # tls, starttls or none
    login: Login = field(default_factory=Login)
    folder: str = "INBOX"
    timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"
