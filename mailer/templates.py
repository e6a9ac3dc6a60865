"""Templates: discovery (variants by language), the sandbox, the variable check.

A template is a folder ``<templates-dir>/<NAME>/`` holding ``subject.txt.j2`` and at least
one of ``body.txt.j2``, ``body.html.j2``, ``body.mjml.j2`` or ``body.md.j2``; each may
have language variants such as ``subject.nn.txt.j2``. Templates are untrusted input: they
run in Jinja2's immutable sandbox with strict undefined variables and HTML autoescaping,
and never read a file outside the templates folder. Rendering per recipient is
``render``'s job.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from .errors import TemplateError
from .files import folders_up, inside

_VARIANT = re.compile(r"(subject|body)\.(?:([a-z]{2,3})\.)?(txt|html|md|mjml)\.j2\Z")
BODIES = {"text", "html", "markdown", "mjml"}
_BODY_FILES = "body.txt.j2, body.html.j2, body.mjml.j2 or body.md.j2"

MONTHS = {
    "nb": ["januar", "februar", "mars", "april", "mai", "juni", "juli", "august",
           "september", "oktober", "november", "desember"],
    "en": ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"],
}
MONTHS["nn"] = MONTHS["nb"]
WEEKDAYS = {
    "nb": ["mandag", "tirsdag", "onsdag", "torsdag", "fredag", "lørdag", "søndag"],
    "nn": ["måndag", "tysdag", "onsdag", "torsdag", "fredag", "laurdag", "søndag"],
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
}


def _long_date(value: Any, lang: str = "nb", weekday: bool = False) -> str:
    """``27. oktober 2022`` (nb, nn) or ``27 October 2022`` (en)."""
    lang = lang if lang in MONTHS else "nb"
    month = MONTHS[lang][value.month - 1]
    day = f"{value.day} {month} {value.year}" if lang == "en" else \
        f"{value.day}. {month} {value.year}"
    if weekday:
        day = f"{WEEKDAYS[lang][value.weekday()]} {day}"
        if lang != "en":
            day = day[0].upper() + day[1:]
    return day


def _clock(value: Any, lang: str = "nb") -> str:
    """``10.15`` (Norwegian style) or ``10:15`` (en)."""
    return f"{value.hour:02d}{':' if lang == 'en' else '.'}{value.minute:02d}"


def _is_html(name: str | None) -> bool:
    return name is not None and name.endswith((".html.j2", ".mjml.j2", ".html", ".htm"))


class ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses any file whose real path (symlinks resolved) lies
    outside the templates folder: a template, or a symlink planted in it, must never be
    able to mail out a file such as ``.env``."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), encoding="utf-8")
        self.root = root

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if not inside(filename, self.root):
            raise jinja2.TemplateNotFound(f"{template} (it lies outside the templates folder)")
        return source, filename, uptodate


def _markdown_escape(value: Any) -> Any:
    """A value put into a Markdown body: every ASCII punctuation character escaped, so a
    guest named ``[Klikk her](https://evil.example)`` stays text (Markup is trusted)."""
    if value is None or isinstance(value, Markup):
        return value
    return _MD_SPECIAL.sub(r"\\\g<0>", str(value))


_MD_SPECIAL = re.compile(r"[!-/:-@\[-`{-~]")


LARGEST_VALUE = 5_000_000  # characters (or items) one expression may make


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, and no expression that makes a value of gigabytes: ``"x" *
    2000000000`` or ``9 ** 99999999`` is a SecurityError before it allocates anything
    (Jinja's sandbox limits ``range()`` alone; a loop that never ends is stopped by the
    render's time limit)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int) \
                        and len(seq) * times > LARGEST_VALUE:
                    raise jinja2.exceptions.SecurityError(
                        f"the result would hold over {LARGEST_VALUE:,} characters")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) \
                and abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 100_000:
            raise jinja2.exceptions.SecurityError("the power is too large")
        return super().call_binop(context, operator, left, right)


def make_environment(templates_dir: Path, *, markdown: bool = False
                     ) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment used for every template of a run; ``markdown`` escapes
    every value for Markdown (for ``body.md.j2``)."""
    env = LimitedSandbox(
        loader=ConfinedLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=_is_html,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
        finalize=_markdown_escape if markdown else None,
    )
    env.filters["longdate"] = _long_date
    env.filters["clock"] = _clock
    return env


def error_location(exc: BaseException, fallback: str) -> str:
    """``file:line`` of the innermost template frame of an exception (Jinja rewrites its
    tracebacks so template frames carry the template file and line)."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = exc.filename or exc.name or fallback
        return f"{name}:{exc.lineno}"
    where = fallback
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2") or filename.endswith(".html"):
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def describe_error(exc: BaseException) -> str:
    """One line about a template error, without the path (the caller adds it)."""
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in a template (sandbox): {exc}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"template not found: {exc.name}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error: {exc.message}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8: save the file as UTF-8"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class Variant:
    """The templates that make one language's message; ``lang`` None is the fallback."""

    lang: str | None
    files: Mapping[str, str]  # part → template name relative to templates_dir


class TemplateFolder:
    """The variants of one template folder, found and compiled once."""

    def __init__(self, templates_dir: Path, name: str, *, variables: Mapping[str, str] = {},
                 default_language: str = "nb", extra: Mapping[str, Any] = {}) -> None:
        self.templates_dir = templates_dir
        self.name = name
        self.folder = templates_dir / name
        self.default_language = default_language
        parts = name.split("/")
        if not name or "\\" in name or any(not p or p.startswith(".") for p in parts):
            raise TemplateError(f"invalid template name {name!r}")
        if not self.folder.is_dir():
            available = sorted(p.name for p in templates_dir.iterdir()
                               if p.is_dir() and not p.name.startswith((".", "_"))) \
                if templates_dir.is_dir() else []
            hint = f" (available: {', '.join(available)})" if available else ""
            raise TemplateError(f"{self.folder}: no such template{hint}")
        self.env = make_environment(templates_dir)
        self.env.globals.update(variables)
        self.md_env = make_environment(templates_dir, markdown=True)
        self.md_env.globals.update(variables)
        # per-run values shared by all recipients (event, ...)
        self.extra = {"unsubscribe_url": None, **extra}
        self.variants = self._discover()
        self.globals = dict(self.env.globals)
        self.compiled: dict[str, jinja2.Template] = {}
        for variant in self.variants.values():
            for template_name in variant.files.values():
                self._template(template_name)

    # Discovery --------------------------------------------------------------------

    def _discover(self) -> dict[str | None, Variant]:
        found: dict[str | None, dict[str, str]] = {}
        for path in sorted(self.folder.iterdir()):
            match = _VARIANT.match(path.name)
            if not match:
                continue
            stem, lang, suffix = match.groups()
            part = "subject" if stem == "subject" else \
                {"txt": "text", "html": "html", "md": "markdown", "mjml": "mjml"}[suffix]
            if stem == "subject" and suffix != "txt":
                continue
            found.setdefault(lang, {})[part] = f"{self.name}/{path.name}"
        base = found.get(None, {})
        variants: dict[str | None, Variant] = {}
        for lang, files in found.items():
            merged = dict(files)
            if lang is not None:
                # Subject falls back on its own; bodies come all from one language.
                if "subject" not in merged and "subject" in base:
                    merged["subject"] = base["subject"]
                if not BODIES & files.keys():
                    merged.update({p: n for p, n in base.items() if p != "subject"})
            if "subject" not in merged:
                middle = f".{lang}" if lang else ""
                raise TemplateError(f"{self.folder}/subject{middle}.txt.j2: missing: "
                                    f"every template needs a subject")
            if not BODIES & merged.keys():
                raise TemplateError(f"{self.folder}: no body for "
                                    f"{lang or 'the default language'}: add {_BODY_FILES}")
            variants[lang] = Variant(lang, merged)
        if not variants:
            raise TemplateError(f"{self.folder}/subject.txt.j2: missing: a template needs "
                                f"subject.txt.j2 and {_BODY_FILES}")
        return variants

    def logo(self) -> Path | None:
        """``logo.png`` (or .jpg, .gif) in the template folder or the nearest folder above it
        (a sub-template uses its parent's), inside the templates folder."""
        for folder in folders_up(self.folder, self.templates_dir):
            for suffix in (".png", ".jpg", ".jpeg", ".gif"):
                path = folder / f"logo{suffix}"
                if path.is_file() and inside(path, self.templates_dir):
                    return path
        return None

    def variant_for(self, language: str | None) -> Variant | None:
        """The variant for a language, else the fallback; None when there is neither."""
        return self.variants.get(language) or self.variants.get(None)

    def _env_for(self, name: str) -> ImmutableSandboxedEnvironment:
        return self.md_env if name.endswith(".md.j2") else self.env

    def _template(self, name: str) -> jinja2.Template:
        template = self.compiled.get(name)
        if template is None:
            try:
                template = self._env_for(name).get_template(name)
            except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
                where = error_location(exc, str(self.templates_dir / name))
                if not where.startswith(str(self.templates_dir)) and not Path(where).is_absolute():
                    where = str(self.templates_dir / where)
                raise TemplateError(f"{where}: {describe_error(exc)}") from None
            self.compiled[name] = template
        return template

    # The variable check ------------------------------------------------------------

    def used_variables(self) -> dict[str, tuple[str, int]]:
        """Every variable the templates read but do not set: name → (file, line)."""
        used: dict[str, tuple[str, int]] = {}
        seen: set[str] = set()
        edges: list[tuple[str, str]] = []  # (includer, included), to name the includer
        todo = [n for v in self.variants.values() for n in v.files.values()]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                source, filename, _ = self.loader.get_source(self.env, name)
                ast = self.env.parse(source, name, filename)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(f"{exc.filename}:{exc.lineno}: "
                                    f"{describe_error(exc)}") from None
            except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
                where = self.templates_dir / name
                for parent, child in edges:
                    if child == name:
                        where = self.templates_dir / parent
                raise TemplateError(f"{where}: {describe_error(exc)}") from None
            undeclared = meta.find_undeclared_variables(ast)
            for node in ast.find_all(nodes.Name):
                if node.ctx == "load" and node.name in undeclared and node.name not in used:
                    used[node.name] = (str(filename), node.lineno)
            for included in meta.find_referenced_templates(ast):
                if included:
                    edges.append((name, included))
                    todo.append(included)
        return used

    @property
    def loader(self) -> ConfinedLoader:
        assert isinstance(self.env.loader, ConfinedLoader)
        return self.env.loader

    def subject_variables(self) -> set[str]:
        """The variables and ``recipient["column"]`` columns the subjects read: a value
        with a line break there would reach a header."""
        found: set[str] = set()
        for variant in self.variants.values():
            name = variant.files["subject"]
            source, filename, _ = self.loader.get_source(self.env, name)
            ast = self.env.parse(source, name, filename)
            found |= meta.find_undeclared_variables(ast)
            for node in ast.find_all(nodes.Getitem):
                if isinstance(node.node, nodes.Name) and node.node.name == "recipient" \
                        and isinstance(node.arg, nodes.Const):
                    found.add(str(node.arg.value))
        return found

    def missing_variables(self, headers: Iterable[str]) -> list[str]:
        """``file:line: ...`` for each variable that no column, --var or built-in provides."""
        provided = set(self.env.globals) | set(self.extra)
        provided |= {"recipient", "email", "name", "language", "lang", "content", "update",
                     "changes", "cancelled", "logo"}
        provided |= {h for h in headers if top_level(h)}
        return [f"{where}:{line}: variable '{var}' is used but no column or --var "
                f"provides it"
                for var, (where, line) in sorted(self.used_variables().items())
                if var not in provided]


def top_level(header: str) -> bool:
    """A column header usable as a plain template variable."""
    return header.isidentifier() and not keyword.iskeyword(header)
