"""Attachments (--attach and a per-guest column) and the archive copy, received by a real
SMTP server and parsed back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ENV, Server, make_template, parse, run, send, smtp_env, write

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    make_template(folder, "t", subject_txt="Program for {{ name }}", body_txt="Hei {{ name }}\n")
    return folder


def test_attachments_arrive_with_their_types_and_names(tmp_path: Path, root: Path,
                                                       smtp: Server) -> None:
    controller, handler = smtp
    programme = tmp_path / "program.pdf"
    programme.write_bytes(PDF)
    write(tmp_path / "vedlegg" / "kart.png", "PNG-bytes")
    write(tmp_path / "vedlegg" / "Påmelding æøå.txt", "Svarfrist 1. oktober")
    listing = write(tmp_path / "gjester.csv", "navn;e-post;vedlegg\n"
                    "Kari;kari@example.org;vedlegg/kart.png|vedlegg/Påmelding æøå.txt\n"
                    "Ola;ola@example.org;\n")
    result = send(root, listing, smtp_env(controller), "--attach", str(programme))
    assert result.exit_code == 0, result.output
    kari = next(m.message for m in handler.messages if m.rcpt_tos == ["kari@example.org"])
    files = {p.get_filename(): p for p in kari.iter_attachments()}
    assert set(files) == {"program.pdf", "kart.png", "Påmelding æøå.txt"}
    assert files["program.pdf"].get_content_type() == "application/pdf"
    assert files["program.pdf"].get_payload(decode=True) == PDF
    assert files["kart.png"].get_content_type() == "image/png"
    assert files["Påmelding æøå.txt"].get_payload(decode=True) == b"Svarfrist 1. oktober"
    assert "filename*=utf-8''P%C3%A5melding%20%C3%A6%C3%B8%C3%A5.txt" in \
        kari.as_string().replace("\r\n", "\n")
    ola = next(m.message for m in handler.messages if m.rcpt_tos == ["ola@example.org"])
    assert [p.get_filename() for p in ola.iter_attachments()] == ["program.pdf"]


def test_a_file_is_read_once_however_many_messages_carry_it(tmp_path: Path, root: Path) -> None:
    from mailer.campaign import Campaign
    from mailer.message import Attachment
    from mailer.models import Kind, Recipient, Rendered
    from mailer.settings import load_settings

    big = tmp_path / "program.pdf"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    rows = "".join(f"P{i};p{i}@example.org\n" for i in range(1000))
    listing = write(tmp_path / "liste.csv", "navn;e-post\n" + rows)
    settings = load_settings(templates_dir=root, sender="Digdir <invitasjon@example.org>")
    campaign = Campaign(settings, listing, "t", attach=[big])
    sizes: list[int] = []

    def visit(guest: Recipient, decision: object, rendered: Rendered | None,
              files: list[Attachment]) -> None:
        assert rendered is not None
        sizes.append(len(campaign.assemble(guest, rendered, Kind.MESSAGE, files).data))
        if len(sizes) % 100 == 0:  # a message kept as its recipe is built again
            sizes.append(len(campaign.build(guest).data))

    assert campaign.check(visit=visit).ok
    assert len(sizes) == 1010 and min(sizes) > 2 * 1024 * 1024  # every message carries it
    assert campaign.store.reads == 1


@pytest.mark.parametrize(("cell", "expected"), [
    ("../hemmelig.txt", "lies outside"),
    ("/etc/passwd", "an absolute path"),
    ("lenke.txt", "lies outside"),  # a symlink out of the folder
    ("mangler.pdf", "no such file"),
    ("mappe", "not a regular file"),
])
def test_a_file_from_the_list_must_stay_in_its_folder(tmp_path: Path, root: Path, cell: str,
                                                      expected: str) -> None:
    write(tmp_path / "hemmelig.txt", "SMTP password")
    folder = tmp_path / "liste"
    (folder / "mappe").mkdir(parents=True)
    (folder / "lenke.txt").symlink_to(tmp_path / "hemmelig.txt")
    listing = write(folder / "gjester.csv", f"navn;e-post;vedlegg\nKari;kari@example.org;\n"
                                            f"Ola;ola@example.org;{cell}\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert f"{listing}:3: attachment" in result.output and expected in result.output
    sent = run("send", str(listing), "--template", "t", "--templates-dir", str(root),
               "--dry-run", env=ENV)
    assert sent.exit_code == 65 and not Path("outbox").exists()


def test_message_size_limits(tmp_path: Path, root: Path) -> None:
    write(tmp_path / "stor.bin", "")
    os.truncate(tmp_path / "stor.bin", 8 * 1024 * 1024)  # ~10.7 MB encoded: a warning
    write(tmp_path / "enorm.bin", "")
    os.truncate(tmp_path / "enorm.bin", 20 * 1024 * 1024)  # ~26.7 MB encoded: an error
    listing = write(tmp_path / "l.csv", "navn;e-post;vedlegg\nA;a@example.org;stor.bin\n"
                                        "B;b@example.org;enorm.bin\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65
    lines = result.output.splitlines()
    assert any(line.startswith(f"{listing}:2: warning: the message is about 1")
               and "over 10 MB" in line for line in lines)
    assert any(line.startswith(f"{listing}:3: the message is about 2")
               and "over the 25 MB most providers accept" in line for line in lines)


def test_the_archive_copy_arrives_once_per_guest_without_a_bcc_header(
        tmp_path: Path, root: Path, smtp: Server) -> None:
    controller, handler = smtp
    handler.pipelining = True
    env = smtp_env(controller, MAILER_ARCHIVE_BCC="arkiv@example.org")
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\nOla;ola@example.org\n")
    result = send(root, listing, env)
    assert result.exit_code == 0, result.output
    assert sorted(m.rcpt_tos for m in handler.messages) == [
        ["kari@example.org", "arkiv@example.org"], ["ola@example.org", "arkiv@example.org"]]
    assert all("Bcc" not in m.message and "arkiv" not in str(m.message["To"])
               for m in handler.messages)
    test = send(root, listing, env, "--test-to", "sjekk@example.net")
    assert test.exit_code == 0
    assert handler.messages[-1].rcpt_tos == ["sjekk@example.net"]  # never copied


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_archive_copy_does_not_lose_the_guests_message(
        tmp_path: Path, root: Path, smtp: Server, pipelining: bool) -> None:
    controller, handler = smtp
    handler.pipelining = pipelining
    handler.reject["arkiv@example.org"] = "550 5.1.1 no such mailbox"
    env = smtp_env(controller, MAILER_ARCHIVE_BCC="arkiv@example.org")
    listing = write(tmp_path / "l.csv", "navn;e-post\nKari;kari@example.org\n")
    result = send(root, listing, env)
    assert result.exit_code == 1
    output = result.output
    assert "archive copy refused (the message to kari@example.org was sent): 550 5.1.1" in output
    assert [m.rcpt_tos for m in handler.messages] == [["kari@example.org"]]
    assert "sent 1," in output
    again = send(root, listing, env)
    assert again.exit_code == 0 and len(handler.messages) == 1
    assert parse(handler.messages[0].data)["To"] == "Kari <kari@example.org>"


def test_a_huge_file_is_refused_by_its_size_before_it_is_read(tmp_path: Path,
                                                              root: Path) -> None:
    """A 600 MB file used 3.8 GB: its size is known from stat, and it is never read."""
    import re
    import subprocess
    import sys

    write(tmp_path / "video.mp4", "")
    os.truncate(tmp_path / "video.mp4", 600 * 1024 * 1024)  # sparse: no disk used
    listing = write(tmp_path / "l.csv", "navn;e-post;vedlegg\nA;a@example.org;video.mp4\n")
    code = ("import re, sys\nfrom mailer.cli import main\n"
            f"sys.argv = ['mailer', 'validate', {str(listing)!r}, '--template', 't',"
            f" '--templates-dir', {str(root)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code)\n"
            "status = open('/proc/self/status').read()\n"
            "print('peak', int(re.search(r'VmHWM:\\s*(\\d+)', status).group(1)) // 1024)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert "exit 65" in out
    assert "attachment 'video.mp4': 600.0 MB, over the 25 MB most providers accept" in out
    peak = int(re.search(r"peak (\d+)", out).group(1))  # type: ignore[union-attr]
    assert peak < 150, out
