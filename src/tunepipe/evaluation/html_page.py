"""The shell of tunepipe's self-contained HTML pages (the evaluate report, ``pipeline compare --html``):
the Content-Security-Policy that forbids loading anything, the shared CSS, the page around a body,
and the text helpers every page uses (escaping, number formatting). Kept apart so the pages share
one look without importing one another.
"""

from __future__ import annotations

import html
import math
from typing import Any

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")

CSS = """
:root { color-scheme: light; --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #ffffff; --soft: #f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 4px; }
table { border-collapse: collapse; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 12px; }
.better { color: #15803d; font-weight: 600; }
.worse { color: #b91c1c; font-weight: 600; }
.flat { color: var(--muted); }
.gates { list-style: none; padding: 0; margin: 0; }
.gates li { margin: 4px 0; }
.badge { display: inline-block; min-width: 44px; text-align: center; border-radius: 4px; padding: 1px 6px;
         font-size: 12px; font-weight: 700; color: #fff; margin-right: 8px; }
.pass { background: #15803d; } .fail { background: #b91c1c; }
code { background: var(--soft); border: 1px solid var(--line); border-radius: 3px; padding: 0 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; }
figure { margin: 0; } figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; max-width: 560px; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #374151; }
.toolbar { display: flex; gap: 12px; align-items: center; margin: 8px 0; }
#search { width: 360px; max-width: 100%; padding: 6px 9px; border: 1px solid #cbd5e1; border-radius: 5px; font: inherit; }
#count { color: var(--muted); }
#examples { width: 100%; font-size: 13px; }
#examples thead th { position: sticky; top: 0; cursor: pointer; user-select: none; z-index: 1; }
#examples thead th[aria-sort="ascending"]::after { content: " ▲"; font-size: 10px; }
#examples thead th[aria-sort="descending"]::after { content: " ▼"; font-size: 10px; }
.scroll { overflow: auto; max-height: 85vh; border: 1px solid var(--line); }
#examples td.text { white-space: pre-wrap; word-break: break-word; min-width: 12em; max-width: 24em; }
#examples .clip { max-height: 13em; overflow-y: auto; }
#examples tr:hover td { background: #f1f5f9; }
details summary { cursor: pointer; color: var(--muted); font-size: 12px; }
.reasons { font-size: 12px; color: #374151; margin: 4px 0 0; padding-left: 16px; }
.small { font-size: 12px; color: var(--muted); }
.defs dt { font-weight: 600; } .defs dd { margin: 0 0 6px 16px; color: #374151; }
"""


def page(title: str, body: str, script: str, css: str = CSS) -> str:
    """A whole HTML page in one file: nothing outside it loads (``CSP``), so it opens offline."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fnum(x: float | None, signed: bool = False, digits: int = 3) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
