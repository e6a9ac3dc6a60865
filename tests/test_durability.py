"""The delivery promise when the machine dies: every ``sending`` and ``sent`` mark is on
disk (fsync'ed, not only in the page cache) before the next step depends on it. Proved
without pulling a plug: an LD_PRELOAD shim (tests/fsynclog.c, built here with gcc) logs
every fsync of the real CLI with the system's monotonic clock, and the SMTP server logs
when each message starts; a connection must never start its next message before the
journal's write-ahead log was synced after the last reply."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, people, smtp_env

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def fsynclog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler for the LD_PRELOAD shim")
    shim = tmp_path_factory.mktemp("shim") / "fsynclog.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(HERE / "fsynclog.c"),
                    "-ldl"], check=True)
    return shim


def syncs_of(log: Path, suffix: str) -> list[float]:
    """The moments (monotonic seconds) a file ending in ``suffix`` was synced."""
    found = []
    for line in log.read_text().splitlines():
        stamp, _, path = line.partition(" ")
        if path.endswith(suffix):
            found.append(int(stamp) / 1e9)
    return sorted(found)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_every_mark_is_synced_before_its_connection_starts_the_next_message(
        tmp_path: Path, tpl: Path, smtp: Server, fsynclog: Path, concurrency: int) -> None:
    controller, handler = smtp
    log = tmp_path / "fsync.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(smtp_env(controller), LD_PRELOAD=str(fsynclog), FSYNC_LOG=str(log))
    proc = subprocess.run(
        [sys.executable, "-m", "mailer", "send", str(people(tmp_path, 24)), "--template", "t",
         "--templates-dir", str(tpl), "--concurrency", str(concurrency)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(handler.messages) == 24 and len(handler.mail_at) == 24
    syncs = syncs_of(log, "journal.sqlite3-wal")
    assert syncs, log.read_text()
    # The first message starts after the marks of the sync of the list are on disk.
    assert syncs[0] < min(t for t, _ in handler.mail_at)
    # Per connection: between the end of one message (its 250 goes out after this moment)
    # and the start of that connection's next message, the journal was synced: the 'sent'
    # mark of the one and the 'sending' mark of the next share that commit.
    checked = 0
    for received in handler.messages:
        later = [t for t, session in handler.mail_at
                 if session == received.session and t > received.at]
        if later:
            start = min(later)
            assert any(received.at < t < start for t in syncs), (received.at, start)
            checked += 1
    assert checked == 24 - len({m.session for m in handler.messages})
