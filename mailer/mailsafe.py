"""Is the HTML of a message safe for mail clients? Warnings for what Outlook for Windows
(Word's renderer), Gmail and Apple Mail drop, clip or show wrongly; ``validate --template``
prints them for the first message of each language."""

from __future__ import annotations

import re

GMAIL_CLIPS = 102 * 1024  # Gmail clips a message whose HTML is larger
_LAYOUT = re.compile(r"(?:^|;|\s)(position\s*:\s*(?:absolute|fixed|relative)|float\s*:\s*(?:left|"
                     r"right)|display\s*:\s*(?:inline-)?(?:flex|grid))", re.I)


def check_html(html: str) -> list[str]:
    """One line per problem, in the order a reader of the message would meet them."""
    from lxml.etree import ParserError
    from lxml.html import document_fromstring

    found: list[str] = []
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIPS:
        found.append(f"the HTML is {size / 1024:.0f} KB: Gmail clips a message over 102 KB "
                     f"(and hides the rest, the unsubscribe link with it)")
    try:
        tree = document_fromstring(html)
    except ParserError:
        return [*found, "the HTML cannot be parsed"]
    if not tree.get("lang"):
        found.append("<html> has no lang attribute: screen readers must guess the language")
    if tree.find(".//script") is not None:
        found.append("it holds a <script>: mail clients remove it, and spam filters notice")
    for link in tree.iter("link"):
        if "stylesheet" in (link.get("rel") or "").lower():
            found.append(f"an external stylesheet ({link.get('href')}): mail clients do not "
                         f"load it; put the CSS in <style> (it is inlined)")
    styles = [element.get("style") or "" for element in tree.iter()
              if isinstance(element.tag, str)]
    styles += [style.text or "" for style in tree.iter("style")]
    layouts = sorted({re.sub(r"\s+", "", m.group(1)).lower()
                      for text in styles for m in _LAYOUT.finditer(text)})
    if layouts:
        found.append(f"layout with {', '.join(layouts)}: Outlook for Windows ignores it; lay "
                     f"out with tables (or write the template in MJML)")
    for image in tree.iter("img"):
        missing = [a for a in ("alt", "width") if image.get(a) is None]
        if missing:
            found.append(f"an image without {' and '.join(missing)} ({image.get('src', '')[:60]}):"
                         f" blocked images show nothing, or at the wrong size")
    return found
