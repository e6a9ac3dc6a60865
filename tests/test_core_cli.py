"""The core through the real CLI: validate, templates, messages, dry run, settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ENV, ROOT, SENDER, make_template, parse, run, write


def simple(tmp_path: Path, **files: str | None) -> Path:
    root = tmp_path / "templates"
    defaults: dict[str, str | None] = {"subject_txt": "Hei {{ name }}",
                                       "body_txt": "Hei {{ name }}, {{ email }}\n"}
    defaults.update(files)
    make_template(root, "t", **defaults)
    return root


def test_validate_shipped_example() -> None:
    result = run("validate", str(ROOT / "recipients/eksempel.csv"), "--template", "invitasjon",
                 "--templates-dir", str(ROOT / "templates"))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(
        "7 rows read, 7 recipients, 0 errors, 0 warnings, by language: en 1 / nb 4 / nn 2")


def test_validate_reports_every_problem_and_exits_65(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "navn;e-post\nOla;ola@example.org\nKari;kari@\n"
                                     "Ola igjen;OLA@example.org\n")
    result = run("validate", str(path))
    assert result.exit_code == 65
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{path}:3: invalid address 'kari@'")
    assert lines[1] == (f"{path}:4: warning: duplicate address OLA@example.org "
                        f"(first on line 2): skipped")
    assert lines[-1] == f"{path}: 3 rows read, 1 recipient, 1 error, 1 warning"


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email\na@example.org\nA@example.org\n")
    result = run("validate", str(path))
    assert result.exit_code == 0
    assert "1 warning" in result.output


def test_validate_names_a_variable_no_column_provides(tmp_path: Path) -> None:
    root = simple(tmp_path, body_html="<p>{{ firma }} {{ navn }}</p>\n<p>{{ dato }}</p>")
    path = write(tmp_path / "l.csv", "email;navn\na@example.org;A\n")
    result = run("validate", str(path), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert f"{root}/t/body.html.j2:1: variable 'firma' is used but no column or --var " \
           f"provides it" in result.output
    assert f"{root}/t/body.html.j2:2: variable 'dato'" in result.output
    ok = run("validate", str(path), "--template", "t", "--templates-dir", str(root),
             "--var", "firma=Digdir", "--var", "dato=27. oktober")
    assert ok.exit_code == 0, ok.output


def test_unknown_template_and_syntax_error(tmp_path: Path) -> None:
    root = simple(tmp_path)
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    result = run("validate", str(path), "--template", "nope", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert "no such template (available: t)" in result.output
    make_template(root, "bad", subject_txt="Hei", body_txt="linje\n{% if %}\n")
    result = run("validate", str(path), "--template", "bad", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert f"{root}/bad/body.txt.j2:2: syntax error" in result.output
    assert "Traceback" not in result.output


def test_a_template_without_a_body_names_every_kind_of_body(tmp_path: Path) -> None:
    root = simple(tmp_path)
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    folder = root / "uten"
    folder.mkdir()
    write(folder / "subject.txt.j2", "Hei")
    write(folder / "body.nn.mjml.j2", "<mjml><mj-body></mj-body></mjml>")
    result = run("validate", str(path), "--template", "uten", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert f"{folder}: no body for the default language: add body.txt.j2, body.html.j2, " \
           f"body.mjml.j2 or body.md.j2" in result.output
    (folder / "subject.txt.j2").unlink()
    (folder / "body.nn.mjml.j2").unlink()
    write(folder / "notes.txt", "not a template file")
    result = run("validate", str(path), "--template", "uten", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert "a template needs subject.txt.j2 and body.txt.j2, body.html.j2, body.mjml.j2 or " \
           "body.md.j2" in result.output


def test_undefined_at_render_names_file_and_recipient_line(tmp_path: Path) -> None:
    root = simple(tmp_path, body_txt="Hei {{ recipient['Firma'] }}\n")
    path = write(tmp_path / "l.csv", "email\na@example.org\nb@example.org\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 65
    assert f"{root}/t/body.txt.j2:1: undefined variable" in result.output
    assert "(recipient on line 2; and 1 more)" in result.output
    assert not (tmp_path / "outbox").exists()  # nothing written


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ name.__init__.__globals__ }}",
    "{{ recipient.update({'x': 1}) }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_sandbox_escapes_fail_with_exit_65(tmp_path: Path, attack: str) -> None:
    root = simple(tmp_path, body_txt=attack)
    path = write(tmp_path / "l.csv", "email;name\na@example.org;A\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 65, result.output
    assert f"{root}/t/body.txt.j2:1:" in result.output
    assert "uid=" not in result.output


def test_html_injection_from_a_column_is_escaped(tmp_path: Path) -> None:
    root = simple(tmp_path, body_html="<p>Hei {{ name }} fra {{ firma }}</p>")
    path = write(tmp_path / "l.csv",
                 'email;name;firma\na@example.org;<script>alert(1)</script>;"<b>Ond</b> & co"\n')
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 0, result.output
    msg = parse(next((tmp_path / "outbox").glob("*.eml")))
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "&lt;b&gt;Ond&lt;/b&gt; &amp; co" in html
    assert "<script>alert(1)</script>" in text  # the text part is plain text, not escaped


def test_dry_run_messages_parse_back(tmp_path: Path) -> None:
    root = simple(tmp_path, subject_txt="Invitasjon til {{ firma }}: æøå ÆØÅ",
                  body_html="{% extends '_base.html.j2' %}{% block c %}<h1>Hei {{ name }}</h1>"
                            "<p>Les <a href=\"https://example.org/p\">programmet</a>.</p>"
                            "{% endblock %}", body_txt=None)
    write(root / "_base.html.j2", '<html lang="{{ lang }}"><body>{% block c %}{% endblock %}'
                                  "</body></html>")
    path = write(tmp_path / "l.csv",
                 "navn;epost;firma\nÅse Bjørnstad;ase@example.org;Kartverket\n"
                 "\"Nordmann, Ola\";ola@example.org;NTNU\n")
    env = dict(ENV, MAILER_REPLY_TO="Svar <svar@example.org>")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", "--outbox", "ut", env=env)
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "ut").glob("*.eml"))
    assert len(files) == 2
    raw = files[0].read_bytes()
    assert raw.isascii()  # 7-bit on the wire
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    first, second = parse(files[0]), parse(files[1])
    assert first["Subject"] == "Invitasjon til Kartverket: æøå ÆØÅ"
    assert first["To"].addresses[0].display_name == "Åse Bjørnstad"
    assert first["To"].addresses[0].addr_spec == "ase@example.org"
    assert second["To"].addresses[0].display_name == "Nordmann, Ola"
    assert first["From"] == SENDER
    assert first["Reply-To"] == "Svar <svar@example.org>"
    assert first["MIME-Version"] == "1.0"
    assert first["Date"].datetime is not None
    assert first.get_content_type() == "multipart/alternative"
    text = first.get_body(("plain",)).get_content()
    html = first.get_body(("html",)).get_content()
    assert "HEI ÅSE BJØRNSTAD" in text and "<h1>" not in text  # a heading, in capitals
    assert "programmet (https://example.org/p)" in text  # links kept in derived text
    assert '<html lang="nb">' in html
    assert first.get_body(("plain",)).get_content_charset() == "utf-8"
    assert first["Message-ID"] != second["Message-ID"]
    # stable per campaign + recipient: a second dry run gives the same IDs
    run("send", str(path), "--template", "t", "--templates-dir", str(root), "--dry-run",
        "--outbox", "ut", env=env)
    assert parse(sorted((tmp_path / "ut").glob("*.eml"))[0])["Message-ID"] == first["Message-ID"]
    index = (tmp_path / "ut" / "index.html").read_text()
    assert "Åse Bjørnstad" in index and "ase@example.org" in index
    assert "Invitasjon til Kartverket" in index


def test_a_value_cannot_add_or_break_a_header(tmp_path: Path) -> None:
    root = simple(tmp_path, subject_txt="Hei {{ tittel }}\nBcc: evil@example.org")
    path = write(tmp_path / "l.csv", "email;name;tittel\n"
                                     "a@example.org;Ola =?utf-8?q?Bcc:_x?=;sjef =?x?= \\\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 0, result.output
    msg = parse(next((tmp_path / "outbox").glob("*.eml")))
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hei sjef =?x?= \\ Bcc: evil@example.org"
    assert msg["To"].addresses[0].display_name == "Ola =?utf-8?q?Bcc:_x?="
    assert len(msg["To"].addresses) == 1


def test_dry_run_with_an_invalid_list_writes_nothing(tmp_path: Path) -> None:
    root = simple(tmp_path)
    path = write(tmp_path / "l.csv", "email\nok@example.org\nbad\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 65
    assert "nothing was sent" in result.output
    assert not (tmp_path / "outbox").exists()
    assert not (tmp_path / ".mailer").exists()


def test_settings_errors_exit_78_without_echoing_values(tmp_path: Path) -> None:
    root = simple(tmp_path)
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    args = ("send", str(path), "--template", "t", "--templates-dir", str(root), "--dry-run")
    result = run(*args)
    assert result.exit_code == 78
    assert "MAILER_SENDER is not set" in result.output
    result = run(*args, env=dict(ENV, MAILER_SMTP_PORT="hemmelig-verdi-123"))
    assert result.exit_code == 78
    assert "invalid setting MAILER_SMTP_PORT" in result.output
    assert "hemmelig-verdi-123" not in result.output
    result = run(*args, env=dict(ENV, MAILER_SMTP_SECURITY="ssl3", MAILER_SMTP_PASSWORD="pw-xyz"))
    assert result.exit_code == 78 and "pw-xyz" not in result.output
    assert "MAILER_SMTP_SECURITY" in result.output
    result = run(*args, env={"MAILER_SENDER": "not an address"})
    assert result.exit_code == 78 and "MAILER_SENDER" in result.output
    result = run(*args, env=dict(ENV, MAILER_RATE_LIMIT="fast please"))
    assert result.exit_code == 78 and "invalid setting MAILER_RATE_LIMIT" in result.output


def test_dotenv_in_current_folder_and_options_override(tmp_path: Path) -> None:
    root = simple(tmp_path)
    write(tmp_path / ".env", f"MAILER_SENDER={SENDER}\nMAILER_TEMPLATES_DIR=nowhere\n")
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    result = run("send", str(path), "--template", "t", "--dry-run")
    assert result.exit_code == 65 and "nowhere/t: no such template" in result.output
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root), "--dry-run")
    assert result.exit_code == 0, result.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    assert run("validate", str(path), "--var", "not-a-name=1").exit_code == 2
    assert run("send", str(path)).exit_code == 2  # --template missing
    assert run("validate", "missing.csv").exit_code == 2


@pytest.mark.parametrize("command", [[sys.executable, "-m", "mailer"],
                                     [str(Path(sys.executable).parent / "mailer")]],
                         ids=["python -m mailer", "console script"])
def test_python_dash_m_and_console_script(tmp_path: Path, command: list[str]) -> None:
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
    assert "validate" in out.stdout and "send" in out.stdout
    bad = subprocess.run([*command, "validate", "nowhere.csv"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and "nowhere.csv" in bad.stderr


def test_preview_embeds_the_first_messages_and_lists_all(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mailer import outbox

    monkeypatch.setattr(outbox, "PREVIEW_LIMIT", 2)
    root = simple(tmp_path, body_html="<p>Hei {{ name }}</p>")
    rows = "".join(f"p{i}@example.org;Person {i}\n" for i in range(4))
    path = write(tmp_path / "l.csv", "email;name\n" + rows)
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "outbox" / "index.html").read_text()
    assert page.count('<tr data-i="') == 4
    assert "\\u003cp\\u003eHei Person 1" in page  # the HTML part, embedded as JSON
    assert "\\u003cp\\u003eHei Person 3" not in page
    assert "Only the first 2 messages are shown here: open 00004-p3@example.org.eml" in page
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 4


def test_dry_run_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    root = simple(tmp_path)
    invoice = write(tmp_path / "box" / "20240101-invoice.eml", "keep")
    index = write(tmp_path / "box" / "index.html", "keep")
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", "--outbox", "box", env=ENV)
    assert result.exit_code == 78
    assert "box: the folder holds files that mailer did not write" in result.output
    assert invoice.read_text() == "keep" and index.read_text() == "keep"
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["20240101-invoice.eml",
                                                                   "index.html"]


def test_dry_run_replaces_its_own_files_only(tmp_path: Path) -> None:
    root = simple(tmp_path)
    two = write(tmp_path / "two.csv", "email\na@example.org\nb@example.org\n")
    one = write(tmp_path / "one.csv", "email\nc@example.org\n")
    victim = write(tmp_path / "victim.txt", "keep")
    for number, path in enumerate((two, one)):
        result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                     "--dry-run", env=ENV)
        assert result.exit_code == 0, result.output
        if number == 0:  # between the runs: a file of the user's, and planted symlinks
            mine = write(tmp_path / "outbox" / "00007-viktig.eml", "keep me")
            (tmp_path / "outbox" / "00002-b@example.org.eml").unlink()
            (tmp_path / "outbox" / "00002-b@example.org.eml").symlink_to(victim)
            (tmp_path / "outbox" / ".index.html.tmp").symlink_to(victim)
    names = sorted(p.name for p in (tmp_path / "outbox").glob("*.eml"))
    assert names == ["00001-c@example.org.eml", "00007-viktig.eml"]
    assert mine.read_text() == "keep me" and victim.read_text() == "keep"
    assert not list((tmp_path / "outbox").glob(".index-*"))  # no temporary file left
    # A link planted where the next message goes (not a file of the last dry run): refused.
    (tmp_path / "outbox" / "00002-b@example.org.eml").symlink_to(victim)
    result = run("send", str(two), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", env=ENV)
    assert result.exit_code == 78
    assert "00002-b@example.org.eml: a file that mailer did not write is in the way" \
        in result.output
    assert victim.read_text() == "keep"
    assert not list((tmp_path / "outbox").glob(".index-*"))


def test_an_outbox_from_before_manifests_is_replaced_a_look_alike_refused(
        tmp_path: Path) -> None:
    root = simple(tmp_path)
    path = write(tmp_path / "l.csv", "email\na@example.org\n")
    old = tmp_path / "old"
    write(old / "00001-x@example.org.eml", "From: a\r\n\r\nold\r\n")
    write(old / "index.html", "<!DOCTYPE html>\n<title>mailer preview: t — l.csv</title>\n")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", "--outbox", str(old), env=ENV)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in old.glob("*.eml")) == ["00001-a@example.org.eml"]
    fake = tmp_path / "fake"
    write(fake / "20240101-invoice.eml", "keep")
    write(fake / "index.html", "<title>my page</title>")
    result = run("send", str(path), "--template", "t", "--templates-dir", str(root),
                 "--dry-run", "--outbox", str(fake), env=ENV)
    assert result.exit_code == 78
    assert (fake / "20240101-invoice.eml").read_text() == "keep"


def test_the_shipped_env_example_loads_as_it_is(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`cp .env.example .env` is the README's first step: every blank line in it is 'not
    set', not an invalid value."""
    from mailer.settings import load_settings

    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.daily_limit is None and settings.oauth_provider is None
    assert settings.tokens is None and settings.oauth_tenant == "organizations"


def test_special_use_domains_only_when_allowed(tmp_path: Path) -> None:
    listing = write(tmp_path / "l.csv", "navn;e-post\nA;a@lab.test\nB;b@printer.local\n"
                                        "C;c@nas.home.arpa\n")
    refused = run("validate", str(listing), env={})
    assert refused.exit_code == 65
    assert "special-use or reserved name" in refused.output
    assert "MAILER_ALLOW_SPECIAL_DOMAINS=true accepts it" in refused.output
    allowed = run("validate", str(listing), env={"MAILER_ALLOW_SPECIAL_DOMAINS": "true"})
    assert allowed.exit_code == 0, allowed.output
    assert "3 recipients, 0 errors" in allowed.output
    again = run("validate", str(listing), env={})  # the next run without it refuses again
    assert again.exit_code == 65
