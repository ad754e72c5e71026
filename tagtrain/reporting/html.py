"""The report page's HTML pieces: its style sheet, rounded numbers, tables, embedded
images (base64, so the page is one file), and the CSV rows the sections read."""

from __future__ import annotations

import base64
import csv
import html
import math
import sys
from pathlib import Path

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #446; overflow-wrap: anywhere; } h2 { margin-top: 1.6em; color: #335; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; max-width: 100%; }
th, td { border: 1px solid #ccd; padding: 2px 7px; text-align: right; overflow-wrap: anywhere; }
th { background: #eef; } td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; max-width: 28em; }
.columns { column-width: 20em; column-gap: 1.5em; } .columns table { break-inside: avoid; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures img { flex: 1 1 460px; min-width: 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6fa; padding: .8em; font-size: 12px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
.kpi { display: inline-block; margin: 0 1.5em .5em 0; } .kpi b { font-size: 1.5em; }
.missing { color: #a33; } .note { color: #555; font-size: 13px; }
.stale { color: #fff; background: #a33; padding: 6px 10px; font-weight: bold; }
"""


def fmt(value, digits: int = 3) -> str:
    """Numbers rounded for reading (3 decimals; large values as integers), None as a dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 0.5 * 10**-digits:  # would show as 0.000
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    return fmt(int(number) if number.is_integer() and "." not in text else number, digits)


def table(header: list[str], rows: list[list], cls: str = "", text_columns=()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)

    def cell(i, v):
        attr = ' class="text"' if i in text_columns else ""
        return f"<td{attr}>{html.escape(fmt(v))}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(data: bytes | None, alt: str) -> str:
    if data is None:
        return f'<p class="missing">({html.escape(alt)}: not available)</p>'
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def image_file(path: Path | None, alt: str) -> str:
    return image(path.read_bytes() if path is not None and path.exists() else None, alt)


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def stale_banner(why: str | None) -> str:
    """A warning over figures of an earlier checkpoint (also printed), or nothing."""
    if why is None:
        return ""
    print(f"warning: {why}", file=sys.stderr)
    return f'<p class="stale">Stale: {html.escape(why)}.</p>'


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def first_file(directory: Path, pattern: str) -> Path | None:
    found = sorted(directory.glob(pattern)) if directory.exists() else []
    return found[0] if found else None


def number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
