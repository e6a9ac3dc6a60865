"""mailer: send personalised invitations and newsletters from a spreadsheet, exactly once.

Every command of the CLI is a library call (``mailer.commands``), loaded when first used so
that ``import mailer`` stays cheap::

    import mailer
    report = mailer.validate(Path("gjester.csv"), "invitasjon")
    result = mailer.send(Path("gjester.csv"), "invitasjon")
    mailer.status("invitasjon:gjester.csv", "csv")

Settings come from ``MAILER_*`` and ``.env`` (``mailer.load_settings``), or pass
``settings=Settings(...)``. Errors are ``MailerError``s with the CLI's exit code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

__all__ = ["ListOptions", "MailerError", "SendOptions", "Settings", "dry_run", "forget",
           "load_settings", "login", "login_check", "logout", "purge", "read_inbox", "send",
           "status", "test_send", "validate"]

_WHERE = {"ListOptions": "commands", "dry_run": "commands", "forget": "commands",
          "read_inbox": "commands", "purge": "commands", "send": "commands", "status": "commands",
          "test_send": "commands", "validate": "commands", "login": "commands",
          "login_check": "commands", "logout": "commands", "MailerError": "errors",
          "SendOptions": "run", "Settings": "settings", "load_settings": "settings"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'mailer' has no attribute {name!r}")
