"""Rendering one recipient's message: the sandboxed templates of a ``TemplateFolder``,
Markdown, CSS inlining, and the text part derived from HTML."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cached_property, lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from .errors import ConfigError, TemplateError
from .limits import TooSlow, within
from .models import Recipient, Rendered
from .templates import TemplateFolder, describe_error, error_location, top_level

RENDER_SECONDS = 5.0  # to render one message (its templates are untrusted input)
LARGEST_PART = 5_000_000  # characters of one rendered part (a real one is some 100,000)


def _bounded(pieces: Iterator[str]) -> Iterator[str]:
    """A template's output, stopped with a SecurityError once it passes LARGEST_PART (a
    loop that writes gigabytes is refused before it has them)."""
    size = 0
    for piece in pieces:
        size += len(piece)
        if size > LARGEST_PART:
            raise jinja2.exceptions.SecurityError(
                f"the message would be over {LARGEST_PART // 1_000_000} million characters")
        yield piece
_SPACE = re.compile(r"\s+")
_URL = re.compile(r"(https?://|mailto:)[!-~]{1,900}\Z")  # printable ASCII, no spaces


class Renderer:
    """Render every part of a template folder's message for one recipient at a time."""

    def __init__(self, folder: TemplateFolder, unsubscribe_url: str | None = None) -> None:
        self.folder = folder
        # ``rsvp`` of one guest in their language (answer links: see rsvp.py), or None
        self.links: Callable[[Recipient, str], Any] | None = None
        self._unsubscribe: jinja2.Template | None = None
        if unsubscribe_url:
            try:
                self._unsubscribe = folder.env.from_string(unsubscribe_url)
            except jinja2.TemplateSyntaxError as exc:
                raise ConfigError(f"invalid setting MAILER_UNSUBSCRIBE_URL: "
                                  f"{describe_error(exc)}") from None

    @cached_property
    def _markdown(self) -> Callable[[str], str]:
        from markdown_it import MarkdownIt

        # Raw HTML in Markdown is escaped: a value from the list cannot inject markup. A
        # line break is kept (breaks): "Vennlig hilsen" stays above the signature.
        return MarkdownIt("commonmark", {"html": False, "typographer": True, "breaks": True}) \
            .enable(["table", "strikethrough"]).render

    def _call(self, name: str, ctx: dict[str, Any]) -> str:
        """Template.render() without its per-call merge of the globals (a ChainMap, slow to
        copy): the context already holds them. Errors get Jinja's traceback rewrite, so
        they point at template lines."""
        template = self.folder.compiled[name]
        env = template.environment
        try:
            # The context as Template.new_context(ctx, shared=True) makes it, without the
            # set of the template's globals it builds each time from a ChainMap (~4 us a
            # part): ``ctx`` holds the globals already, and that set only lets a macro
            # import see globals given to the importing template alone (none are).
            context = env.context_class(env, ctx, template.name, template.blocks)
            return env.concat(_bounded(template.root_render_func(context)))
        except Exception:
            env.handle_exception()

    def context(self, recipient: Recipient, lang: str) -> dict[str, Any]:
        fields = recipient.fields
        ctx: dict[str, Any] = dict(self.folder.globals)
        ctx.update((k, v) for k, v in fields.items() if top_level(k))
        ctx.update(self.folder.extra)
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

    def render(self, recipient: Recipient, extra: dict[str, Any] | None = None) -> Rendered:
        """Render every part for one recipient; TemplateError names file and list line."""
        folder = self.folder
        variant = folder.variant_for(recipient.language)
        if variant is None:
            raise TemplateError(f"{folder.folder}: no variant for language "
                                f"{recipient.language!r} and no fallback "
                                f"(recipient on line {recipient.line})")
        lang = variant.lang or folder.default_language
        ctx = self.context(recipient, lang)
        if extra:
            ctx.update(extra)
        if self.links is not None:
            ctx["rsvp"] = self.links(recipient, lang)
        url = ctx["unsubscribe_url"] = self._unsubscribe_url(ctx, recipient)
        files = variant.files
        current = files["subject"]
        try:
            with within(RENDER_SECONDS):
                subject = _SPACE.sub(" ", self._call(current, ctx)).strip()
                text = html = content = None
                layout = ctx  # what the HTML or MJML body is rendered with
                if "markdown" in files:  # the content of the layout; the text comes from it
                    current = files["markdown"]
                    source = self._call(current, ctx)  # values escaped for Markdown
                    content = Markup(self._markdown(source))  # noqa: S704 - escaped by markdown-it
                    layout = dict(ctx, content=content)
                elif "text" in files:
                    current = files["text"]
                    text = self._call(current, ctx)
                if "mjml" in files:  # MJML: rendered by Jinja, then compiled to tables
                    current = files["mjml"]
                    html = compile_mjml(self._call(current, layout))
                elif "html" in files:
                    current = files["html"]
                    html = self._call(current, layout)
                elif content is not None:
                    html = _default_layout(subject, content, lang)
                if html is not None:
                    if "mjml" not in files:  # MJML writes its styles inline already
                        html = inline_css(html)
                    if text is None:
                        text = html_to_text(html)
        except TooSlow:
            raise TemplateError(f"{folder.templates_dir / current}: rendering one message took "
                                f"over {RENDER_SECONDS:g} s (a loop that never ends?) "
                                f"(recipient on line {recipient.line})") from None
        except Exception as exc:
            where = error_location(exc, str(folder.templates_dir / current))
            raise TemplateError(f"{where}: {describe_error(exc)} "
                                f"(recipient on line {recipient.line})") from None
        if not subject:
            raise TemplateError(f"{folder.templates_dir / files['subject']}: the subject is "
                                f"empty (recipient on line {recipient.line})")
        return Rendered(subject=subject, text=text, html=html, lang=lang, unsubscribe_url=url)


class MjmlError(ValueError):
    """MRML could not compile the rendered MJML."""


def compile_mjml(source: str) -> str:
    """MJML → the table-based HTML that Outlook, Gmail and Apple Mail all render, with MRML
    (mjml-python, the Rust port: no Node). About 65 µs for a small body, per message."""
    import mjml

    try:
        # fonts={}: no web font is fetched when a message is opened (MRML links Google
        # Fonts by default: a request to a third party for every reader).
        html: str = mjml.mjml2html(source, fonts={})
    except Exception as exc:  # MRML raises its own error types with a message
        raise MjmlError(f"MJML: {exc}") from None
    return html


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
    from inscriptis.html_engine import Inscriptis  # imported when first needed: 50 ms
    from lxml.etree import ParserError
    from lxml.html import document_fromstring

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
        # a mailto: with a subject or body (an answer link) stays a link a reader can click
        target = href if "?" in href else href.removeprefix("mailto:")
        label = anchor.text_content().strip()
        if not label or label in (href, target):
            for child in list(anchor):
                anchor.remove(child)
            anchor.text = target
        elif len(anchor):
            anchor[-1].tail = f"{anchor[-1].tail or ''} ({target})"
        else:
            anchor.text = f"{anchor.text or ''} ({target})"
    for heading in tree.iter("h1", "h2"):  # headings in capitals, as plain-text mail does
        for node in heading.iter():
            node.text = node.text.upper() if node.text else node.text
            if node is not heading:
                node.tail = node.tail.upper() if node.tail else node.tail
    text: str = Inscriptis(tree, _text_config()).get_text()
    text = "\n".join(_BULLET.sub(r"\1- ", line.rstrip()) for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


_BULLET = re.compile(r"^(\s*)\* ")


@lru_cache(maxsize=1)
def _text_config() -> Any:
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return ParserConfig(css=CSS_PROFILES["strict"], display_links=False,
                        display_anchors=False)
