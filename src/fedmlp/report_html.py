"""``report.html``: report.md as one self-contained HTML page (real ``<table>`` tables, the figures
embedded), so that the results open in a browser, and on the first page of ``snakemake --report``
(workflow/report/workflow.rst includes this file), instead of as raw Markdown.

The page is a fragment-friendly HTML5 document: no ``<html>``/``<body>`` tags and its styles scoped
to ``.fedmlp-report``, so that the same file can be pasted into another page (Snakemake's report)
without restyling it. Figures become ``data:`` URIs: the file keeps working when copied or moved.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

from markdown_it import MarkdownIt

from fedmlp.atomic import write_text, written

STYLE = """
.fedmlp-report { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px; line-height: 1.45;
  color: #1d1d1f; max-width: 1400px; }
.fedmlp-report h1 { font-size: 1.7em; margin: 0.2em 0 0.4em; }
.fedmlp-report h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.fedmlp-report h3 { font-size: 1.1em; margin-top: 1.2em; }
.fedmlp-report table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 13px; }
.fedmlp-report th, .fedmlp-report td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.fedmlp-report th { background: #f2f2f2; }
.fedmlp-report tbody tr:nth-child(even) { background: #fafafa; }
.fedmlp-report td { font-variant-numeric: tabular-nums; white-space: nowrap; }
.fedmlp-report td:last-child { white-space: normal; }
.fedmlp-report img { max-width: min(100%, 1000px); height: auto; }
.fedmlp-report code { background: #f2f2f2; padding: 0 3px; }
"""

_IMG = re.compile(r'<img src="([^"]+)"')
LEAD = ("Conclusions", "Test mAP per round")  # report.md's sections the page opens with, in this order


def lead_first(markdown_text: str, titles: tuple[str, ...] = LEAD) -> str:
    """report.md with its ``## `` sections named in ``titles`` moved up, in that order, right after the
    text before the first section (the title and the run count): the page opens on the conclusions
    and the main figure, then the tables. Sections not found are skipped; nothing is dropped."""
    head, *sections = re.split(r"(?m)^(?=## )", markdown_text)
    named = {s.splitlines()[0][3:].strip(): s for s in sections}
    lead = [named[t] for t in titles if t in named]
    return head + "".join(lead) + "".join(s for s in sections if s not in lead)


def _embedded(match: re.Match[str], base: Path) -> str:
    """An image reference relative to report.md as a data: URI (left as it is when not a local file); a
    figure this command has just written is read from where its output group holds it."""
    source = html.unescape(match[1])
    path = written(base / source)
    if "://" in source or source.startswith("data:") or not path.is_file():
        return match[0]
    kind = mimetypes.guess_type(source)[0] or "application/octet-stream"
    return f'<img src="data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"'


def render(markdown_text: str, base: Path, title: str = "fedmlp results") -> str:
    """The page for ``markdown_text`` (report.md), its images read relative to ``base``."""
    body = MarkdownIt("commonmark").enable("table").render(lead_first(markdown_text))
    body = _IMG.sub(lambda m: _embedded(m, base), body)
    return (f'<!DOCTYPE html>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f'<div class="fedmlp-report">\n<style>{STYLE}</style>\n{body}</div>\n')


def write_html(markdown_text: str, base: Path, path: Path) -> None:
    """Write ``path`` from report.md's text, whose figure links are relative to ``base`` (its directory)."""
    write_text(path, render(markdown_text, base))
