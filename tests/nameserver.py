"""A local authoritative nameserver for tests (dnslib's server, UDP and TCP on 127.0.0.1)
serving one zone given as zone-file text; mailer asks it through MAILER_DNS_NAMESERVER."""

from __future__ import annotations

import textwrap

from dnslib.server import DNSLogger, DNSServer
from dnslib.zoneresolver import ZoneResolver

from tests.smtpserver import free_port


class Nameserver:
    """``with Nameserver(zone) as ns:`` answers on ``ns.address`` (``127.0.0.1:port``)."""

    def __init__(self, zone: str) -> None:
        self.zone = textwrap.dedent(zone)
        self.port = free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Nameserver:
        resolver = ZoneResolver(self.zone)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data",
                          prefix=False)
        self.servers = [DNSServer(resolver, address="127.0.0.1", port=self.port, tcp=tcp,
                                  logger=quiet) for tcp in (False, True)]
        for server in self.servers:
            server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()
