"""Settings from MAILER_* environment variables and ``.env``; options override them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .address import AddressError, Mailbox, check_address, mailbox_setting, parse_mailbox
from .errors import ConfigError
from .ratelimit import parse_rate

if TYPE_CHECKING:
    from .connections.config import ImapConfig, SmtpConfig
    from .connections.credentials import Login, TokenSource
    from .dkim import Signer
    from .pacing import Preset, Window


class Settings(BaseSettings):
    """Everything configurable; every field is ``MAILER_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="MAILER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    smtp_host: str = "localhost"
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    # the reply to the end of a message: RFC 5321 4.5.3.2.6 asks clients to wait 10 minutes
    smtp_data_timeout: float = Field(600.0, gt=0, le=3600, allow_inf_nan=False)
    smtp_helo: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    templates_dir: Path = Path("templates")
    journal: Path = Path(".mailer/journal.sqlite3")
    concurrency: int = Field(4, ge=1, le=100)
    rate_limit: str | None = None
    messages_per_connection: int = Field(100, ge=1)
    retries: int = Field(3, ge=0, le=20)
    retry_delay: float = Field(2.0, ge=0, le=3600, allow_inf_nan=False)
    retry_for: str = "3d"  # a deferred guest becomes failed ("expired") this long after
                           # the first attempt
    daily_limit: int | None = Field(None, ge=1)  # envelope recipients in any 24 hours
    smtp_provider: Literal["microsoft365", "google-workspace", "none"] | None = None
    timezone: str = "Europe/Oslo"  # of the times a run shows (and of send windows)
    send_window: str | None = None  # e.g. "Mon-Fri 08:00-16:00,Sat 10:00-12:00"
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None  # an address: List-Unsubscribe mailto, read by inbox
    archive_bcc: str | None = None  # every real send is also delivered here (no Bcc header)
    imap_host: str | None = None
    imap_port: int = Field(993, ge=1, le=65535)
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    imap_username: str | None = None
    imap_password: SecretStr | None = None
    imap_folder: str = "INBOX"
    imap_timeout: float = Field(30.0, gt=0, le=3600, allow_inf_nan=False)
    # the authserv-id of the organiser's own mail server: its Authentication-Results vouch
    # for a sender (an unsubscribe by mail counts only then)
    inbox_trusted_authserv: str | None = None
    # answer links (rsvp.yes/no/maybe): where the answers go (default: the event's
    # organizer) and the key of their tokens (default: the journal's own secret)
    rsvp_mailto: str | None = None
    rsvp_secret: SecretStr | None = None
    # OAuth 2.0 for SMTP and IMAP: a command that prints an access token, or the built-in
    # sign-in (mailer login) with the organisation's own app registration
    oauth_token_command: str | None = None
    oauth_provider: Literal["microsoft", "google"] | None = None
    oauth_client_id: str | None = None
    oauth_tenant: str = Field("organizations", pattern=r"^[A-Za-z0-9.-]{1,100}$")
    oauth_client_secret: SecretStr | None = None
    oauth_cache: Path = Path(".mailer/oauth.json")
    oauth_authority: str | None = None  # the provider's base address (national clouds)
    _tokens: TokenSource | None = PrivateAttr(None)
    language: str = Field("nb", pattern=r"^[a-z]{2,3}$")
    allow_special_domains: bool = False  # .test, .local, .localhost, .invalid, home.arpa
    # DKIM signing, for relays that do not sign
    dkim_key: Path | None = None  # a PEM private key, owner-only
    dkim_selector: str | None = Field(None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")
    dkim_domain: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]{1,253}$")
    dns_nameserver: str | None = None  # one nameserver to ask (address or address:port)

    @model_validator(mode="before")
    @classmethod
    def _special_domains(cls, data: Any) -> Any:
        """Before any address setting is checked: whether special-use domains count."""
        if isinstance(data, dict):
            from .address import allow_special_domains

            value = str(data.get("allow_special_domains", "")).strip().lower()
            allow_special_domains(value in ("1", "true", "yes", "on"))
        return data

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):
            raise ValueError("not a time zone (e.g. Europe/Oslo)") from None
        return value

    @field_validator("send_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            from .pacing import parse_window

            parse_window(value)
            return value
        return None

    @field_validator("smtp_provider", "oauth_provider", mode="before")
    @classmethod
    def _provider(cls, value: Any) -> Any:
        return (value.strip().lower() or None) if isinstance(value, str) else value

    @field_validator("smtp_security", "imap_security", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("smtp_username", "smtp_helo", "reply_to", "sender", "unsubscribe_url",
                     "rate_limit", "unsubscribe_mailto", "imap_host", "imap_username",
                     "archive_bcc", "inbox_trusted_authserv", "rsvp_mailto",
                     "oauth_token_command", "oauth_client_id", "oauth_authority",
                     "daily_limit", "send_window", "dkim_key", "dkim_selector",
                     "dkim_domain", "dns_nameserver", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("unsubscribe_mailto", "archive_bcc", "rsvp_mailto")
    @classmethod
    def _mailto(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                return check_address(value).normalized
            except AddressError as exc:
                raise ValueError(f"not an address: {exc}") from None
        return value

    @field_validator("oauth_authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an https:// address")
        return value

    @field_validator("smtp_password", "imap_password", "rsvp_secret", "oauth_client_secret",
                     mode="before")
    @classmethod
    def _blank_password_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    _mailbox = field_validator("sender", "reply_to")(mailbox_setting)

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_rate(value)
            except ValueError:  # its message holds the value: settings never echo one
                raise ValueError("use N/s, N/min, N/h or a number per second") from None
        return value

    @field_validator("retry_for")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("smtp_helo")
    @classmethod
    def _helo(cls, value: str | None) -> str | None:
        if value is not None and not all(c.isalnum() or c in ".-[]:" for c in value):
            raise ValueError("must be a host name or an address literal")
        return value

    # Derived values -----------------------------------------------------------------

    @property
    def sender_mailbox(self) -> Mailbox:
        if self.sender is None:
            raise ConfigError("MAILER_SENDER is not set: give the From address, "
                              "e.g. MAILER_SENDER='Digdir <invitasjon@example.org>'")
        return parse_mailbox(self.sender)

    @property
    def reply_to_mailbox(self) -> Mailbox | None:
        return None if self.reply_to is None else parse_mailbox(self.reply_to)

    @property
    def retry_for_seconds(self) -> float:
        return parse_duration(self.retry_for)

    @property
    def preset(self) -> Preset | None:
        """The relay's preset (MAILER_SMTP_PROVIDER, else inferred from the host)."""
        from .pacing import preset_for

        return preset_for(self.smtp_provider, self.smtp_host)

    @property
    def rate(self) -> float | None:
        """MAILER_RATE_LIMIT, else the relay's preset."""
        if self.rate_limit is not None:
            return parse_rate(self.rate_limit)
        preset = self.preset
        return preset.rate if preset is not None else None

    @property
    def window(self) -> Window | None:
        from .pacing import parse_window

        return None if self.send_window is None else parse_window(self.send_window)

    @property
    def daily(self) -> int | None:
        """MAILER_DAILY_LIMIT, else the relay's preset."""
        if self.daily_limit is not None:
            return self.daily_limit
        preset = self.preset
        return preset.daily if preset is not None else None

    def rsvp_key(self, journal_secret: bytes) -> bytes:
        """The key of the answer links' tokens: MAILER_RSVP_SECRET, else the journal's."""
        if self.rsvp_secret is not None:
            return self.rsvp_secret.get_secret_value().encode("utf-8")
        return journal_secret

    def signer(self, sender_domain: str) -> Signer | None:
        """The DKIM signer (MAILER_DKIM_KEY), or None; the domain defaults to the From's."""
        if self.dkim_key is None:
            return None
        from .dkim import Signer

        return Signer.load(self.dkim_key, self.dkim_selector,
                           self.dkim_domain or sender_domain)

    # The connections' configurations ------------------------------------------------

    @property
    def tokens(self) -> TokenSource | None:
        """The OAuth token source (one for SMTP and IMAP), or None."""
        if self._tokens is None and (self.oauth_token_command or self.oauth_provider):
            from .oauth import source

            self._tokens = source(self)
        return self._tokens

    def login(self, kind: str, username: str | None, password: SecretStr | None) -> Login:
        """A login to SMTP or IMAP (``kind``): a password, or OAuth (never both)."""
        from .connections.credentials import Login

        tokens = self.tokens
        if tokens is None:
            return Login(username, password)
        if password is not None:
            raise ConfigError(f"MAILER_{kind}_PASSWORD and {tokens.setting} are both set: "
                              f"remove the password to sign in with OAuth, or the OAuth "
                              f"setting to log in with the password")
        username = username or tokens.account()
        if not username and tokens.setting == "MAILER_OAUTH_PROVIDER":
            raise ConfigError(f"nobody is signed in ({self.oauth_cache}) and "
                              f"MAILER_{kind}_USERNAME is not set: sign in first: mailer login")
        if not username:
            raise ConfigError(f"MAILER_{kind}_USERNAME is not set: the mailbox to sign in "
                              f"as with OAuth")
        return Login(username, None, tokens)

    def smtp(self, sender_domain: str) -> SmtpConfig:
        """How to reach the relay; ConfigError for a login over plain text to another
        host."""
        from .connections.config import SmtpConfig
        from .connections.credentials import refuse_clear_text
        from .connections.smtp import helo_name

        login = self.login("SMTP", self.smtp_username, self.smtp_password)
        refuse_clear_text("MAILER_SMTP_SECURITY", self.smtp_host, self.smtp_security, login)
        return SmtpConfig(self.smtp_host, self.smtp_port, self.smtp_security, login,
                          self.smtp_timeout, helo_name(self.smtp_helo, sender_domain),
                          self.messages_per_connection, self.smtp_data_timeout)

    def imap(self) -> ImapConfig:
        """How to reach the organiser's mailbox; ConfigError when it is not set."""
        from .connections.config import ImapConfig

        if self.imap_host is None:
            raise ConfigError("MAILER_IMAP_HOST is not set: give the organiser's IMAP server, "
                              "or read a local copy with --maildir or --mbox")
        return ImapConfig(self.imap_host, self.imap_port, self.imap_security,
                          self.login("IMAP", self.imap_username, self.imap_password),
                          self.imap_folder, self.imap_timeout)


_DURATION = re.compile(r"\s*(\d{1,12}(?:\.\d{1,6})?)\s*([smhd])\s*\Z", re.I)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LONGEST = 3650 * 86400.0  # ten years: anything longer is a typo


def parse_duration(text: str) -> float:
    """``3d``, ``12h``, ``30m``, ``90s`` → seconds (at most ten years); ValueError
    otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("use a number with s, m, h or d, e.g. 3d")
    seconds = float(match.group(1)) * _UNIT[match.group(2).lower()]
    if seconds > LONGEST:
        raise ValueError("at most 3650d (ten years)")
    return seconds


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from env, ``.env`` and non-None overrides; ConfigError on bad values.

    The message names the variable and the cause, never the value (it may be a secret).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except UnicodeDecodeError:
        raise ConfigError(".env: not UTF-8: save the file as UTF-8") from None
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        where = f"--{field.replace('_', '-')}" if field in given else f"MAILER_{field.upper()}"
        reason = str(error["msg"]).removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"invalid setting {where}: {reason}{more}") from None
