from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner, Result

from mailer.cli import cli
from tests.smtpserver import Recorder, RecordingController, start_server

ROOT = Path(__file__).resolve().parent.parent
SENDER = "Digdir <invitasjon@example.org>"
ENV = {"MAILER_SENDER": SENDER}
EXAMPLE = ROOT / "recipients" / "eksempel.csv"
Server = tuple[RecordingController, Recorder]


def parse(data: Path | bytes) -> EmailMessage:
    """A message (a file or its bytes) parsed back with the email package."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def people(tmp_path: Path, n: int, extra: str = "", start: int = 0,
           name: str = "liste.csv") -> Path:
    """A list of n people p<i>@example.org (``navn;epost``), plus raw ``extra`` rows."""
    rows = "".join(f"Person {i};p{i}@example.org\n" for i in range(start, start + n))
    return write(tmp_path / name, "navn;epost\n" + rows + extra)


@pytest.fixture
def tpl(tmp_path: Path) -> Path:
    """A templates folder with one small template ``t`` (subject, text and HTML)."""
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei {{ name }}", body_txt="Hei {{ name }}\n",
                  body_html="<p>Hei {{ name }}</p>")
    return root


def send(tpl: Path, listing: Path, env: dict[str, str], *extra: str,
         template: str = "t") -> Result:
    """``mailer send LISTING --template TEMPLATE`` with short retry delays."""
    return run("send", str(listing), "--template", template, "--templates-dir", str(tpl),
               "--retry-delay", "0.05", *extra, env=env)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MAILER_* from the developer's shell or .env; every test in its own folder."""
    for key in list(os.environ):
        if key.startswith("MAILER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates that a test may change."""
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def make_template(root: Path, name: str, **files: str | None) -> Path:
    """Write a template folder: make_template(root, 'x', subject='..', body_txt='..')."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in files.items():
        if text is None:
            continue
        filename = key.replace("_", ".") + ".j2" if key != "event" else "event.toml"
        (folder / filename).write_text(text, encoding="utf-8")
    return folder


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingController, Recorder]]:
    controller, handler = start_server()
    yield controller, handler
    controller.stop()


def smtp_env(controller: RecordingController, **more: str) -> dict[str, str]:
    env = {"MAILER_SMTP_HOST": "127.0.0.1", "MAILER_SMTP_PORT": str(controller.port),
           "MAILER_SMTP_SECURITY": "none", "MAILER_SENDER": SENDER,
           "MAILER_SMTP_HELO": "client.example.org"}
    env.update(more)
    return env


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"server_ctx": server_ctx, "ca_file": ca_file}


@pytest.fixture(scope="session")
def faketime(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that runs a program at another moment: Debian's libfaketime, behind
    tests/sleepshim.c (built here) so that sleeps and timed waits on the monotonic clock
    still work; the monotonic clock is real. Add FAKETIME (e.g. "+25h")."""
    import glob
    import subprocess

    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not found or gcc is None:
        pytest.skip("Debian's faketime (libfaketime) and a C compiler are needed")
    shim = tmp_path_factory.mktemp("faketime") / "sleepshim.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(shim),
                    str(ROOT / "tests" / "sleepshim.c"), "-ldl"], check=True)
    return {"LD_PRELOAD": f"{shim}:{found[0]}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
