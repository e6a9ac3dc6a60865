"""The organiser's mailbox over IMAP, read-only: the folder is opened with ``EXAMINE``
and every message fetched with ``BODY.PEEK[]``, so no flag changes; at most
``MESSAGE_LIMIT`` bytes of each (a partial fetch), so a 50 MB message costs no more
memory than a small one."""

from __future__ import annotations

import contextlib
import imaplib
import ssl
from collections.abc import Iterator

from ..errors import ConfigError, TemporaryError
from ..models import Item
from . import sasl
from .config import MESSAGE_LIMIT, ImapConfig
from .credentials import refuse_clear_text


def _text(value: object) -> str:
    """A server's words as text (imaplib gives bytes inside its exceptions)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return " ".join(_text(v) for v in value)
    text = str(value)
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1]
    return text


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _open(config: ImapConfig) -> imaplib.IMAP4:
    """A connection, secured as the settings say."""
    context = ssl.create_default_context()
    where = config.where
    try:
        if config.security == "tls":
            return imaplib.IMAP4_SSL(config.host, config.port, ssl_context=context,
                                     timeout=config.timeout)
        conn = imaplib.IMAP4(config.host, config.port, timeout=config.timeout)
        if config.security == "starttls":
            if "STARTTLS" not in conn.capabilities:
                raise ConfigError(f"{where} does not offer STARTTLS and "
                                  f"MAILER_IMAP_SECURITY is starttls: refusing plain text")
            conn.starttls(ssl_context=context)
        return conn
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS with IMAP server {where} failed: "
                          f"{exc.reason or exc}") from None
    except (OSError, imaplib.IMAP4.error) as exc:
        raise TemporaryError(f"cannot reach IMAP server {where}: {_text(exc)}") from None


def _oauth(conn: imaplib.IMAP4, config: ImapConfig, fresh: bool) -> None:
    """AUTHENTICATE XOAUTH2 (or OAUTHBEARER when only that is offered); a refused token
    raises IMAP4.error with the reason from the server's error challenge."""
    login = config.login
    assert login.oauth is not None and login.username
    offered = {c[5:].upper() for c in conn.capabilities if c.upper().startswith("AUTH=")}
    mechanism = sasl.choose(offered)
    if mechanism is None:
        raise ConfigError(f"IMAP server {config.where} offers no OAuth login (AUTH="
                          f"{', '.join(sorted(offered)) or 'nothing'}) and "
                          f"{login.oauth.setting} is set")
    token = login.oauth.token(fresh)
    first = sasl.initial(mechanism, login.username, token, config.host, config.port)
    said: list[str] = []

    def answer(challenge: bytes) -> bytes:
        if not said:
            said.append("")
            return first
        said.append(sasl.reason(challenge))  # the error challenge: answered, then NO
        return sasl.abort(mechanism)

    try:
        conn.authenticate(mechanism, answer)
    except imaplib.IMAP4.error as exc:
        why = next((w for w in said if w), "")
        raise imaplib.IMAP4.error(f"{_text(exc)}" + (f" ({why})" if why else "")) from None
    login.oauth.accepted = True


def _log_in(conn: imaplib.IMAP4, config: ImapConfig) -> None:
    """LOGIN with the password, or OAuth (a refused token once more with a fresh one)."""
    login = config.login
    if login.oauth is not None:
        try:
            _oauth(conn, config, fresh=False)
        except imaplib.IMAP4.error:
            _oauth(conn, config, fresh=True)
        return
    if login.username:
        try:
            conn.login(login.username, login.secret)
        except UnicodeEncodeError:
            raise ConfigError(f"IMAP login at {config.where} failed for user "
                              f"{login.username!r}: the password is not ASCII, which "
                              f"IMAP LOGIN cannot carry") from None


def _examine(config: ImapConfig) -> tuple[imaplib.IMAP4, str, list[str]]:
    """A connection logged in, the folder opened read-only: (connection, UIDVALIDITY,
    the UIDs of its messages)."""
    refuse_clear_text("MAILER_IMAP_SECURITY", config.host, config.security, config.login)
    conn = _open(config)
    where, login = config.where, config.login
    try:
        _log_in(conn, config)
        status, _ = conn.select(_quote(config.folder), readonly=True)  # EXAMINE
        if status != "OK":
            raise ConfigError(f"{where}: no folder {config.folder!r}")
        validity = (conn.response("UIDVALIDITY")[1] or [b"0"])[0]
        status, found = conn.uid("SEARCH", "ALL")
    except imaplib.IMAP4.error as exc:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()
        raise ConfigError(f"IMAP login or folder at {where} failed for user "
                          f"{login.username!r}: {login.redact(_text(exc))}") from None
    except (ConfigError, TemporaryError):
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()
        raise
    except OSError as exc:
        raise TemporaryError(f"IMAP server {where}: {exc}") from None
    uids = [u.decode() for u in found[0].split()] if found and found[0] else []
    return conn, validity.decode() if isinstance(validity, bytes) else str(validity), uids


def check(config: ImapConfig) -> int:
    """Log in and open the folder read-only, fetching nothing: the messages in it."""
    conn, _, uids = _examine(config)
    with contextlib.suppress(OSError, imaplib.IMAP4.error):
        conn.logout()
    return len(uids)


def items(config: ImapConfig) -> tuple[str, Iterator[Item]]:
    """(source name, messages) of the configured folder. The source name holds
    UIDVALIDITY: when the server renumbers the folder, its messages are read anew (and
    those already counted are recognised by the journal's answers replacing themselves)."""
    conn, validity, uids = _examine(config)
    where, login = config.where, config.login
    source = f"imap:{login.username or ''}@{config.host}/{config.folder}:{validity}"

    def fetch() -> Iterator[Item]:
        try:
            for uid in uids:
                status, data = conn.uid("FETCH", uid, f"(BODY.PEEK[]<0.{MESSAGE_LIMIT}>)")
                raw = next((part[1] for part in data if isinstance(part, tuple)), None)
                if status == "OK" and isinstance(raw, bytes):
                    yield Item(uid, raw, f"UID {uid}")
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise TemporaryError(f"IMAP server {where}: {_text(exc)}") from None
        except imaplib.IMAP4.error as exc:
            raise TemporaryError(f"IMAP server {where} refused to fetch: "
                                 f"{login.redact(_text(exc))}") from None
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()

    return source, fetch()


def find(config: ImapConfig, message_id: str) -> bytes | None:
    """The header of the message with this Message-ID in the folder (read-only), or None
    when it is not there (yet)."""
    conn, _, _ = _examine(config)
    try:
        status, found = conn.uid("SEARCH", "HEADER", "Message-ID", _quote(message_id))
        uids = found[0].split() if status == "OK" and found and found[0] else []
        if not uids:
            return None
        status, data = conn.uid("FETCH", uids[-1].decode(), "(BODY.PEEK[HEADER])")
        return next((part[1] for part in data if isinstance(part, tuple)), None)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise TemporaryError(f"IMAP server {config.where}: {_text(exc)}") from None
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()
