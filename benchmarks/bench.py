"""Benchmark `mailer send` against the raw SMTP floor on Postfix's smtp-sink.

Starts smtp-sink on a free loopback port (installing Debian's postfix package when it is
missing), generates N personalised recipients and a ~5 KB text+HTML template, then runs,
alternating, the bare aiosmtplib floor (benchmarks/floor.py) and the real `mailer send`
(validate + render + journal + SMTP, concurrency 4, no rate limit), each as its own process,
and prints messages/s, the ratio, CPU time and peak RSS. Also: `mailer validate` of 100,000
rows, start-up time, and peak RSS at 1,000 vs 100,000 recipients.

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
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    output = proc.stdout.read().decode() if proc.stdout else ""
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the 100k memory/validate runs")
    args = parser.parse_args()

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
        floors: list[Run] = []
        mailers: list[Run] = []
        for round_no in range(args.rounds):
            floors.append(measured([PYTHON, str(HERE / "floor.py"), "--port", str(port),
                                    "-n", str(args.n), "-c", "4"], env, args.n))
            journal = work / f"journal-{round_no}.sqlite3"
            mailers.append(measured(mailer_cmd("send", str(listing), "--template", "bench",
                                               "--journal", str(journal), "--concurrency", "4",
                                               "--quiet"), env, args.n))
            print(f"round {round_no + 1}: floor {floors[-1].rate:.0f}/s, "
                  f"mailer {mailers[-1].rate:.0f}/s, "
                  f"ratio {mailers[-1].rate / floors[-1].rate:.2f}", flush=True)
        floor_rate = statistics.median(r.rate for r in floors)
        mailer_rate = statistics.median(r.rate for r in mailers)
        print()
        print(f"{'N':>8} {'':<22} {'msg/s':>8} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
        for name, runs in (("floor (aiosmtplib)", floors), ("mailer send", mailers)):
            print(f"{args.n:>8} {name:<22} {statistics.median(r.rate for r in runs):>8.0f} "
                  f"{statistics.median(r.seconds for r in runs):>8.2f} "
                  f"{statistics.median(r.cpu for r in runs):>8.2f} "
                  f"{max(r.rss_mb for r in runs):>12.1f}")
        ratios = [m.rate / f.rate for m, f in zip(mailers, floors, strict=True)]
        print(f"ratio mailer/floor: {mailer_rate / floor_rate:.2f} of the medians, "
              f"{statistics.median(ratios):.2f} the median of the rounds "
              f"(target >= 0.6, aim >= 1.0)")
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            fast = measured([PYTHON, str(HERE / "floor.py"), "--port", str(port), "-n",
                             str(args.n), "-c", "4", "--uvloop"], env, args.n)
            print(f"for reference, the floor on uvloop: {fast.rate:.0f}/s")

        started = time.perf_counter()
        subprocess.run(mailer_cmd("--help"), env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"start-up (mailer --help): {time.perf_counter() - started:.3f} s (target < 0.3)")

        if not args.quick:
            big = write_list(work, 100_000)
            small = write_list(work, 1_000)
            check = measured(mailer_cmd("validate", str(big)), env, 100_000)
            print(f"validate 100,000 rows: {check.seconds:.2f} s (target < 2), "
                  f"peak RSS {check.rss_mb:.1f} MB")
            rss = {}
            for size, path in ((1_000, small), (100_000, big)):
                run = measured(mailer_cmd("send", str(path), "--template", "bench", "--journal",
                                          str(work / f"rss-{size}.sqlite3"), "--quiet"),
                               env, size)
                rss[size] = run.rss_mb
                print(f"send {size:>7,} recipients: {run.rate:.0f} msg/s, "
                      f"peak RSS {run.rss_mb:.1f} MB")
            print(f"RSS growth 1k -> 100k: {rss[100_000] - rss[1_000]:.1f} MB (target < 25, "
                  f"absolute < 80)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
