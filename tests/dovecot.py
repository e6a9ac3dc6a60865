"""A private Dovecot IMAP server for tests: its own configuration, a passwd-file user and a
Maildir in a temporary folder, IMAPS and IMAP+STARTTLS on loopback ports with a trustme
certificate. Needs root and Debian's dovecot-imapd (make test installs it); the tests that
use it are skipped without them."""

from __future__ import annotations

import contextlib
import mailbox
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import trustme

from tests.daemons import gone, listening, wait_until
from tests.smtpserver import free_port

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "digdir", "s3cret-imap"

CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login{oauth_mechanisms}
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
mail_location = maildir:{root}/mail/%u/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


# With ``introspection``: OAuth 2.0 tokens (XOAUTH2, OAUTHBEARER) checked at the
# identity provider's introspection endpoint (RFC 7662), over TLS it must trust.
OAUTH_PASSDB = """passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf.ext
}}
"""
OAUTH_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {root}/ca.pem
"""


def available() -> bool:
    return os.path.exists(DOVECOT) and os.geteuid() == 0


class Dovecot:
    """``with Dovecot(ca) as imap:`` IMAPS on ``imap.imaps``, STARTTLS on ``imap.imap``;
    ``imap.deliver(bytes)`` puts a message into the user's INBOX."""

    def __init__(self, ca: trustme.CA, introspection: str | None = None) -> None:
        self.introspection = introspection
        self.root = Path(tempfile.mkdtemp(prefix="mailer-dovecot-"))
        os.chmod(self.root, 0o755)  # the mail processes run as nobody
        self.imap, self.imaps = free_port(), free_port()
        self.ca = ca

    def __enter__(self) -> Dovecot:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        (self.root / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        hashed = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD],
                                capture_output=True, text=True, check=True).stdout.strip()
        (self.root / "users").write_text(f"{USER}:{hashed}::::::\n")
        oauth = {"oauth_mechanisms": "", "oauth_passdb": ""}
        if self.introspection is not None:
            self.ca.cert_pem.write_to_path(str(self.root / "ca.pem"))
            (self.root / "oauth2.conf.ext").write_text(
                OAUTH_CONF.format(url=self.introspection, root=self.root))
            oauth = {"oauth_mechanisms": " xoauth2 oauthbearer",
                     "oauth_passdb": OAUTH_PASSDB.format(root=self.root)}
        (self.root / "dovecot.conf").write_text(
            CONF.format(root=self.root, imap=self.imap, imaps=self.imaps, **oauth))
        self.maildir = self.root / "mail" / USER / "Maildir"
        self.maildir.parent.mkdir(parents=True)
        mailbox.Maildir(self.maildir, create=True)
        self._own()
        with (self.root / "start.log").open("wb") as out:  # the daemon keeps what it gets
            subprocess.run([DOVECOT, "-c", str(self.root / "dovecot.conf")], check=True,
                           stdout=out, stderr=out, stdin=subprocess.DEVNULL, timeout=60)
        wait_until(lambda: listening(self.imaps) and listening(self.imap),
              "IMAP to listen")
        # Under load the master writes its pid file after its listeners answer: wait
        # for the file (and its contents), not only for the ports.
        pid = self.root / "run" / "master.pid"
        wait_until(lambda: pid.exists() and pid.read_text().strip().isdigit(),
                   "the master's pid file")
        self.master = int(pid.read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["doveadm", "-c", str(self.root / "dovecot.conf"), "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                       check=False)
        wait_until(lambda: gone(self.master), "the master to stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self) -> None:
        for path in [self.root / "mail", *(self.root / "mail").rglob("*")]:
            # Dovecot's own lock or temporary file may be gone since it was listed
            with contextlib.suppress(FileNotFoundError):
                shutil.chown(path, "nobody", "nogroup")

    def deliver(self, data: bytes) -> None:
        mailbox.Maildir(self.maildir, create=False).add(data)
        self._own()

    def settings(self, env: dict[str, str], folder: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> dict[str, str]:
        """``env`` with this server's IMAPS settings and login; its CA is trusted (through
        SSL_CERT_FILE, a file written into ``folder``) for the rest of the test."""
        ca_file = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        return dict(env, MAILER_IMAP_HOST="127.0.0.1", MAILER_IMAP_PORT=str(self.imaps),
                    MAILER_IMAP_USERNAME=USER, MAILER_IMAP_PASSWORD=PASSWORD)


