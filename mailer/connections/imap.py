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


def items(config: ImapConfig) -> tuple[str, Iterator[Item]]:
    """(source name, messages) of the configured folder. The source name holds
    UIDVALIDITY: when the server renumbers the folder, its messages are read anew (and
    those already counted are recognised by the journal's answers replacing themselves)."""
    refuse_clear_text("MAILER_IMAP_SECURITY", config.host, config.security, config.login)
    conn = _open(config)
    where, login = config.where, config.login
    try:
        if login.username:
            try:
                conn.login(login.username, login.secret)
            except UnicodeEncodeError:
                raise ConfigError(f"IMAP login at {where} failed for user "
                                  f"{login.username!r}: the password is not ASCII, which "
                                  f"IMAP LOGIN cannot carry") from None
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
    except ConfigError:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.logout()
        raise
    except OSError as exc:
        raise TemporaryError(f"IMAP server {where}: {exc}") from None
    uids = found[0].split() if found and found[0] else []
    source = (f"imap:{login.username or ''}@{config.host}/{config.folder}:"
              f"{validity.decode() if isinstance(validity, bytes) else validity}")

    def fetch() -> Iterator[Item]:
        try:
            for uid in uids:
                status, data = conn.uid("FETCH", uid, f"(BODY.PEEK[]<0.{MESSAGE_LIMIT}>)")
                raw = next((part[1] for part in data if isinstance(part, tuple)), None)
                if status == "OK" and isinstance(raw, bytes):
                    yield Item(uid.decode(), raw, f"UID {uid.decode()}")
        except (OSError, imaplib.IMAP4.abort) as exc:
            raise TemporaryError(f"IMAP server {where}: {_text(exc)}") from None
        except imaplib.IMAP4.error as exc:
            raise TemporaryError(f"IMAP server {where} refused to fetch: "
                                 f"{login.redact(_text(exc))}") from None
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()

    return source, fetch()
