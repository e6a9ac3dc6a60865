"""Hostile and broken input: every one ends in a verdict (a documented exit code and one
line naming the file and the cause), never a traceback, and nothing outside mailer's own
files is touched."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.address import AddressError, check_address
from mailer.recipients import Problem, Recipient, RecipientList
from tests.conftest import (
    ENV,
    EXAMPLE,
    ROOT,
    SENDER,
    Server,
    make_template,
    parse,
    people,
    run,
    send,
    smtp_env,
    write,
)


def validate(root: Path, listing: Path = EXAMPLE, *extra: str, env: dict[str, str] = ENV
             ) -> tuple[int, str]:
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root),
                 *extra, env=env)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# Templates ------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    '{% include "mangler.txt.j2" %}',
    '{% import "mangler.txt.j2" as m %}{{ m.x }}',
    '{% extends "mangler.txt.j2" %}',
    '{% include "../hemmelig.txt" %}',
    '{% extends "../../hemmelig.txt" %}',
])
def test_a_missing_or_outside_template_is_an_input_error(tmp_path: Path, body: str) -> None:
    write(tmp_path / "hemmelig.txt", "SMTP_PASSWORD=topsecret")
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt=body)
    code, out = validate(root)
    assert code == 65, out
    assert f"{root}/t/body.txt.j2" in out and "template not found" in out
    assert "topsecret" not in out


def test_a_symlink_out_of_the_templates_folder_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / ".env", "MAILER_SMTP_PASSWORD=topsecret\n")
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt='{% include "t/footer.txt" %}')
    (root / "t" / "footer.txt").symlink_to(secret)
    code, out = validate(root)
    assert code == 65 and "outside the templates folder" in out
    result = run("send", str(EXAMPLE), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 65 and not Path("outbox").exists()
    # The subject itself a link out of the folder: refused the same way.
    (root / "t" / "body.txt.j2").write_text("Hei\n")
    (root / "t" / "subject.txt.j2").unlink()
    (root / "t" / "subject.txt.j2").symlink_to(secret)
    code, out = validate(root)
    assert code == 65 and "outside the templates folder" in out and "topsecret" not in out


def test_a_template_that_is_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei")
    (root / "t" / "body.txt.j2").write_bytes("Hei på deg".encode("latin-1"))
    code, out = validate(root)
    assert code == 65 and f"{root}/t/body.txt.j2: not UTF-8" in out


def test_markdown_cannot_be_injected_from_the_list(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Nytt", body_md="Hei {{ name }}!\n\n{{ notat }}\n")
    listing = write(tmp_path / "l.csv", "navn;epost;notat\n"
                    "[Klikk her](https://evil.example/phish);a@example.org;"
                    "![](https://evil.example/pixel.gif) # Overskrift\n")
    result = run("send", str(listing), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 0, result.output
    msg = parse(next(Path("outbox").glob("*.eml")))
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "<a " not in html and "<img" not in html and "<h1" not in html
    assert "[Klikk her](https://evil.example/phish)" in html  # shown as the text it is
    assert "Hei [Klikk her](https://evil.example/phish)!" in text


# Event file -------------------------------------------------------------------------------

@pytest.mark.parametrize(("event", "expected"), [
    (None, "event.toml: not a file"),
    ('summary = "x"\nstart = 2027-10-27T10:15:00\nend = 2027-10-27T11:30:00\n'
     "sequence = 2147483648\n", "field 'sequence'"),
    ('summary = "x"\nstart = 2027-10-27T10:15:00\nend = 2027-10-27T11:30:00\n'
     'url = "https://example.org/a\\r\\nX-Evil: 1"\n', "field 'url'"),
])
def test_a_bad_event_file_is_an_input_error(tmp_path: Path, event: str | None,
                                            expected: str) -> None:
    root = tmp_path / "templates"
    folder = make_template(root, "t", subject_txt="Hei", body_txt="Hei\n")
    if event is None:
        (folder / "event.toml").mkdir()
    else:
        (folder / "event.toml").write_text(event)
    code, out = validate(root)
    assert code == 65 and expected in out, out


# Settings ---------------------------------------------------------------------------------

def test_settings_never_echo_a_value_and_refuse_infinity(tmp_path: Path, tpl: Path) -> None:
    listing = people(tmp_path, 1)
    for key, value in (("MAILER_RATE_LIMIT", "hemmelig42"), ("MAILER_SMTP_TIMEOUT", "inf"),
                       ("MAILER_RETRY_DELAY", "nan"), ("MAILER_RETRY_FOR", "forever")):
        result = run("send", str(listing), "--template", "t", "--templates-dir", str(tpl),
                     env=dict(ENV, **{key: value}))
        assert result.exit_code == 78, (key, result.output)
        assert key in result.output and value not in result.output
    result = send(tpl, listing, ENV, "--retry-delay", "inf")
    assert result.exit_code == 2


def test_a_dotenv_that_is_not_utf8(tmp_path: Path, tpl: Path) -> None:
    (tmp_path / ".env").write_bytes(b"MAILER_SENDER=P\xe5l <a@example.org>\n")
    result = send(tpl, people(tmp_path, 1), {}, "--dry-run")
    assert result.exit_code == 78 and ".env: not UTF-8" in result.output


def test_no_password_in_plain_text_to_another_host(tmp_path: Path, tpl: Path,
                                                   smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller, MAILER_SMTP_USERNAME="digdir", MAILER_SMTP_PASSWORD="hemmelig",
                   MAILER_SMTP_HOST="smtp.example.org")
    result = send(tpl, people(tmp_path, 1), env)
    assert result.exit_code == 78 and "plain text" in result.output
    assert "hemmelig" not in result.output and handler.connections == 0


# The journal, the lock, the outbox: mailer's own files only ---------------------------------

def test_a_journal_or_lock_that_is_a_symlink_is_refused(tmp_path: Path, tpl: Path,
                                                         smtp: Server) -> None:
    controller, handler = smtp
    victim = write(tmp_path / "victim.txt", "keep")
    os.symlink(victim, tmp_path / "j.sqlite3")
    env = smtp_env(controller, MAILER_JOURNAL="j.sqlite3")
    result = send(tpl, people(tmp_path, 1), env)
    assert result.exit_code == 78 and "symbolic link" in result.output
    # The lock file of another journal, planted as a link before its first run.
    import hashlib

    digest = hashlib.sha256(b"t:liste.csv").hexdigest()[:12]
    os.symlink(victim, tmp_path / f"k.sqlite3.{digest}.lock")
    result = send(tpl, people(tmp_path, 1), dict(env, MAILER_JOURNAL="k.sqlite3"))
    assert result.exit_code == 78 and "lock" in result.output
    assert victim.read_text() == "keep" and handler.messages == []


def test_a_folder_in_the_way_of_the_journal(tmp_path: Path, tpl: Path) -> None:
    write(tmp_path / ".mailer", "a file where the journal folder goes")
    result = send(tpl, people(tmp_path, 1), dict(ENV, MAILER_SMTP_PORT="9"))
    assert result.exit_code == 78 and ".mailer" in result.output


def _limited(limit: int) -> None:
    """In the child: files may not grow past ``limit`` bytes (a full disk, as far as the
    program can tell: writes fail with EFBIG instead of killing it)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "send"])
def test_a_full_disk_is_a_temporary_failure(tmp_path: Path, tpl: Path, smtp: Server,
                                            dry_run: bool) -> None:
    controller, _ = smtp
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(smtp_env(controller))
    path = people(tmp_path, 400)
    extra = ["--dry-run"] if dry_run else []
    proc = subprocess.run(
        [sys.executable, "-m", "mailer", "send", str(path), "--template", "t",
         "--templates-dir", str(tpl), *extra], env=env, capture_output=True, text=True,
        preexec_fn=lambda: _limited(48 * 1024), check=False, timeout=120)
    assert proc.returncode == 75, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("Error:") == 1
    assert any(why in proc.stderr for why in ("File too large", "disk is full", "I/O error"))
    if dry_run:
        assert not list((tmp_path / "outbox").glob(".index-*"))
        assert not (tmp_path / "outbox" / "index.html").exists()


def test_status_into_a_closed_pipe(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    controller, _ = smtp
    env = smtp_env(controller)
    assert send(tpl, people(tmp_path, 300), env).exit_code == 0
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    mailer = f"{sys.executable} -m mailer"
    proc = subprocess.run(f"{mailer} status --format csv | head -1", shell=True, env=full,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.stdout.startswith("campaign,email,")
    assert proc.stderr == ""


# Lists -------------------------------------------------------------------------------------

def test_a_bad_line_in_a_suppression_file(tmp_path: Path, tpl: Path) -> None:
    supp = write(tmp_path / "nei.txt", "# asked not to be mailed\nola@example.org\nkari@\n")
    result = run("validate", str(people(tmp_path, 2)), "--suppress", str(supp))
    assert result.exit_code == 65
    assert f"{supp}:3: not an address 'kari@'" in result.output


def test_unknown_languages_warn_and_are_counted(tmp_path: Path) -> None:
    listing = write(tmp_path / "l.csv", "navn;epost;målform\nA;a@example.org;fransk\n"
                    "B;b@example.org;se\nC;c@example.org;nn\nD;d@example.org;\n")
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt="Hei\n", subject_nn_txt="Hei",
                  body_nn_txt="Hei\n")
    code, out = validate(root, listing)
    assert code == 0
    assert f"{listing}:2: warning: unknown language 'fransk': gets the fallback (nb)" in out
    assert f"{listing}:3: warning: unknown language 'se'" in out
    assert "2 with an unknown language got nb" in out
    assert "by language: nb 3 / nn 1" in out


def test_a_line_break_is_kept_in_the_body_and_refused_in_the_subject(tmp_path: Path) -> None:
    listing = write(tmp_path / "l.csv", 'navn;epost;notat\nA;a@example.org;"Ringt 12.9.\n'
                                        'Sa ja muntlig"\n')
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei {{ name }}", body_txt="Notat: {{ notat }}\n",
                  body_html="<p>{{ notat }}</p>")
    result = run("send", str(listing), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 0, result.output
    msg = parse(next(Path("outbox").glob("*.eml")))
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "Notat: Ringt 12.9.\nSa ja muntlig" in text
    make_template(root, "t", subject_txt="{{ recipient['notat'] }}")
    code, out = validate(root, listing)
    assert code == 65
    assert f"{listing}:2: column 'notat' holds a line break and the subject uses it" in out


# Fuzzing: random bytes and mutations of a good list -----------------------------------------

GOOD = ("navn;e-post;organisasjon;målform\r\nKari Nordmann;kari@example.org;NTNU;nb\r\n"
        "Åse Bjørnstad;ase@example.org;\"Statens vegvesen; Region midt\";nn\r\n"
        "Ola;ola@example.org;Digdir;en\r\n").encode()
MUTATIONS = [b'"', b";", b",", b"\t", b"\r", b"\n", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3",
             b"@", b"x" * 140_000]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(MUTATIONS))
        else:
            del data[at:at + draw(st.integers(1, 4))]
    return bytes(data)


def _verdict(path: Path) -> None:
    """Reading a list ends in recipients and PATH:LINE problems, or one InputError."""
    from mailer.errors import InputError

    try:
        items = list(RecipientList(path).scan())
    except InputError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        assert error.startswith(f"{path}:")
        return
    lines = sum(1 for _ in path.read_bytes().splitlines()) + 1
    for item in items:
        assert isinstance(item, Recipient | Problem)
        assert 1 <= item.line <= lines
        if isinstance(item, Problem):
            assert str(item).startswith(f"{path}:{item.line}: ")


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated(), st.binary(max_size=400)))
def test_fuzz_the_list_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(data)
    _verdict(path)


@settings(max_examples=30, deadline=None)
@given(data=mutated())
def test_fuzz_through_the_cli(data: bytes) -> None:
    path = Path("fuzz.csv")
    path.write_bytes(data)
    result = run("validate", str(path), env={"MAILER_SENDER": SENDER})
    assert result.exit_code in (0, 65), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 65:
        assert f"{path}:" in result.output


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_the_address_check(text: str) -> None:
    try:
        address = check_address(text)
    except AddressError as exc:
        assert isinstance(exc.args[0], str) and exc.args[0]  # noqa: PT017 - says why
        return
    assert "@" in address.normalized and address.ascii.isascii()
    assert check_address(address.normalized) == address


def test_the_journal_records_first_attempts(tmp_path: Path, tpl: Path, smtp: Server) -> None:
    from mailer.journal import SCHEMA_VERSION

    controller, _ = smtp
    assert send(tpl, people(tmp_path, 1), smtp_env(controller)).exit_code == 0
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT first_attempt FROM deliveries").fetchone()[0]


@pytest.mark.parametrize(("body", "expected"), [
    ('{{ "x" * 2000000000 }}', ":1: not allowed in a template (sandbox): the result would "
                               "hold over 5,000,000 characters"),
    ("{{ 9 ** 99999999 }}", ":1: not allowed in a template (sandbox): the power is too large"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}"
     "{% endfor %}", ": not allowed in a template (sandbox): the message would be over 5 "
                     "million characters"),
], ids=["a huge string", "a huge number", "a loop that writes gigabytes"])
def test_a_template_that_would_exhaust_memory_is_refused(tmp_path: Path, body: str,
                                                         expected: str) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt=body + "\n")
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65, result.output
    assert f"{root / 't' / 'body.txt.j2'}{expected} (recipient on line 2)" in result.output


def test_a_template_that_never_ends_is_stopped(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Hei", body_txt="{% for i in range(100000) %}"
                  "{% for j in range(100000) %}{% endfor %}{% endfor %}\n")
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65, result.output
    assert "body.txt.j2: rendering one message took over 5 s (a loop that never ends?) " \
           "(recipient on line 2)" in result.output


@pytest.mark.parametrize("start", ["9999-12-31T10:00:00", "0001-01-01T10:00:00"])
def test_event_dates_at_the_calendars_limits_are_refused_by_validate(
        tmp_path: Path, start: str) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    toml = templates / "invitasjon" / "event.toml"
    text = toml.read_text().replace("start = 2027-10-27T10:15:00", f"start = {start}")
    toml.write_text(text.replace("end = 2027-10-27T11:30:00",
                                 f"end = {start.replace('T10', 'T11')}"))
    result = run("validate", str(ROOT / "recipients" / "eksempel.csv"), "--template",
                 "invitasjon", "--templates-dir", str(templates))
    assert result.exit_code == 65, result.output
    assert "event.toml: field 'start': the year must be between 1900 and 2200" in result.output


def test_a_retry_for_beyond_ten_years_is_a_usage_error(tmp_path: Path, tpl: Path) -> None:
    result = run("send", str(people(tmp_path, 1)), "--template", "t", "--templates-dir",
                 str(tpl), "--retry-for", "999999999999d", env=ENV)
    assert result.exit_code == 2, result.output
    assert "at most 3650d" in result.output
