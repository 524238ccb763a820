"""MkDocs hook: the library's docstrings use Sphinx cross-reference roles (:class:`X`, :meth:`~a.b.C`),
which mkdocstrings renders as plain text; show them as the code they name (``~`` keeps the last part,
as in Sphinx)."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _name(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **_: object) -> str:
    return ROLE.sub(_name, html)
