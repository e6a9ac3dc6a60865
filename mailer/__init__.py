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

_COMMANDS = ("ListOptions", "dkim_key", "doctor", "dry_run", "forget", "login", "login_check",
             "logout", "purge", "read_inbox", "send", "status", "test_send", "validate")
_WHERE = {**dict.fromkeys(_COMMANDS, "commands"), "MailerError": "errors",
          "SendOptions": "run", "Settings": "settings", "load_settings": "settings"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'mailer' has no attribute {name!r}")
