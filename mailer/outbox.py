"""The dry-run sink: one ``.eml`` file per message and an ``index.html`` preview page.

The page works when opened straight from disk: each message's HTML and text are
embedded as JSON (escaped for a <script> element) and shown in a sandboxed iframe. It is
written as the messages come, so a long list is never held in memory.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO

from .errors import ConfigError, TemporaryError
from .files import new_private_file, open_private, private_dir
from .models import Outgoing

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]+")
_OURS = re.compile(r"\d{5,}-[A-Za-z0-9._@+-]+\.eml\Z")
# Messages whose HTML and text are embedded in the page; the rest are listed with their file
# (a page holding 100,000 messages would be a gigabyte and no browser would open it).
PREVIEW_LIMIT = 1000


def _script_json(value: object) -> str:
    """JSON that cannot close its <script> element nor open a comment."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


MANIFEST = ".mailer-outbox"


def _kind(kind: str) -> str:
    return "" if kind == "message" else f" ({kind})"


class Outbox:
    """Write messages into a folder; use as a context manager.

    A manifest (``.mailer-outbox``) lists every file a dry run writes there, as it writes
    it. The next dry run deletes exactly those and nothing else; a folder that holds
    anything and has no manifest is not an outbox and is refused."""

    def __init__(self, folder: Path, title: str, attachments: list[str], *,
                 sender: str = "", reply_to: str = "", event: dict[str, str] | None = None,
                 images: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.title = title
        self.attachment_names = list(attachments)  # on every message (invitasjon.ics)
        self.attachments = ", ".join(attachments)
        self.sender, self.reply_to, self.event = sender, reply_to, event
        self.images = images or {}  # cid:… → data: URI, so the page shows inline images
        self.count = 0
        self.kinds: dict[str, int] = {}  # invitation, update, cancellation, ... → messages
        self._page: IO[str] | None = None
        self._tail = ""

    def __enter__(self) -> Outbox:
        try:
            self._clear()
            manifest = open_private(self.folder / MANIFEST, os.O_WRONLY | os.O_TRUNC)
            self._manifest = os.fdopen(manifest, "w", encoding="utf-8")
            self._manifest.write("index.html\n")
            fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=self.folder)
            self._index_tmp = Path(tmp)
            self._page = os.fdopen(fd, "w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self.folder}: cannot use the outbox folder: "
                              f"{exc.strerror}") from None
        template = resources.files("mailer").joinpath("preview.html").read_text("utf-8")
        head, _, self._tail = template.partition("<!--ROWS-->")
        self._write(head.replace("__TITLE__", html.escape(self.title)))
        return self

    def _clear(self) -> None:
        """Delete what the previous dry run wrote here (by its manifest), or refuse a
        folder that holds files mailer did not write."""
        if not self.folder.exists():
            private_dir(self.folder)
            return
        manifest = self.folder / MANIFEST
        if manifest.is_symlink():
            raise ConfigError(f"{self.folder}: {MANIFEST} is a symbolic link: refusing it")
        if manifest.exists():
            names = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
        elif not any(self.folder.iterdir()):
            return
        else:
            names = self._earlier_outbox()
        for name in names:
            if name == "index.html" or _OURS.match(name):  # never a path, never '..'
                (self.folder / name).unlink(missing_ok=True)

    def _earlier_outbox(self) -> list[str]:
        """The files of an outbox written before manifests were kept: nothing but
        ``NNNNN-address.eml`` files and mailer's own preview page. Anything else is refused."""
        names = [p.name for p in self.folder.iterdir()]
        index = self.folder / "index.html"
        ours = index.is_file() and not index.is_symlink() \
            and index.read_bytes()[:1024].find(b"<title>mailer preview: ") >= 0 \
            and all(n == "index.html" or (_OURS.match(n) and not (self.folder / n).is_symlink())
                    for n in names)
        if not ours:
            raise ConfigError(f"{self.folder}: the folder holds files that mailer did not "
                              f"write: give --outbox an empty or new folder")
        return names

    def _write(self, text: str) -> None:
        assert self._page is not None
        try:
            self._page.write(text)
        except OSError as exc:
            raise TemporaryError(f"{self._index_tmp}: cannot write: {exc.strerror}") from None

    def _with_images(self, html_text: str) -> str:
        for cid, uri in self.images.items():
            html_text = html_text.replace(cid, uri)
        return html_text

    def write(self, job: Outgoing, search: str = "") -> Path:
        """Write one message; ``search`` is what the page's search box finds it by (every
        field of the guest's row)."""
        assert self._page is not None
        self.count += 1
        safe = _UNSAFE_NAME.sub("_", job.email)[:80]
        path = self.folder / f"{self.count:05d}-{safe}.eml"
        try:
            self._manifest.write(f"{path.name}\n")
            self._manifest.flush()
            with os.fdopen(new_private_file(path), "wb") as handle:
                handle.write(job.data)
        except FileExistsError:
            raise ConfigError(f"{path}: a file that mailer did not write is in the way "
                              f"(nothing was overwritten)") from None
        except OSError as exc:
            raise TemporaryError(f"{path}: cannot write: {exc.strerror}") from None
        rendered = job.rendered if self.count <= PREVIEW_LIMIT else None
        to = f"{job.name} <{job.email}>" if job.name else job.email
        event = None if self.event is None else dict(
            self.event, method={"cancellation": "cancellation", "update": "update"}.get(
                job.kind, "invitation"))
        payload = {
            "from": self.sender, "reply_to": self.reply_to, "event": event,
            "to": to, "subject": job.subject, "file": path.name,
            # the calendar file too, as the list shows it (it has no file of its own)
            "attachments": [*({"name": n, "href": ""} for n in self.attachment_names),
                            *({"name": n, "href": href} for n, href in job.files)],
            "html": self._with_images(rendered.html) if rendered and rendered.html else None,
            "text": rendered.text if rendered else
            f"Only the first {PREVIEW_LIMIT} messages are shown here: open {path.name}.",
        }
        esc = html.escape
        words = " ".join([job.name, job.email, job.subject, search]).casefold()
        files = ", ".join(filter(None, [self.attachments, *(name for name, _ in job.files)]))
        self._write(
            f'<tr data-i="{self.count}" id="m{self.count}" aria-selected="false" '
            f'data-lang="{esc(job.lang)}" data-q="{esc(words)}">'
            f"<td>{self.count}</td><td>{esc(job.name)}<br><small>{esc(job.email)}</small></td>"
            f'<td>{esc(job.lang)}</td><td class="subject" title="{esc(job.subject)}">'
            f"{esc(job.subject)}</td>"
            f"<td>{esc(files)}"
            f"{esc(_kind(job.kind))}</td></tr>\n"
            f'<script type="application/json" id="d{self.count}">{_script_json(payload)}'
            f"</script>\n")
        return path

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._page is not None
        try:
            if kind is None:
                self._write(self._tail)
                self._page.close()
                os.replace(self._index_tmp, self.index)  # replaces a link, never its target
        except OSError as error:
            raise TemporaryError(f"{self.index}: cannot write: {error.strerror}") from None
        finally:
            for handle in (self._page, self._manifest):
                with contextlib.suppress(OSError):
                    handle.close()
            self._index_tmp.unlink(missing_ok=True)

    @property
    def index(self) -> Path:
        return self.folder / "index.html"
