"""A private Postfix instance for tests: its own configuration and queue in a temporary
folder, smtpd on a loopback port, every message discarded after it was accepted, and its
log in a file the test reads. Needs root and Debian's postfix package (make test installs
it); the tests that use it are skipped without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.daemons import gone, listening, wait_until
from tests.smtpserver import free_port

POSTFIX = "/usr/sbin/postfix"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.net
mydomain = example.net
myorigin = example.net
mydestination =
relay_domains = {relay_domains}
default_transport = discard:test
relay_transport = discard:test
local_transport = discard:test
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
alias_maps =
alias_database =
biff = no
{delivery}"""

# With ``deliver_to``: mail for one address of example.org is delivered by Postfix's own
# virtual(8) into a Maildir (a Dovecot's), with an Authentication-Results header as the
# organiser's mail server would write it (prepended by smtpd for the loopback client).
DELIVERY = """\
virtual_mailbox_domains = example.org
virtual_mailbox_base = {base}
virtual_mailbox_maps = inline:{{ {address}={path} }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_transport = virtual
smtpd_data_restrictions = check_client_access inline:{{ {{ 127.0.0.1 = PREPEND \
  Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.org; \
  dkim=pass header.d=example.org; dmarc=pass header.from=example.org }} }}
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
error     unix  - - n - - error
retry     unix  - - n - - error
showq     unix  n - n - - showq
virtual   unix  - n n - - virtual
"""


def available() -> bool:
    return os.path.exists(POSTFIX) and os.geteuid() == 0


class Postfix:
    """``with Postfix() as mx:`` smtpd on ``mx.port``; ``mx.log()`` is its log so far."""

    def __init__(self, deliver_to: tuple[str, Path, str] | None = None) -> None:
        self.deliver_to = deliver_to  # (address, Maildir base, path under it)
        # The daemons run as the postfix user: the folder must be reachable by it, so not
        # under pytest's owner-only temporary folders.
        self.root = Path(tempfile.mkdtemp(prefix="mailer-postfix-"))
        os.chmod(self.root, 0o755)
        self.port = free_port()

    def __enter__(self) -> Postfix:
        delivery, relay_domains = "", "example.org"
        if self.deliver_to is not None:
            address, base, path = self.deliver_to
            delivery = DELIVERY.format(base=base, address=address, path=path)
            relay_domains = ""
        (self.root / "main.cf").write_text(MAIN_CF.format(root=self.root, delivery=delivery,
                                                          relay_domains=relay_domains))
        (self.root / "master.cf").write_text(MASTER_CF.format(port=self.port))
        (self.root / "queue").mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        self._postfix("start")
        wait_until(lambda: listening(self.port), "smtpd to listen")
        self.master = int((self.root / "queue" / "pid" / "master.pid").read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        self._postfix("stop")
        wait_until(lambda: gone(self.master), "the master to stop")
        shutil.rmtree(self.root, ignore_errors=True)


    def _postfix(self, command: str) -> None:
        subprocess.run([POSTFIX, "-c", str(self.root), command], check=True,
                       capture_output=True, timeout=120)


    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, predicate: Callable[[str], bool], what: str) -> str:
        wait_until(lambda: predicate(self.log()), what)
        return self.log()
