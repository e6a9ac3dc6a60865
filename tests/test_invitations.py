"""Invitations and newsletters: calendar, unsubscribe, suppression, languages, Markdown,
test send, the preview page in a real browser, SpamAssassin."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest

from tests.conftest import (
    ENV,
    EXAMPLE,
    ROOT,
    SENDER,
    Server,
    make_template,
    parse,
    run,
    smtp_env,
    write,
)


def dry_run(templates: Path, template: str, listing: Path = EXAMPLE, env: dict[str, str] = ENV,
            outbox: str = "outbox", *extra: str) -> list[EmailMessage]:
    result = run("send", str(listing), "--template", template, "--templates-dir", str(templates),
                 "--dry-run", "--outbox", outbox, *extra, env=env)
    assert result.exit_code == 0, result.output
    return [parse(p) for p in sorted(Path(outbox).glob("*.eml"))]


def by_address(messages: list[EmailMessage]) -> dict[str, EmailMessage]:
    return {m["To"].addresses[0].addr_spec: m for m in messages}


def calendar_of(msg: EmailMessage, method: str = "REQUEST") -> icalendar.Calendar:
    """The guest's calendar object, checked for the iMIP form (RFC 6047) of ``method``:
    REQUEST and CANCEL as the last alternative (text/calendar; method=…) and the same bytes
    as an invitasjon.ics attachment; PUBLISH as the attachment only."""
    assert msg.get_content_type() == "multipart/mixed"
    alternative = msg.get_payload()[0]
    files = list(msg.iter_attachments())
    assert files[0].get_filename() == "invitasjon.ics"
    data = files[0].get_payload(decode=True)
    if method == "PUBLISH":
        assert files[0].get_content_type() == "text/calendar"
        assert files[0].get_param("method") == "PUBLISH"
        assert all(p.get_content_type() != "text/calendar" for p in alternative.walk())
    else:
        inline = alternative.get_payload()[-1]
        assert alternative.get_content_type() == "multipart/alternative"
        assert inline.get_content_type() == "text/calendar"
        assert inline.get_param("method") == method
        assert inline.get_content_charset() == "utf-8"
        assert files[0].get_content_type() == "application/ics"
        assert inline.get_payload(decode=True) == data
    cal = icalendar.Calendar.from_ical(data)
    assert str(cal["method"]) == method
    return cal


# Calendar ---------------------------------------------------------------------------

def test_every_invitation_carries_the_event(templates: Path) -> None:
    messages = dry_run(templates, "invitasjon")
    assert len(messages) == 7
    uids = set()
    for msg in messages:
        cal = calendar_of(msg)
        zones = [c for c in cal.walk("VTIMEZONE")]
        assert [str(z["tzid"]) for z in zones] == ["Europe/Oslo"]
        rules = sorted((sub["rrule"]["FREQ"], sub["rrule"]["BYMONTH"], sub["rrule"]["BYDAY"])
                       for sub in zones[0].subcomponents)  # yearly rules, not RDATE lists
        assert rules == [(["YEARLY"], [3], ["-1SU"]), (["YEARLY"], [10], ["-1SU"])]
        event = cal.walk("VEVENT")[0]
        oslo = ZoneInfo("Europe/Oslo")
        assert event.decoded("dtstart") == datetime(2027, 10, 27, 10, 15, tzinfo=oslo)
        assert event.decoded("dtend") == datetime(2027, 10, 27, 11, 30, tzinfo=oslo)
        assert str(event["summary"]) == "Felles kompetanseløft for digital transformasjon"
        assert "Trondheim" in str(event["location"])
        assert str(event["organizer"]) == "mailto:invitasjon@example.org"
        assert event["organizer"].params["CN"] == "Digdir"
        attendee = event["attendee"]
        assert not isinstance(attendee, list)  # exactly one: the guest
        assert str(attendee) == f"mailto:{msg['To'].addresses[0].addr_spec}"
        assert attendee.params["CN"] == msg["To"].addresses[0].display_name
        assert (attendee.params["ROLE"], attendee.params["PARTSTAT"], attendee.params["RSVP"]) \
            == ("REQ-PARTICIPANT", "NEEDS-ACTION", "TRUE")
        assert int(event["sequence"]) == 0 and str(event["status"]) == "CONFIRMED"
        uids.add(str(event["uid"]))
    assert uids == {"nokios-2027-kompetanseloft@example.org"}
    nb = by_address(messages)["kari.nordmann@example.org"]
    assert "Onsdag 27. oktober 2027 kl. 10.15–11.30" in nb.get_body(("plain",)).get_content()


def test_the_shipped_event_is_the_same_instant_in_icalendar_and_vobject(
        templates: Path) -> None:
    from datetime import UTC

    import vobject

    msg = dry_run(templates, "invitasjon")[0]
    data = next(msg.iter_attachments()).get_payload(decode=True)
    by_icalendar = icalendar.Calendar.from_ical(data).walk("VEVENT")[0].decoded("dtstart")
    by_vobject = vobject.readOne(data.decode()).vevent.dtstart.value
    expected = datetime(2027, 10, 27, 8, 15, tzinfo=UTC)  # CEST: UTC+2 in October
    assert by_icalendar.astimezone(UTC) == expected
    assert by_vobject.astimezone(UTC) == expected


def test_publish_is_an_attachment_without_attendee(templates: Path) -> None:
    toml = templates / "invitasjon" / "event.toml"
    toml.write_text(toml.read_text().replace('method = "request"', 'method = "publish"'))
    msg = dry_run(templates, "invitasjon")[0]
    event = calendar_of(msg, "PUBLISH").walk("VEVENT")[0]
    assert "attendee" not in event


def test_uid_without_uid_field_is_stable_across_runs(templates: Path) -> None:
    toml = templates / "invitasjon" / "event.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines()
                              if not line.startswith("uid")) + "\nsequence = 2\n")
    first = calendar_of(dry_run(templates, "invitasjon", outbox="a")[0]).walk("VEVENT")[0]
    second = calendar_of(dry_run(templates, "invitasjon", outbox="b")[-1]).walk("VEVENT")[0]
    assert str(first["uid"]) == str(second["uid"])
    assert str(first["uid"]).endswith("@example.org")
    assert int(first["sequence"]) == 2


@pytest.mark.parametrize(("change", "expected"), [
    (("start = 2027-10-27T10:15:00", ""), "field 'start': missing"),
    (('timezone = "Europe/Oslo"', 'timezone = "Europe/Trondheim"'), "field 'timezone': unknown"),
    (("end = 2027-10-27T11:30:00", "end = 2027-10-27T09:00:00"), "'end' must be after 'start'"),
    (('organizer = "Digdir <invitasjon@example.org>"', 'organizer = "Digdir"'),
     "field 'organizer'"),
    (('organizer = "Digdir <invitasjon@example.org>"', ""),
     "field 'organizer': 'organizer' is required for method = \"request\""),
    (('method = "request"', 'method = "ask"'), "field 'method'"),
    (('status = "confirmed"', 'status = "maybe"'), "field 'status'"),
    (('status = "confirmed"', "status = 'confirmed'\ncolour = 'blue'"),
     "field 'colour': unknown field"),
    (('status = "confirmed"', "status = = 0"), "event.toml: "),
])
def test_bad_event_exits_65_naming_the_field(templates: Path, change: tuple[str, str],
                                             expected: str) -> None:
    toml = templates / "invitasjon" / "event.toml"
    text = toml.read_text()
    assert change[0] in text
    toml.write_text(text.replace(change[0], change[1]))
    result = run("validate", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(templates))
    assert result.exit_code == 65
    assert expected in result.output
    assert "Traceback" not in result.output


# Unsubscribe and suppression --------------------------------------------------------

def test_unsubscribe_headers_and_link(templates: Path) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="https://example.org/avmeld?e={{ email | urlencode }}")
    messages = by_address(dry_run(templates, "invitasjon", env=env))
    msg = messages["ase.bjornstad@example.org"]
    url = "https://example.org/avmeld?e=ase.bjornstad%40example.org"
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = msg.get_body(("html",)).get_content()
    assert f'href="{url}"' in html and "Meld deg av" in html
    assert url in msg.get_body(("plain",)).get_content()
    env["MAILER_UNSUBSCRIBE_URL"] = "mailto:avmeld@example.org?subject={{ email }}"
    plain = dry_run(templates, "invitasjon", env=env, outbox="m")[0]
    assert plain["List-Unsubscribe"].startswith("<mailto:avmeld@example.org")
    assert plain["List-Unsubscribe-Post"] is None
    without = dry_run(templates, "invitasjon", outbox="n")[0]
    assert without["List-Unsubscribe"] is None
    assert "Meld deg av" not in without.get_body(("html",)).get_content()


def test_bad_unsubscribe_setting_exit_78(templates: Path) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="javascript:alert({{ email }})")
    result = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(templates), "--dry-run", env=env)
    assert result.exit_code == 78
    assert "MAILER_UNSUBSCRIBE_URL" in result.output


def test_suppression_in_validate_dry_run_and_send(tmp_path: Path, templates: Path,
                                                  smtp: Server) -> None:
    controller, handler = smtp
    text = write(tmp_path / "avmeldt.txt", "# meldt seg av\nKari.Nordmann@example.org\n")
    table = write(tmp_path / "bounces.csv", "e-post;grunn\nper.aeroy@example.org;bounce\n")
    checked = run("validate", str(EXAMPLE), "--suppress", str(text), "--suppress", str(table))
    assert checked.exit_code == 0
    assert "2 suppressed (would be skipped)" in checked.output
    preview = dry_run(templates, "invitasjon", EXAMPLE, ENV, "outbox", "--suppress", str(text))
    assert "kari.nordmann@example.org" not in by_address(preview)
    result = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(templates), "--suppress", str(text), "--suppress", str(table),
                 env=smtp_env(controller))
    assert result.exit_code == 0, result.output
    sent = {m.rcpt_tos[0] for m in handler.messages}
    assert len(sent) == 5
    assert "kari.nordmann@example.org" not in sent and "per.aeroy@example.org" not in sent
    assert "2 suppressed" in result.output
    with sqlite3.connect(tmp_path / ".mailer" / "journal.sqlite3") as db:
        states = dict(db.execute("SELECT email, state FROM deliveries"))
    assert states["kari.nordmann@example.org"] == "suppressed"
    assert states["per.aeroy@example.org"] == "suppressed"


# Languages ---------------------------------------------------------------------------

def test_language_variants_and_fallback(templates: Path) -> None:
    messages = by_address(dry_run(templates, "invitasjon"))
    nn = messages["ase.bjornstad@example.org"]
    en = messages["emma.larsen@example.org"]
    nb = messages["kari.nordmann@example.org"]
    blank = messages["hakon.overas@example.org"]  # no language: the plain (nb) files
    assert "Venleg helsing" in nn.get_body(("plain",)).get_content()
    assert '<html lang="nn"' in nn.get_body(("html",)).get_content()
    assert en["Subject"].startswith("Invitation: A joint skills boost")
    assert "27 October 2027" in en["Subject"]
    assert '<html lang="en"' in en.get_body(("html",)).get_content()
    assert "Vennlig hilsen" in nb.get_body(("plain",)).get_content()
    assert '<html lang="nb"' in blank.get_body(("html",)).get_content()
    assert nb["Subject"] == ("Invitasjon: Felles kompetanseløft for digital transformasjon – "
                             "NOKIOS 27. oktober 2027")


def test_validate_reports_a_language_with_no_variant_and_no_fallback(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_nb_txt="Hei", body_nb_txt="Hei\n", subject_en_txt="Hi",
                  body_en_txt="Hi\n")
    listing = write(tmp_path / "l.csv", "email;lang\na@example.org;nb\nb@example.org;de\n"
                                        "c@example.org;en\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 65
    assert "no variant for language 'de' and no fallback (recipient on line 3)" in result.output


# Newsletters -------------------------------------------------------------------------

def test_markdown_newsletter_in_the_layout_with_css_inlined(templates: Path) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="https://example.org/avmeld?e={{ email | urlencode }}")
    msg = dry_run(templates, "nyhetsbrev", env=env)[0]
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "<h2" in html and "Hva vi hørte</h2>" in html
    assert "Kompetanse er den største flaskehalsen" in html
    assert '<a href="https://example.org/nokios/kompetanseloft"' in html
    assert "<table" in html and "font-family:Arial" in html.replace(": ", ":")  # MJML tables
    assert '<html lang="nb"' in html and 'src="cid:logo.png@mailer"' in html
    assert "HVA VI HØRTE" in text and "#" not in text and "**" not in text  # text, not Markdown
    assert "Hei Kari Nordmann" in text
    assert "Meld deg av (https://example.org/avmeld?e=kari.nordmann%40example.org)" in text


def test_markdown_escapes_html_from_the_list(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "n", subject_txt="Nytt", body_md="# Hei {{ name }}\n\nTekst.\n")
    listing = write(tmp_path / "l.csv", "email;name\na@example.org;<img src=x onerror=alert(1)>\n")
    msg = dry_run(root, "n", listing)[0]
    html = msg.get_body(("html",)).get_content()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


# Test send ---------------------------------------------------------------------------

def test_test_send_goes_only_to_the_test_address(tmp_path: Path, templates: Path,
                                                 smtp: Server) -> None:
    controller, handler = smtp
    result = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(templates), "--test-to", "sjekk@example.net", "--test-recipient",
                 "ase.bjornstad@example.org", env=smtp_env(controller))
    assert result.exit_code == 0, result.output
    assert len(handler.messages) == 1
    got = handler.messages[0]
    assert got.rcpt_tos == ["sjekk@example.net"]
    msg = got.message
    assert msg["To"].addresses[0].addr_spec == "sjekk@example.net"
    attendee = calendar_of(msg).walk("VEVENT")[0]["attendee"]
    assert str(attendee) == "mailto:sjekk@example.net"  # the test address answers, not Åse
    real = by_address(dry_run(templates, "invitasjon"))["ase.bjornstad@example.org"]
    assert msg["Subject"] == real["Subject"]
    assert msg.get_body(("plain",)).get_content() == real.get_body(("plain",)).get_content()
    assert not (tmp_path / ".mailer").exists()  # the journal is untouched
    first = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                str(templates), "--test-to", "a@example.net", "--test-to", "b@example.net",
                env=smtp_env(controller))
    assert first.exit_code == 0
    assert [m.rcpt_tos for m in handler.messages[1:]] == [["a@example.net"], ["b@example.net"]]
    assert "Hei Kari Nordmann" in handler.messages[1].message.get_body(("plain",)).get_content()


# The preview page in a real browser ------------------------------------------------

@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_preview_page_in_headless_chromium(templates: Path) -> None:
    from tests.browser import Browser

    dry_run(templates, "invitasjon")
    index = Path("outbox/index.html").resolve()
    browser = Browser(index.as_uri())
    try:
        browser.wait("document.readyState === 'complete' && "
                     "document.querySelectorAll('#rows tr').length === 7")
        rows = browser.js("[...document.querySelectorAll('#rows tr')].map(r => r.innerText)")
        assert any("Åse Bjørnstad" in r and "nn" in r and "invitasjon.ics" in r for r in rows)
        # the first message is shown at once
        assert "kari.nordmann@example.org" in browser.js(
            "document.getElementById('m-to').textContent")
        browser.click('#rows tr[data-i="6"]')  # Emma Larsen, English
        browser.wait("document.getElementById('m-to').textContent.includes('emma.larsen')")
        assert browser.js("document.getElementById('m-subject').textContent").startswith(
            "Invitation: A joint skills boost")
        srcdoc = browser.js("document.getElementById('html').srcdoc")
        assert '<html lang="en"' in srcdoc and "Dear Emma Larsen" in srcdoc
        assert browser.js("document.getElementById('html').getAttribute('sandbox')") == ""
        assert browser.js("document.querySelector('#rows tr[data-i=\"6\"]')"
                          ".getAttribute('aria-selected')") == "true"
        browser.click("#show-text")
        browser.wait("!document.getElementById('text').hidden")
        text = browser.js("document.getElementById('text').textContent")
        assert "Dear Emma Larsen" in text and "<p>" not in text
        assert browser.js("document.getElementById('html').hidden") is True
        assert browser.js("document.getElementById('m-from').textContent") == SENDER
        assert 'src="data:image/png;base64,' in browser.js(  # the logo shows in the page
            "document.getElementById('html').srcdoc")
        assert browser.js("document.getElementById('m-event').textContent").startswith(
            "invitation: Felles kompetanseløft for digital transformasjon, 2027-10-27 10:15")
        visible = "[...document.querySelectorAll('#rows tr')].filter(r => !r.hidden).length"
        typing = ("(() => {{ const s = document.getElementById('search'); s.value = '{}'; "
                  "s.dispatchEvent(new Event('input')); }})()")
        browser.js(typing.format("ntnu"))  # Åse's organisation
        assert browser.js(visible) == 1
        browser.js(typing.format(""))
        browser.js("(() => { const l = document.getElementById('lang'); l.value = 'nn'; "
                   "l.dispatchEvent(new Event('change')); })()")
        assert browser.js(visible) == 2
        browser.click("#show-html")
        width = "document.getElementById('html').getBoundingClientRect().width"
        assert browser.js(width) > 500
        browser.click("#phone")
        browser.wait(f"{width} === 390")
        # The subject is shown whole on a desktop (it was cut to some 12 characters).
        assert browser.js("[...document.querySelectorAll('td.subject')].every(td => "
                          "td.scrollWidth <= td.clientWidth + 1)")
        assert browser.js("document.getElementById('m-attachments').textContent") == \
            "invitasjon.ics"  # as the list shows it
    finally:
        browser.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_preview_page_at_phone_width_and_by_a_link_to_one_message(
        tmp_path: Path, templates: Path) -> None:
    from tests.browser import Browser

    # A list in a folder with a long name: the page's title shows its path.
    listing = tmp_path / ("lister-" + "x" * 60) / "gjester.csv"
    listing.parent.mkdir()
    shutil.copy(EXAMPLE, listing)
    dry_run(templates, "invitasjon", listing)
    index = Path("outbox/index.html").resolve()
    browser = Browser(index.as_uri() + "#m6")
    try:
        browser.wait("document.readyState === 'complete' && "
                     "document.getElementById('m-to').textContent.includes('emma.larsen')")
        # A link to message 6 shows it, and its row is not under the sticky search bar.
        assert browser.js("(() => { const row = document.getElementById('m6')"
                          ".getBoundingClientRect(); const tools = document.getElementById("
                          "'tools').getBoundingClientRect(); return row.top >= tools.bottom "
                          "&& row.bottom <= window.innerHeight; })()")
        # A window 390 px wide (not mobile emulation: there the layout width is 980 px
        # until the viewport tag is read), and the page loaded anew in it.
        browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844,
                     deviceScaleFactor=1, mobile=False)
        browser.wait("window.innerWidth === 390")
        browser.call("Page.navigate", url=index.as_uri())
        browser.wait("document.readyState === 'complete' && location.hash === '' && "
                     "document.querySelectorAll('#rows tr').length === 7 && "
                     "document.getElementById('m-to').textContent.includes('kari')")
        # Nothing is wider than the screen: no horizontal scrolling of the page.
        assert browser.js("document.documentElement.scrollWidth <= window.innerWidth")
        assert browser.js("document.getElementById('list').getBoundingClientRect().right") \
            <= 390
        browser.click('#rows tr[data-i="2"]')
        browser.wait("document.getElementById('m-to').textContent.includes('ola')")
        view = browser.js("(() => { const r = document.getElementById('view')"
                          ".getBoundingClientRect(); return [r.left, r.right, r.width]; })()")
        assert view[0] >= 0 and view[1] <= 390 and view[2] > 300  # on the screen, not beside
        assert browser.js("document.getElementById('html').getBoundingClientRect().width") \
            <= 390
    finally:
        browser.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_preview_page_shows_a_hostile_name_as_text(tmp_path: Path, templates: Path) -> None:
    from tests.browser import Browser

    listing = write(tmp_path / "l.csv", "navn;epost\n"
                    "<script>window.pwned = 1</script>Kari;kari@example.org\n")
    root = tmp_path / "t2"
    make_template(root, "t", subject_txt="Hei {{ name }}", body_html="<p>Hei {{ name }}</p>")
    dry_run(root, "t", listing)
    browser = Browser(Path("outbox/index.html").resolve().as_uri())
    try:
        # The preview's own content, not readyState: the blank page before it is complete too.
        browser.wait("document.querySelectorAll('#rows tr').length === 1 && "
                     "document.getElementById('m-to').textContent !== ''")
        assert browser.js("window.pwned === undefined")
        assert "<script>window.pwned = 1</script>Kari" in browser.js(
            "document.querySelector('#rows tr').innerText")
        assert "<script>" in browser.js("document.getElementById('m-to').textContent")
    finally:
        browser.close()


# Spam filters ----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("spamassassin") is None, reason="spamassassin is not installed")
@pytest.mark.parametrize("template", ["invitasjon", "nyhetsbrev"])
def test_shipped_messages_score_below_1_in_spamassassin(templates: Path, template: str) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="https://example.org/avmeld?e={{ email | urlencode }}")
    dry_run(templates, template, env=env)
    scores: dict[str, Any] = {}
    for path in sorted(Path("outbox").glob("*.eml")):
        out = subprocess.run(["spamassassin", "-L", "-t"], input=path.read_bytes(),
                             capture_output=True, check=False, timeout=120
                             ).stdout.decode("utf-8", "replace")
        header = next(line for line in out.splitlines() if line.startswith("X-Spam-Status:"))
        score = float(header.split("score=")[1].split()[0])
        scores[path.name] = score
    assert len(scores) == 7
    assert max(scores.values()) < 1.0, scores


def test_test_send_options_are_checked(templates: Path, smtp: Server) -> None:
    controller, handler = smtp
    env = smtp_env(controller)
    bad = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
              str(templates), "--test-to", "not-an-address", env=env)
    assert bad.exit_code == 2 and "not-an-address" in bad.output
    lonely = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                 str(templates), "--test-recipient", "kari.nordmann@example.org", env=env)
    assert lonely.exit_code == 2
    unknown = run("send", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                  str(templates), "--test-to", "a@example.net", "--test-recipient",
                  "nobody@example.org", env=env)
    assert unknown.exit_code == 65 and "no recipient 'nobody@example.org'" in unknown.output
    assert handler.messages == []


@pytest.mark.parametrize("address", ["kari.nordmann@example.org", "ase.bjornstad@example.org",
                                     "emma.larsen@example.org"])
def test_the_shipped_invitation_looks_like_the_agency_sent_it(templates: Path,
                                                              address: str) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="https://example.org/avmeld?e={{ email | urlencode }}")
    msg = by_address(dry_run(templates, "invitasjon", env=env))[address]
    html = msg.get_body(("html",)).get_content()
    assert "<table" in html and "<div style=\"display:flex" not in html  # MJML's tables
    assert 'src="cid:logo.png@mailer"' in html and 'alt="Digitaliseringsdirektoratet"' in html
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    logo = related.get_payload()[1]
    assert logo["Content-ID"] == "<logo.png@mailer>" and logo.get_content_type() == "image/png"
    assert logo.get_payload(decode=True) == (templates / "invitasjon" / "logo.png").read_bytes()
    heading = html.split("Hei")[0].split("Dear")[0]  # everything before the greeting
    assert "– 27. oktober 2027" in heading or "– 27 October 2027" in heading
    assert 'href="https://example.org/nokios/kompetanseloft"' in html  # the button
    assert "Ingrid Haugen" in html  # a named contact
    assert "googleapis" not in html and "<link" not in html  # no web font fetched on open
    assert html.count("avmeld?e=") == 1  # the unsubscribe link once, in the footer
    assert [p.get_filename() for p in msg.iter_attachments()] == ["invitasjon.ics"]


def test_the_mail_client_check_warns_in_validate(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    filler = "<p>" + "Avsnitt. " * 20 + "</p>\n"
    make_template(root, "t", subject_txt="Hei",
                  body_html='<html><head><link rel="stylesheet" href="https://example.org/s.css">'
                            '<script>alert(1)</script></head><body>'
                            '<div style="display: flex; float: left">x</div>'
                            '<img src="https://example.org/logo.png">' + filler * 900
                            + "</body></html>")
    listing = write(tmp_path / "l.csv", "email\na@example.org\nb@example.org\n")
    result = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert result.exit_code == 0  # warnings, not errors
    out = result.output
    assert "Gmail clips a message over 102 KB" in out
    assert "no lang attribute" in out and "<script>" in out
    assert "an external stylesheet (https://example.org/s.css)" in out
    assert "layout with display:flex, float:left: Outlook for Windows ignores it" in out
    assert "an image without alt and width" in out
    assert out.count("Gmail clips") == 1  # the first message of each language only
    shipped = run("validate", str(EXAMPLE), "--template", "invitasjon", "--templates-dir",
                  str(ROOT / "templates"))
    assert "warning" not in shipped.output.replace("0 warnings", "")


def test_the_newsletter_text_part_is_text_and_the_unsubscribe_link_once(
        templates: Path) -> None:
    env = dict(ENV, MAILER_UNSUBSCRIBE_URL="https://example.org/avmeld?e={{ email | urlencode }}")
    msg = dry_run(templates, "nyhetsbrev", env=env)[0]
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content()
    assert "#" not in text and "**" not in text and "](" not in text
    assert "HVA VI HØRTE" in text  # a heading in capitals
    assert "- Kompetanse er den største flaskehalsen" in text  # a list with dashes
    assert "Vennlig hilsen\nDigitaliseringsdirektoratet" in text  # the line break kept
    assert "Vennlig hilsen<br" in html
    assert html.count("https://example.org/avmeld?e=kari.nordmann%40example.org") == 1


def test_an_mjml_template_becomes_table_html_clients_render(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    make_template(root, "t", subject_txt="Invitasjon til {{ name }}", body_mjml="""\
<mjml lang="{{ lang }}">
  <mj-head><mj-title>Invitasjon</mj-title></mj-head>
  <mj-body background-color="#f3f5f7">
    <mj-section background-color="#1e2b3c"><mj-column>
      <mj-text color="#ffffff" font-size="20px">Digdir</mj-text>
    </mj-column></mj-section>
    <mj-section background-color="#ffffff"><mj-column>
      <mj-text>Hei {{ name }} &amp; velkommen, {{ organisasjon }}!</mj-text>
      <mj-button href="https://example.org/nokios" background-color="#0062ba">
        Meld deg på</mj-button>
    </mj-column></mj-section>
  </mj-body>
</mjml>
""")
    listing = write(tmp_path / "l.csv", "navn;epost;organisasjon\n"
                                        "Kari;kari@example.org;<b>NTNU</b>\n")
    check = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert check.exit_code == 0 and "warning:" not in check.output  # clean for mail clients
    msg = dry_run(root, "t", listing)[0]
    html = msg.get_body(("html",)).get_content()
    assert '<html lang="nb"' in html and "<table" in html
    assert 'href="https://example.org/nokios"' in html and "Meld deg på" in html
    assert "&lt;b&gt;NTNU&lt;/b&gt;" in html  # a value from the list stays text
    text = msg.get_body(("plain",)).get_content()
    assert "Hei Kari & velkommen" in text and "Meld deg på (https://example.org/nokios)" in text
    (root / "t" / "body.mjml.j2").write_text("<mjml><mj-body><mj-section>")
    broken = run("validate", str(listing), "--template", "t", "--templates-dir", str(root))
    assert broken.exit_code == 65 and f"{root}/t/body.mjml.j2" in broken.output


def test_a_logo_on_the_web_instead_of_the_inline_one(templates: Path) -> None:
    msg = dry_run(templates, "invitasjon", EXAMPLE, ENV, "outbox", "--var",
                  "logo_url=https://example.org/digdir-logo.png")[0]
    html = msg.get_body(("html",)).get_content()
    assert 'src="https://example.org/digdir-logo.png"' in html and "cid:" not in html
    assert all(p.get_content_type() != "multipart/related" for p in msg.walk())
