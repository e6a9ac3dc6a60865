"""The raw SMTP floor: a bare aiosmtplib loop sending one prebuilt ~5 KB message to N
recipients over C persistent connections. What `mailer send` is compared against."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiosmtplib


def prebuilt(size: int = 5000) -> bytes:
    head = ("From: Digdir <invitasjon@example.org>\r\nTo: p@example.org\r\n"
            "Subject: floor\r\nMessage-ID: <floor@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * (size // len(line))
    return (head + body).encode()


async def main(host: str, port: int, n: int, connections: int) -> None:
    data = prebuilt()
    counter = iter(range(n))

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
        await smtp.connect()
        for i in counter:
            await smtp.sendmail("invitasjon@example.org", [f"p{i}@example.org"], data)
        await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(connections)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("-c", "--connections", type=int, default=4)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.host, args.port, args.n, args.connections))
    else:
        asyncio.run(main(args.host, args.port, args.n, args.connections))
    print(f"{args.n / (time.perf_counter() - started):.0f} msg/s")
