"""Benchmark `mailer send` against its floor, the physical limit and its nearest peer, on
Postfix's smtp-sink.

Starts smtp-sink on a free loopback port (installing Debian's postfix package when it is
missing), generates N personalised recipients and a ~5 KB text+HTML template, then runs,
alternating round by round, each as its own process:

- floor: a bare aiosmtplib loop, prebuilt message, 4 connections, one process (floor.py);
- smtp-source: Postfix's own load generator, 4 sessions (the physical limit here);
- mailmerge: the nearest Python peer, in a venv of its own (installed on first use), on the
  same list and a text template of the same words;
- mailer: the real `mailer send` (check + render + journal + pipelined SMTP, concurrency 4).

It prints msg/s, CPU time and peak RSS of each, and mailer's ratio to each. Then start-up,
`mailer validate` of 100,000 and 1,000,000 rows, peak RSS of `send` at 1,000 vs 100,000
recipients, and the time to the first message of a 100,000-guest send.

Usage: python benchmarks/bench.py [-n 10000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

SUBJECT = "Invitasjon til NOKIOS, {{ name }}\n"
TEXT = """Hei {{ name }},

Digitaliseringsdirektoratet inviterer deg og {{ organisasjon }} til et dialogmøte om
digital kompetanse på NOKIOS i Trondheim, torsdag 27. oktober kl. 10.15–11.30.
{% for i in range(12) %}
Avsnitt {{ i }}: Vi samler ledere fra offentlig sektor, næringslivet og akademia for å
snakke om hvordan vi sammen kan løfte kompetansen som digital transformasjon krever.
{% endfor %}
Vennlig hilsen
Digitaliseringsdirektoratet
"""
HTML = """<!DOCTYPE html>
<html lang="nb"><head><meta charset="utf-8"><title>Invitasjon</title></head>
<body><h1>Hei {{ name }}</h1>
<p>Digitaliseringsdirektoratet inviterer deg og {{ organisasjon }} til et dialogmøte.</p>
{% for i in range(10) %}<p>Avsnitt {{ i }}: Vi samler ledere fra offentlig sektor,
næringslivet og akademia for å løfte kompetansen.</p>
{% endfor %}<p>Vennlig hilsen<br>Digdir</p></body></html>
"""


@dataclass
class Run:
    seconds: float
    cpu: float
    rss_mb: float
    rate: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smtp_sink() -> str:
    found = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                         if os.path.exists("/usr/sbin/smtp-sink") else None)
    if found:
        return found
    print("installing Debian's postfix for smtp-sink ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["sh", "-c", "echo 'postfix postfix/main_mailer_type select No configuration'"
                    " | debconf-set-selections"], check=False)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postfix"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return "/usr/sbin/smtp-sink"


def measured(cmd: list[str], env: dict[str, str], n: int) -> Run:
    """Run a command; its wall time, CPU time and peak RSS from wait4()."""
    with tempfile.TemporaryFile() as out:  # a pipe would fill up and stall a chatty tool
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        # Only the tail: this process must stay small, since a child's peak RSS counts the
        # pages it had from its parent before exec.
        out.seek(max(0, out.seek(0, os.SEEK_END) - 4000))
        output = out.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, n / seconds)


def write_list(folder: Path, n: int) -> Path:
    path = folder / f"liste-{n}.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("navn;e-post;organisasjon\n")
        for i in range(n):
            out.write(f"Person Ødegård {i};p{i}@example.org;Organisasjon {i % 97}\n")
    return path


def write_template(folder: Path) -> Path:
    root = folder / "templates" / "bench"
    root.mkdir(parents=True)
    (root / "subject.txt.j2").write_text(SUBJECT, encoding="utf-8")
    (root / "body.txt.j2").write_text(TEXT, encoding="utf-8")
    (root / "body.html.j2").write_text(HTML, encoding="utf-8")
    return root.parent


def mailer_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "mailer", *args]


MAILMERGE_TEMPLATE = """TO: {{email}}
SUBJECT: Invitasjon til NOKIOS, {{navn}}
FROM: Digdir <invitasjon@example.org>

""" + TEXT.replace("{{ name }}", "{{navn}}").replace("{{ organisasjon }}", "{{organisasjon}}")


def mailmerge() -> str:
    """mailmerge in a venv of its own under benchmarks/results/ (installed on first use)."""
    venv = HERE / "results" / "mailmerge-venv"
    exe = venv / "bin" / "mailmerge"
    if not exe.exists():
        print("installing mailmerge into benchmarks/results/mailmerge-venv ...", flush=True)
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mailmerge==2.3.0"],
                       check=True)
    return str(exe)


def mailmerge_files(folder: Path, listing: Path, port: int) -> list[str]:
    """mailmerge's template, database (comma-separated) and server config for this run."""
    template = folder / "mailmerge_template.txt"
    template.write_text(MAILMERGE_TEMPLATE, encoding="utf-8")
    database = folder / "mailmerge_database.csv"
    with listing.open(encoding="utf-8") as src, database.open("w", encoding="utf-8") as out:
        out.write("navn,email,organisasjon\n")
        next(src)
        for line in src:
            name, email, org = line.rstrip("\n").split(";")
            out.write(f'"{name}",{email},"{org}"\n')
    config = folder / "mailmerge_server.conf"
    config.write_text(f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nsecurity = Never\n"
                      f"ratelimit = 0\n", encoding="utf-8")
    return ["--no-dry-run", "--no-limit", "--output-format", "raw", "--template", str(template),
            "--database", str(database), "--config", str(config)]


def first_message_seconds(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds until mailer says it starts sending, seconds for the whole run): the plain
    output's first line comes after the check pass and the journal sync, right before the
    first message."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    at = time.perf_counter() - started
    proc.communicate()
    if not first.startswith("sending "):
        raise SystemExit(f"unexpected first line: {first!r}")
    return at, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 100k memory/validate runs")
    args = parser.parse_args()

    # mailer as installed: pip compiles a package's bytecode when it installs it; an editable
    # install does not, and where PYTHONDONTWRITEBYTECODE is set (this machine sets it) every
    # run would compile mailer's modules again (~0.15 s of each run).
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(HERE.parent / "mailer")], check=True)
    sink = smtp_sink()
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    server = subprocess.Popen([sink, "-4", *user, "-m", "1024", f"127.0.0.1:{port}", "1024"])
    time.sleep(0.3)
    work = Path(tempfile.mkdtemp(prefix="mailer-bench-"))
    try:
        templates = write_template(work)
        listing = write_list(work, args.n)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        env.update(MAILER_SMTP_HOST="127.0.0.1", MAILER_SMTP_PORT=str(port),
                   MAILER_SMTP_SECURITY="none", MAILER_SENDER="Digdir <invitasjon@example.org>",
                   MAILER_SMTP_HELO="bench.example.org", MAILER_TEMPLATES_DIR=str(templates))
        source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
        merge = mailmerge()
        merge_args = mailmerge_files(work, listing, port)
        contenders: dict[str, list[Run]] = {"floor (aiosmtplib)": [], "smtp-source": [],
                                             "mailmerge": [], "mailer send": [],
                                             "mailer send +DKIM": []}
        # DKIM signing (rsa-sha256, 2048 bits) when the queue finishes each message
        subprocess.run(mailer_cmd("dkim-key", "--selector", "bench", "--out",
                                  str(work / "bench.pem")), env=env, check=True,
                       stdout=subprocess.DEVNULL)
        signing = dict(env, MAILER_DKIM_KEY=str(work / "bench.pem"),
                       MAILER_DKIM_SELECTOR="bench")
        for round_no in range(args.rounds):
            journal = work / f"journal-{round_no}.sqlite3"
            commands = {
                "floor (aiosmtplib)": [PYTHON, str(HERE / "floor.py"), "--port", str(port),
                                       "-n", str(args.n), "-c", "4"],
                "smtp-source": [source, "-4", "-s", "4", "-m", str(args.n), "-l", "5000",
                                "-f", "invitasjon@example.org", "-t", "p@example.org",
                                f"127.0.0.1:{port}"],
                "mailmerge": [merge, *merge_args],
                "mailer send": mailer_cmd("send", str(listing), "--template", "bench",
                                          "--journal", str(journal), "--concurrency", "4",
                                          "--quiet"),
                "mailer send +DKIM": mailer_cmd("send", str(listing), "--template", "bench",
                                                "--journal", str(work / f"dkim-{round_no}.db"),
                                                "--concurrency", "4", "--quiet"),
            }
            for name, cmd in commands.items():
                contenders[name].append(measured(cmd, signing if "DKIM" in name else env,
                                                 args.n))
            mine = contenders["mailer send"][-1].rate
            print(f"round {round_no + 1}: " + ", ".join(
                f"{name.split()[0]} {runs[-1].rate:.0f}/s" for name, runs in contenders.items())
                + f"; mailer/floor {mine / contenders['floor (aiosmtplib)'][-1].rate:.2f}, "
                  f"mailer/mailmerge {mine / contenders['mailmerge'][-1].rate:.2f}", flush=True)
        print()
        print(f"{'N':>8} {'':<22} {'msg/s':>8} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
        for name, runs in contenders.items():
            print(f"{args.n:>8} {name:<22} {statistics.median(r.rate for r in runs):>8.0f} "
                  f"{statistics.median(r.seconds for r in runs):>8.2f} "
                  f"{statistics.median(r.cpu for r in runs):>8.2f} "
                  f"{max(r.rss_mb for r in runs):>12.1f}")
        mailer_runs = contenders["mailer send"]
        for name, target in (("floor (aiosmtplib)", ">= 1.2, aim 1.5"), ("smtp-source", ""),
                             ("mailmerge", ">= 4")):
            ratios = [m.rate / o.rate for m, o in zip(mailer_runs, contenders[name], strict=True)]
            print(f"mailer / {name}: {statistics.median(ratios):.2f} (median of the rounds; "
                  f"each: {', '.join(f'{r:.2f}' for r in ratios)})"
                  + (f" target {target}" if target else ""))

        ratios = [d.rate / m.rate for d, m in zip(contenders["mailer send +DKIM"], mailer_runs,
                                                  strict=True)]
        print(f"mailer +DKIM / mailer: {statistics.median(ratios):.2f} (median of the rounds; "
              f"each: {', '.join(f'{r:.2f}' for r in ratios)}) target >= 0.5")

        started = time.perf_counter()
        subprocess.run(mailer_cmd("--help"), env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"start-up (mailer --help): {time.perf_counter() - started:.3f} s (target < 0.3)")

        if not args.quick:
            big = write_list(work, 100_000)
            small = write_list(work, 1_000)
            one = write_list(work, 1)
            checks, starts = [], []
            for _ in range(max(3, args.rounds)):  # alternating: both see the same machine
                checks.append(measured(mailer_cmd("validate", str(big)), env, 100_000))
                starts.append(measured(mailer_cmd("validate", str(one)), env, 1).seconds)
            print(f"validate 100,000 rows: {statistics.median(c.seconds for c in checks):.2f} s "
                  f"(median; each: {', '.join(f'{c.seconds:.2f}' for c in checks)}) "
                  f"(target < 1), peak RSS {max(c.rss_mb for c in checks):.1f} MB; "
                  f"validate of 1 row (start-up): {statistics.median(starts):.2f} s")
            huge = write_list(work, 1_000_000)
            check = measured(mailer_cmd("validate", str(huge)), env, 1_000_000)
            print(f"validate 1,000,000 rows: {check.seconds:.2f} s, peak RSS {check.rss_mb:.1f} MB "
                  f"(target < 100)")
            huge.unlink()
            rss = {}
            for size, path in ((1_000, small), (100_000, big)):
                run = measured(mailer_cmd("send", str(path), "--template", "bench", "--journal",
                                          str(work / f"rss-{size}.sqlite3"), "--quiet"),
                               env, size)
                rss[size] = run.rss_mb
                print(f"send {size:>7,} recipients: {run.rate:.0f} msg/s, "
                      f"peak RSS {run.rss_mb:.1f} MB")
            print(f"RSS growth 1k -> 100k: {rss[100_000] - rss[1_000]:.1f} MB (target < 20, "
                  f"absolute < 60)")
            first, whole = first_message_seconds(
                mailer_cmd("send", str(big), "--template", "bench", "--journal",
                           str(work / "first.sqlite3")), env)
            print(f"100,000 guests: first message after {first:.1f} s (the check pass renders "
                  f"every message first), whole run {whole:.1f} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
