"""Templates: discovery (variants by language), the sandbox, the variable check, rendering.

A template is a folder ``<templates-dir>/<NAME>/`` holding ``subject.txt.j2`` and at least
one of ``body.txt.j2``, ``body.html.j2`` or ``body.md.j2``; each may have language variants
such as ``subject.nn.txt.j2``. Templates are untrusted input: they run in Jinja2's
immutable sandbox with strict undefined variables and HTML autoescaping.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_engine import Inscriptis
from inscriptis.model.config import ParserConfig
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from lxml.etree import ParserError
from lxml.html import document_fromstring
from markupsafe import Markup

from .errors import ConfigError, TemplateError
from .recipients import Recipient

_VARIANT = re.compile(r"(subject|body)\.(?:([a-z]{2,3})\.)?(txt|html|md)\.j2\Z")
_SPACE = re.compile(r"\s+")
_URL = re.compile(r"(https?://|mailto:)[!-~]{1,900}\Z")  # printable ASCII, no spaces

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
    return name is not None and name.endswith((".html.j2", ".html", ".htm"))


class ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses any file whose real path (symlinks resolved) lies
    outside the templates folder: a template, or a symlink planted in it, must never be
    able to mail out a file such as ``.env``."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), encoding="utf-8")
        self.root = os.path.realpath(root)

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        real = os.path.realpath(filename)
        if os.path.commonpath([real, self.root]) != self.root:
            raise jinja2.TemplateNotFound(f"{template} (it lies outside the templates folder)")
        return source, filename, uptodate


def _markdown_escape(value: Any) -> Any:
    """A value put into a Markdown body: every ASCII punctuation character escaped, so a
    guest named ``[Klikk her](https://evil.example)`` stays text (Markup is trusted)."""
    if value is None or isinstance(value, Markup):
        return value
    return _MD_SPECIAL.sub(r"\\\g<0>", str(value))


_MD_SPECIAL = re.compile(r"[!-/:-@\[-`{-~]")


def make_environment(templates_dir: Path, *, markdown: bool = False
                     ) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment used for every template of a run; ``markdown`` escapes
    every value for Markdown (for ``body.md.j2``)."""
    env = ImmutableSandboxedEnvironment(
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


def _error_location(exc: BaseException, fallback: str) -> str:
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


@dataclass(slots=True)
class Rendered:
    """What the templates made for one recipient."""

    subject: str
    text: str | None
    html: str | None
    lang: str
    unsubscribe_url: str | None = None


class TemplateSet:
    """The variants of one template folder, compiled once, rendered per recipient."""

    def __init__(self, templates_dir: Path, name: str, *, variables: Mapping[str, str] = {},
                 default_language: str = "nb", extra: Mapping[str, Any] = {},
                 unsubscribe_url: str | None = None) -> None:
        self.templates_dir = templates_dir
        self.name = name
        self.folder = templates_dir / name
        self.default_language = default_language
        if not name or "/" in name or "\\" in name or name.startswith("."):
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
        self._unsubscribe: jinja2.Template | None = None
        if unsubscribe_url:
            try:
                self._unsubscribe = self.env.from_string(unsubscribe_url)
            except jinja2.TemplateSyntaxError as exc:
                raise ConfigError(f"invalid setting MAILER_UNSUBSCRIBE_URL: "
                                  f"{describe_error(exc)}") from None
        self.variants = self._discover()
        self._globals = dict(self.env.globals)
        self._compiled: dict[str, jinja2.Template] = {}
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
                {"txt": "text", "html": "html", "md": "markdown"}[suffix]
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
                if not {"text", "html", "markdown"} & files.keys():
                    merged.update({p: n for p, n in base.items() if p != "subject"})
            if "subject" not in merged:
                middle = f".{lang}" if lang else ""
                raise TemplateError(f"{self.folder}/subject{middle}.txt.j2: missing: "
                                    f"every template needs a subject")
            if not {"text", "html", "markdown"} & merged.keys():
                raise TemplateError(f"{self.folder}: no body for "
                                    f"{lang or 'the default language'}: add body.txt.j2, "
                                    f"body.html.j2 or body.md.j2")
            variants[lang] = Variant(lang, merged)
        if not variants:
            raise TemplateError(f"{self.folder}/subject.txt.j2: missing: a template needs "
                                f"subject.txt.j2 and body.txt.j2, body.html.j2 or body.md.j2")
        return variants

    def variant_for(self, language: str | None) -> Variant | None:
        """The variant for a language, else the fallback; None when there is neither."""
        return self.variants.get(language) or self.variants.get(None)

    def _env_for(self, name: str) -> ImmutableSandboxedEnvironment:
        return self.md_env if name.endswith(".md.j2") else self.env

    def _template(self, name: str) -> jinja2.Template:
        template = self._compiled.get(name)
        if template is None:
            try:
                template = self._env_for(name).get_template(name)
            except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
                where = _error_location(exc, str(self.templates_dir / name))
                if not where.startswith(str(self.templates_dir)) and not Path(where).is_absolute():
                    where = str(self.templates_dir / where)
                raise TemplateError(f"{where}: {describe_error(exc)}") from None
            self._compiled[name] = template
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
        provided |= {"recipient", "email", "name", "language", "lang", "content"}
        provided |= {h for h in headers if _top_level(h)}
        return [f"{where}:{line}: variable '{var}' is used but no column or --var "
                f"provides it"
                for var, (where, line) in sorted(self.used_variables().items())
                if var not in provided]

    # Rendering ---------------------------------------------------------------------

    @cached_property
    def _markdown(self) -> Callable[[str], str]:
        from markdown_it import MarkdownIt

        # Raw HTML in Markdown is escaped: a value from the list cannot inject markup.
        return MarkdownIt("commonmark", {"html": False, "typographer": True}) \
            .enable(["table", "strikethrough"]).render

    def _call(self, name: str, ctx: dict[str, Any]) -> str:
        """Template.render() without its per-call merge of the globals (a ChainMap, slow to
        copy): the context already holds them. Errors get Jinja's traceback rewrite, so
        they point at template lines."""
        template = self._compiled[name]
        env = template.environment
        try:
            return env.concat(
                template.root_render_func(template.new_context(ctx, shared=True)))
        except Exception:
            env.handle_exception()

    def context(self, recipient: Recipient, lang: str) -> dict[str, Any]:
        fields = recipient.fields
        ctx: dict[str, Any] = dict(self._globals)
        ctx.update((k, v) for k, v in fields.items() if _top_level(k))
        ctx.update(self.extra)
        ctx.update(recipient=fields, email=recipient.email, name=recipient.name,
                   language=recipient.language, lang=lang)
        return ctx

    def _unsubscribe_url(self, ctx: dict[str, Any], recipient: Recipient) -> str | None:
        """MAILER_UNSUBSCRIBE_URL rendered in the recipient's context; ConfigError (a bad
        setting, 78) when it fails or does not make an http(s)/mailto URL fit for a header."""
        if self._unsubscribe is None:
            return None
        where = f"(recipient on line {recipient.line})"
        try:
            url = self._unsubscribe.render(ctx).strip()
        except Exception as exc:
            raise ConfigError(f"invalid setting MAILER_UNSUBSCRIBE_URL: "
                              f"{describe_error(exc)} {where}") from None
        if not _URL.match(url) or any(c in url for c in '<>"'):
            raise ConfigError(f"invalid setting MAILER_UNSUBSCRIBE_URL: it made {url!r} "
                              f"{where}, not an https://, http:// or mailto: URL")
        return url

    def render(self, recipient: Recipient) -> Rendered:
        """Render every part for one recipient; TemplateError names file and list line."""
        variant = self.variant_for(recipient.language)
        if variant is None:
            raise TemplateError(f"{self.folder}: no variant for language "
                                f"{recipient.language!r} and no fallback "
                                f"(recipient on line {recipient.line})")
        lang = variant.lang or self.default_language
        ctx = self.context(recipient, lang)
        url = ctx["unsubscribe_url"] = self._unsubscribe_url(ctx, recipient)
        files = variant.files
        current = files["subject"]
        try:
            subject = _SPACE.sub(" ", self._call(current, ctx)).strip()
            text = html = None
            if "markdown" in files:
                current = files["markdown"]
                source = self._call(current, ctx)  # values escaped for Markdown
                content = Markup(self._markdown(source))  # noqa: S704 - escaped by markdown-it
                if "html" in files:
                    current = files["html"]
                    html = self._call(current, dict(ctx, content=content))
                else:
                    html = _default_layout(subject, content, lang)
            else:
                if "text" in files:
                    current = files["text"]
                    text = self._call(current, ctx)
                if "html" in files:
                    current = files["html"]
                    html = self._call(current, ctx)
            if html is not None:
                html = inline_css(html)
                if text is None:
                    text = html_to_text(html)
        except Exception as exc:
            where = _error_location(exc, str(self.templates_dir / current))
            raise TemplateError(f"{where}: {describe_error(exc)} "
                                f"(recipient on line {recipient.line})") from None
        if not subject:
            raise TemplateError(f"{self.templates_dir / files['subject']}: the subject is "
                                f"empty (recipient on line {recipient.line})")
        return Rendered(subject=subject, text=text, html=html, lang=lang, unsubscribe_url=url)


def _top_level(header: str) -> bool:
    return header.isidentifier() and not keyword.iskeyword(header)


def _default_layout(subject: str, content: Markup, lang: str) -> str:
    title = Markup.escape(subject)
    return (f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n</head>\n<body>\n{content}\n</body>\n</html>\n")


@lru_cache(maxsize=1)
def _inliner() -> Any:
    import css_inline

    # Never fetch a stylesheet from the network; keep @media rules in a <style> block.
    return css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def inline_css(html: str) -> str:
    """Move CSS from <style> into style attributes, for clients that drop <style>."""
    if "<style" not in html:
        return html
    result: str = _inliner().inline(html)
    return result


def html_to_text(html: str) -> str:
    """Readable plain text from HTML: paragraphs and lists kept, links as ``text (url)``.

    inscriptis (Apache-2.0) lays out the text as a browser would (blocks, lists, tables);
    links are marked in the tree first, so text that only looks like a link stays text."""
    if not html.strip():
        return "\n"
    try:
        tree = document_fromstring(html)
    except ParserError:
        return "\n"
    for anchor in tree.iter("a"):
        href = (anchor.get("href") or "").strip()
        if not href or href.startswith("#"):
            continue
        target = href.removeprefix("mailto:")
        label = anchor.text_content().strip()
        if not label or label in (href, target):
            for child in list(anchor):
                anchor.remove(child)
            anchor.text = target
        elif len(anchor):
            anchor[-1].tail = f"{anchor[-1].tail or ''} ({target})"
        else:
            anchor.text = f"{anchor.text or ''} ({target})"
    text: str = Inscriptis(tree, _TEXT_CONFIG).get_text()
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=False,
                            display_anchors=False)
