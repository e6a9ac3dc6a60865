"""The dry-run sink: one ``.eml`` file per message and an ``index.html`` preview page.

The page works when opened straight from disk: each message's HTML and text are
embedded as JSON (escaped for a <script> element) and shown in a sandboxed iframe. It is
written as the messages come, so a long list is never held in memory.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO

from .campaign import Job
from .errors import ConfigError
from .files import private_dir, private_file

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]+")
_OURS = re.compile(r"\d{5,}-[A-Za-z0-9._@+-]+\.eml\Z")
# Messages whose HTML and text are embedded in the page; the rest are listed with their file
# (a page holding 100,000 messages would be a gigabyte and no browser would open it).
PREVIEW_LIMIT = 1000


def _script_json(value: object) -> str:
    """JSON that cannot close its <script> element nor open a comment."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


class Outbox:
    """Write messages into a folder; use as a context manager."""

    def __init__(self, folder: Path, title: str, attachments: list[str]) -> None:
        self.folder = folder
        self.title = title
        self.attachments = ", ".join(attachments)
        self.count = 0
        self._page: IO[str] | None = None
        self._tail = ""

    def __enter__(self) -> Outbox:
        try:
            private_dir(self.folder)
            for old in self.folder.glob("*.eml"):
                if _OURS.match(old.name):  # a previous dry run's, never anyone else's
                    old.unlink()
        except OSError as exc:
            raise ConfigError(f"{self.folder}: cannot use the outbox folder: "
                              f"{exc.strerror}") from None
        template = resources.files("mailer").joinpath("preview.html").read_text("utf-8")
        head, _, self._tail = template.partition("<!--ROWS-->")
        self._index_tmp = self.folder / ".index.html.tmp"
        self._page = private_file(self._index_tmp).open("w", encoding="utf-8")
        self._page.write(head.replace("__TITLE__", html.escape(self.title)))
        return self

    def write(self, job: Job) -> Path:
        assert self._page is not None
        self.count += 1
        safe = _UNSAFE_NAME.sub("_", job.email)[:80]
        path = self.folder / f"{self.count:05d}-{safe}.eml"
        with private_file(path).open("wb") as handle:
            handle.write(job.data)
        rendered = job.rendered if self.count <= PREVIEW_LIMIT else None
        to = f"{job.name} <{job.email}>" if job.name else job.email
        payload = {
            "to": to, "subject": job.subject, "file": path.name,
            "html": rendered.html if rendered else None,
            "text": rendered.text if rendered else
            f"Only the first {PREVIEW_LIMIT} messages are shown here: open {path.name}.",
        }
        esc = html.escape
        self._page.write(
            f'<tr data-i="{self.count}" id="m{self.count}" aria-selected="false">'
            f"<td>{self.count}</td><td>{esc(job.name)}<br><small>{esc(job.email)}</small></td>"
            f"<td>{esc(job.lang)}</td><td>{esc(job.subject)}</td>"
            f"<td>{esc(self.attachments)}</td></tr>\n"
            f'<script type="application/json" id="d{self.count}">{_script_json(payload)}'
            f"</script>\n")
        return path

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._page is not None
        self._page.write(self._tail)
        self._page.close()
        if kind is None:
            os.replace(self._index_tmp, self.index)
        else:
            self._index_tmp.unlink(missing_ok=True)

    @property
    def index(self) -> Path:
        return self.folder / "index.html"
