"""DKIM signing (RFC 6376) for relays that do not sign: rsa-sha256, relaxed/relaxed, once
per message when the queue finishes it (after its Date).

Written here rather than with dkimpy: dkimpy's RSA is pure Python (about 24 ms a
signature on this machine: a send of 3,000 messages a second would drop to 40), while
OpenSSL through ``cryptography`` signs in 0.3 ms and lets go of the GIL meanwhile. The
canonicalisation is the RFC's few rules; the tests verify every signature with dkimpy.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

# What is signed, in this order, when the message has it (RFC 6376 5.4.1 recommends From,
# Subject, Date, To, Message-ID, the MIME headers, and List-Unsubscribe(-Post), RFC 8058).
SIGNED = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
          "List-Unsubscribe", "List-Unsubscribe-Post")
_WSP = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
KEY_BITS = 2048


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: whitespace runs as one space, none at line ends, no empty lines at
    the end; a body that is not empty ends with CRLF. With bytes.replace, at C speed (a
    regular expression over a 20 kB body costs 0.5 ms: more than the RSA signature)."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n").rstrip(b" ").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: the name in lower case, the value unfolded, whitespace runs as one
    space, none around the colon or at the end."""
    value = _WSP.sub(b" ", _FOLD.sub(b"", value)).strip(b" \t\r\n")
    return name.strip().lower() + b":" + value + b"\r\n"


def _fields(head: bytes) -> dict[bytes, tuple[bytes, bytes]]:
    """The header fields by lower-case name: (name, value with its folds); for a name that
    occurs more than once, the last (RFC 6376 5.4.2 signs from the bottom up)."""
    found: dict[bytes, tuple[bytes, bytes]] = {}
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, colon, value = field.partition(b":")
        if colon:
            found[name.strip().lower()] = (name, value)
    return found


@dataclass(frozen=True)
class Signer:
    """The key, selector and domain of the signatures."""

    key: RSAPrivateKey
    selector: str
    domain: str

    @classmethod
    def load(cls, path: Path, selector: str | None, domain: str) -> Signer:
        """MAILER_DKIM_KEY: a PEM private key, refused unless owner-only."""
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        if not selector:
            raise ConfigError("MAILER_DKIM_SELECTOR is not set: the selector whose DNS record "
                              "holds the key (e.g. mailer2027 for "
                              "mailer2027._domainkey.example.org)")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ConfigError(f"MAILER_DKIM_KEY: {path}: {exc.strerror} (a symlink is never "
                              f"followed)") from None
        with open(fd, "rb") as handle:
            if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
                raise ConfigError(f"MAILER_DKIM_KEY: {path} can be read by others: make it "
                                  f"owner-only (chmod 600 {path})")
            data = handle.read()
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"MAILER_DKIM_KEY: {path}: not an unencrypted PEM private key "
                              f"({str(exc).split('.')[0]})") from None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigError(f"MAILER_DKIM_KEY: {path}: not an RSA key (rsa-sha256 is the "
                              f"algorithm every receiver verifies)")
        if key.key_size < 1024:
            raise ConfigError(f"MAILER_DKIM_KEY: {path}: {key.key_size} bits is too short "
                              f"(receivers ignore keys under 1024 bits; use 2048)")
        return cls(key, selector, domain)

    def sign(self, data: bytes) -> bytes:
        """The message with a DKIM-Signature header on top (``data`` has CRLF line ends)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        end = data.find(b"\r\n\r\n")
        head, body = (data, b"") if end < 0 else (data[:end], data[end + 4:])
        fields = _fields(head)
        names = [n for n in SIGNED if n.lower().encode() in fields]
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        tags = (f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={self.domain}; s={self.selector};"
                f" t={int(time.time())}; h={':'.join(n.lower() for n in names)};"
                f" bh={body_hash}; b=")
        signed = b"".join(relaxed_header(*fields[n.lower().encode()]) for n in names)
        signed += relaxed_header(b"DKIM-Signature", tags.encode()).removesuffix(b"\r\n")
        signature = base64.b64encode(
            self.key.sign(signed, padding.PKCS1v15(), hashes.SHA256())).decode()
        # Folded only where the relaxed form is unchanged: after each "; ", and inside b=.
        value = tags.replace("; ", ";\r\n\t") + "\r\n\t".join(
            signature[i:i + 72] for i in range(0, len(signature), 72))
        return b"DKIM-Signature: " + value.encode() + b"\r\n" + data


def new_key(path: Path) -> RSAPrivateKey:
    """A new RSA key written to ``path`` as PEM, owner-only, never over anything there."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    from .files import new_private_file

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    try:
        fd = new_private_file(path)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a key is never written over (choose another "
                          f"--out, or another selector)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the key: {exc.strerror}") from None
    with open(fd, "wb") as handle:
        handle.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


def dns_record(key: RSAPrivateKey) -> str:
    """The TXT record's text (``v=DKIM1; k=rsa; p=...``)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def zone_line(selector: str, domain: str | None, record: str) -> str:
    """The record as a zone file line, in strings of at most 255 characters."""
    name = f"{selector}._domainkey" + (f".{domain}." if domain else "")
    strings = " ".join(f'"{record[i:i + 250]}"' for i in range(0, len(record), 250))
    return f"{name} IN TXT ( {strings} )"
