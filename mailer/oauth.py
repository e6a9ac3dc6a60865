"""OAuth 2.0 access tokens for SMTP and IMAP, where the organisers' mail lives (Microsoft
365 and Google Workspace accept only OAuth for the mailbox, and soon for sending).

Two sources (``connections.credentials.TokenSource``):

- **A token command** (``MAILER_OAUTH_TOKEN_COMMAND``), as msmtp's ``passwordeval`` and
  neomutt's ``imap_oauth_refresh_command``: split as a shell would split it, run without a
  shell at every login; the first line of its standard output is the token.
- **Built-in sign-in** (``MAILER_OAUTH_PROVIDER``): ``mailer login`` signs in once,
  interactively (Microsoft: the device-code flow through MSAL; Google: the authorization
  code with PKCE and a redirect to 127.0.0.1, through google-auth-oauthlib), and keeps the
  account and the refresh token in ``MAILER_OAUTH_CACHE`` (owner-only, never through a
  symlink). Every later run (cron) gets an access token from it without asking anyone.

HTTPS to the identity provider trusts what SMTP and IMAP trust (the system's certificates,
or ``SSL_CERT_FILE``). No token, refresh token or command output is
ever shown: every token handed out is redacted from what servers say.
"""

from __future__ import annotations

import json
import os
import shlex
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .connections.credentials import TokenSource
from .errors import ConfigError, TemporaryError
from .files import open_private, private_dir
from .text import printable

if TYPE_CHECKING:
    import requests

    from .settings import Settings

COMMAND_SECONDS = 120.0  # a token command that takes longer is stopped
SIGN_IN_AGAIN = "sign in again: mailer login"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_SCOPES = ["https://outlook.office.com/SMTP.Send",
                    "https://outlook.office.com/IMAP.AccessAsUser.All"]  # + offline_access
GOOGLE_SCOPES = ["https://mail.google.com/"]
GOOGLE_AUTH = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN = "https://oauth2.googleapis.com/token"  # noqa: S105 - an address
EXPIRY_MARGIN = timedelta(minutes=5)  # a token with less left counts as expired


class CommandToken(TokenSource):
    """``MAILER_OAUTH_TOKEN_COMMAND``: run at every login, without a shell."""

    setting = "MAILER_OAUTH_TOKEN_COMMAND"

    def __init__(self, command: str) -> None:
        super().__init__()
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"invalid setting MAILER_OAUTH_TOKEN_COMMAND: {exc}") from None
        if not self.argv:
            raise ConfigError("invalid setting MAILER_OAUTH_TOKEN_COMMAND: it is empty")

    @property
    def name(self) -> str:
        return printable(self.argv[0], 80)

    def token(self, fresh: bool = False) -> str:
        where = f"MAILER_OAUTH_TOKEN_COMMAND ({self.name})"
        try:
            done = subprocess.run(self.argv, stdin=subprocess.DEVNULL, capture_output=True,  # noqa: S603 - the user's own command, no shell
                                  timeout=COMMAND_SECONDS, check=False)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such command") from None
        except PermissionError:
            raise ConfigError(f"{where}: not executable") from None
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"{where} gave no token within {COMMAND_SECONDS:g} s"
                                 ) from None
        except OSError as exc:
            raise ConfigError(f"{where}: {exc.strerror}") from None
        lines = done.stdout.decode("utf-8", "replace").splitlines()
        token = lines[0].strip() if lines else ""
        if done.returncode != 0 or not token:
            errors = [line.strip() for line in
                      done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            last = printable(errors[-1], 200) if errors else "nothing on standard error"
            for secret in (*self.issued, token):
                if secret:
                    last = last.replace(secret, "***")
            what = f"exited with {done.returncode}" if done.returncode != 0 \
                else "printed no token"
            raise ConfigError(f"{where} {what}: {last}")
        return self.hand_out(token)


# The cache of ``mailer login`` ----------------------------------------------------------

@dataclass
class Cache:
    """``MAILER_OAUTH_CACHE``: what ``mailer login`` keeps (provider, account, and the
    provider's tokens: MSAL's serialised cache, or Google's refresh and access token)."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Cache:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the sign-in cache: {exc.strerror} (a "
                              f"symlink is never followed)") from None
        with open(fd, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except ValueError:
                raise ConfigError(f"{path}: not a sign-in cache of mailer; "
                                  f"{SIGN_IN_AGAIN}") from None
        return cls(path, data if isinstance(data, dict) else {})

    def save(self) -> None:
        private_dir(self.path.parent)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(open_private(temporary, os.O_WRONLY | os.O_TRUNC), "w",
                  encoding="utf-8") as handle:
            json.dump(self.data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)  # a symlink at the path is replaced, not followed


def _session() -> requests.Session:
    """HTTPS to the identity provider, trusting exactly what SMTP and IMAP trust (the
    system's certificates, or SSL_CERT_FILE): the environment's REQUESTS_CA_BUNDLE is not
    read (it would override the session's choice), its proxies are."""
    import requests

    return _trusting(requests.Session())


def _trusting(session: requests.Session) -> requests.Session:
    """A requests session (also google-auth-oauthlib's own) set up as ``_session`` says."""
    import urllib.request

    session.trust_env = False
    session.proxies.update(urllib.request.getproxies())
    session.verify = ssl.get_default_verify_paths().cafile or True
    return session


def _unreachable(exc: BaseException, what: str) -> TemporaryError:
    return TemporaryError(f"the identity provider ({what}) cannot be reached: "
                          f"{printable(str(exc), 200)}")


class MicrosoftToken(TokenSource):
    """Microsoft 365 through MSAL: the device-code flow, then silent refreshes."""

    setting = "MAILER_OAUTH_PROVIDER"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        if not settings.oauth_client_id:
            raise ConfigError("MAILER_OAUTH_CLIENT_ID is not set: give the application "
                              "(client) ID of your organisation's app registration")
        self.client_id = settings.oauth_client_id
        base = (settings.oauth_authority or MICROSOFT_AUTHORITY).rstrip("/")
        self.custom = settings.oauth_authority is not None
        self.authority = f"{base}/{settings.oauth_tenant}"
        self.cache = Cache.load(settings.oauth_cache)

    def _app(self) -> Any:
        """A new MSAL app (a new one per step: MSAL remembers a refusal for 60 s)."""
        import msal

        cache = msal.SerializableTokenCache()
        if self.cache.data.get("provider") == "microsoft" and self.cache.data.get("msal"):
            cache.deserialize(self.cache.data["msal"])
        try:
            return msal.PublicClientApplication(
                self.client_id, authority=self.authority, token_cache=cache,
                http_client=_session(), instance_discovery=not self.custom)
        except ValueError as exc:
            raise ConfigError(f"MAILER_OAUTH_AUTHORITY or MAILER_OAUTH_TENANT: "
                              f"{printable(str(exc), 200)}") from None
        except Exception as exc:  # requests' errors: the discovery of the authority
            raise _unreachable(exc, self.authority) from None

    def _keep(self, app: Any, account: str | None) -> None:
        cache = app.token_cache
        if cache.has_state_changed or account:
            self.cache.data.update(provider="microsoft", msal=cache.serialize())
            if account:
                self.cache.data["account"] = account
            self.cache.save()

    def account(self) -> str | None:
        found = self.cache.data.get("account")
        return str(found) if found and self.cache.data.get("provider") == "microsoft" \
            else None

    def sign_in(self, say: Callable[[str], None]) -> str:
        app = self._app()
        try:
            flow = app.initiate_device_flow(scopes=MICROSOFT_SCOPES)
        except Exception as exc:
            raise _unreachable(exc, self.authority) from None
        if "user_code" not in flow:
            raise ConfigError(f"sign-in refused: {_error(flow)}")
        say(f"To sign in, open {flow['verification_uri']} and enter the code "
            f"{flow['user_code']} (waiting for you)")
        try:
            result = app.acquire_token_by_device_flow(flow)
        except Exception as exc:
            raise _unreachable(exc, self.authority) from None
        if "access_token" not in result:
            raise ConfigError(f"sign-in failed: {_error(result)}")
        claims = result.get("id_token_claims") or {}
        account = claims.get("preferred_username") or claims.get("email") or \
            next((a.get("username") for a in app.get_accounts()), None)
        self.hand_out(str(result["access_token"]))
        self._keep(app, str(account) if account else None)
        return str(account or "")

    def token(self, fresh: bool = False) -> str:
        if self.cache.data.get("provider") != "microsoft":
            raise ConfigError(f"not signed in to Microsoft: {SIGN_IN_AGAIN}")
        app = self._app()
        accounts = app.get_accounts(username=self.account())
        if not accounts:
            raise ConfigError(f"no signed-in account in {self.cache.path}: {SIGN_IN_AGAIN}")
        try:
            result = app.acquire_token_silent_with_error(MICROSOFT_SCOPES, account=accounts[0],
                                                         force_refresh=fresh)
        except Exception as exc:
            raise _unreachable(exc, self.authority) from None
        if not result or "access_token" not in result:
            why = _error(result) if result else "no token in the cache"
            raise ConfigError(f"the sign-in has ended ({why}): {SIGN_IN_AGAIN}")
        self._keep(app, None)
        return self.hand_out(str(result["access_token"]))


def _error(result: dict[str, Any] | None) -> str:
    if not result:
        return "no answer"
    error = str(result.get("error", "error"))
    description = str(result.get("error_description", "")).split("\n")[0]
    return printable(f"{error}: {description}" if description else error, 200)


class GoogleToken(TokenSource):
    """Google Workspace: the authorization code with PKCE (google-auth-oauthlib), then
    refreshes (google-auth)."""

    setting = "MAILER_OAUTH_PROVIDER"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        if not settings.oauth_client_id:
            raise ConfigError("MAILER_OAUTH_CLIENT_ID is not set: give the client ID of your "
                              "organisation's OAuth client (type: desktop app)")
        self.client_id = settings.oauth_client_id
        self.client_secret = settings.oauth_client_secret.get_secret_value() \
            if settings.oauth_client_secret is not None else ""
        self.authority = settings.oauth_authority
        self.cache = Cache.load(settings.oauth_cache)
        self.username = settings.smtp_username or settings.imap_username

    def _endpoints(self) -> tuple[str, str]:
        """(authorization, token) endpoints: Google's, or by OpenID discovery at
        MAILER_OAUTH_AUTHORITY."""
        if self.authority is None:
            return GOOGLE_AUTH, GOOGLE_TOKEN
        url = self.authority.rstrip("/") + "/.well-known/openid-configuration"
        try:
            document = _session().get(url, timeout=30).json()
            return str(document["authorization_endpoint"]), str(document["token_endpoint"])
        except (KeyError, ValueError, TypeError):
            raise ConfigError(f"MAILER_OAUTH_AUTHORITY: no OpenID configuration at {url}"
                              ) from None
        except Exception as exc:
            raise _unreachable(exc, url) from None

    def account(self) -> str | None:
        found = self.cache.data.get("account")
        return str(found) if found and self.cache.data.get("provider") == "google" else None

    def sign_in(self, say: Callable[[str], None]) -> str:
        from google_auth_oauthlib.flow import InstalledAppFlow

        auth, token = self._endpoints()
        flow = InstalledAppFlow.from_client_config(
            {"installed": {"client_id": self.client_id, "client_secret": self.client_secret,
                           "auth_uri": auth, "token_uri": token,
                           "redirect_uris": ["http://127.0.0.1"]}},
            scopes=GOOGLE_SCOPES, autogenerate_code_verifier=True)
        _trusting(flow.oauth2session)
        try:
            credentials = flow.run_local_server(
                host="127.0.0.1", port=0, open_browser=False,
                authorization_prompt_message="To sign in, open this address in a browser "
                                             "(waiting for you): {url}",
                success_message="Signed in: you can close this window and go back to mailer.")
        except Exception as exc:
            from oauthlib.oauth2 import OAuth2Error

            if isinstance(exc, OAuth2Error):
                raise ConfigError(f"sign-in failed: {printable(str(exc.error), 100)}"
                                  ) from None
            raise _unreachable(exc, token) from None
        if not credentials.refresh_token:
            raise ConfigError("sign-in gave no refresh token: remove mailer's access in the "
                              "Google account and sign in again")
        self.hand_out(str(credentials.token))
        self.cache.data = {"provider": "google", "account": self.username or "",
                           "refresh_token": credentials.refresh_token, "token_uri": token,
                           "token": credentials.token, "expiry": _iso(credentials.expiry)}
        self.cache.save()
        return self.username or ""

    def token(self, fresh: bool = False) -> str:
        data = self.cache.data
        if data.get("provider") != "google" or not data.get("refresh_token"):
            raise ConfigError(f"not signed in to Google: {SIGN_IN_AGAIN}")
        expiry = data.get("expiry")
        if not fresh and data.get("token") and expiry and \
                datetime.fromisoformat(expiry) - EXPIRY_MARGIN > datetime.now(UTC):
            return self.hand_out(str(data["token"]))
        from google.auth.exceptions import RefreshError
        from google.auth.transport.requests import Request
        from google.oauth2.credentials import Credentials

        credentials = Credentials(None, refresh_token=data["refresh_token"],
                                  token_uri=data.get("token_uri") or self._endpoints()[1],
                                  client_id=self.client_id, client_secret=self.client_secret,
                                  scopes=GOOGLE_SCOPES)
        try:
            credentials.refresh(Request(session=_session()))
        except RefreshError as exc:
            reason = exc.args[0] if exc.args else "refused"
            raise ConfigError(f"the sign-in has ended ({printable(str(reason), 120)}): "
                              f"{SIGN_IN_AGAIN}") from None
        except Exception as exc:
            raise _unreachable(exc, str(data.get("token_uri"))) from None
        data.update(token=credentials.token, expiry=_iso(credentials.expiry))
        self.cache.save()
        return self.hand_out(str(credentials.token))


def _iso(moment: datetime | None) -> str | None:
    """google-auth's expiry (naive UTC) as an aware ISO time."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def source(settings: Settings) -> TokenSource | None:
    """The token source the settings name, or None (a password, or no login)."""
    if settings.oauth_token_command and settings.oauth_provider:
        raise ConfigError("MAILER_OAUTH_TOKEN_COMMAND and MAILER_OAUTH_PROVIDER are both "
                          "set: use one way to get tokens")
    if settings.oauth_token_command:
        return CommandToken(settings.oauth_token_command)
    if settings.oauth_provider == "microsoft":
        return MicrosoftToken(settings)
    if settings.oauth_provider == "google":
        return GoogleToken(settings)
    return None


def signed_in(settings: Settings) -> MicrosoftToken | GoogleToken:
    """The built-in sign-in of the settings (ConfigError without a provider)."""
    found = source(settings)
    if not isinstance(found, MicrosoftToken | GoogleToken):
        raise ConfigError("MAILER_OAUTH_PROVIDER is not set: microsoft or google (a token "
                          "command needs no mailer login)")
    return found


def logout(settings: Settings) -> bool:
    """Delete the sign-in cache; whether there was one."""
    try:
        os.unlink(settings.oauth_cache)
    except FileNotFoundError:
        return False
    return True
