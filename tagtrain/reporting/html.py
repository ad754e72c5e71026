"""The report page's HTML pieces: its style sheet, rounded numbers, tables, embedded
images (base64, so the page is one file), and the CSV rows the sections read.

Every value that comes from a card, a run, metrics or a manifest reaches the page through
`esc` (a dataset card is as untrusted as any other input: a tag or a count may hold
markup); the sections build HTML only from `esc`'d text and their own constants."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sys
from pathlib import Path

from pipelines.core.errors import UserError
from tagtrain.loader.openers import OpenerError, open_regular_file

MAX_JSON_BYTES = 64 << 20  # a run's metrics or summary: far below this

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #446; overflow-wrap: anywhere; } h2 { margin-top: 1.6em; color: #335; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; max-width: 100%; }
th, td { border: 1px solid #ccd; padding: 2px 7px; text-align: right; }
th { background: #eef; overflow-wrap: normal; word-break: normal; }
td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; max-width: 28em; overflow-wrap: anywhere; }
td.words { text-align: left; }
.wide { overflow-x: auto; max-width: 100%; }
.columns { column-width: 20em; column-gap: 1.5em; } .columns .wide { break-inside: avoid; }
.kpi .ci { color: #555; font-size: 13px; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figures img { flex: 1 1 460px; min-width: 0; }
.heat { display: flex; gap: 1em; align-items: flex-start; margin-top: 1em; }
.heat img { flex: 1 1 0; min-width: 0; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6fa; padding: .8em; font-size: 12px; white-space: pre-wrap;
      overflow-wrap: anywhere; }
.kpi { display: inline-block; margin: 0 1.5em .5em 0; } .kpi b { font-size: 1.5em; }
.missing { color: #a33; } .note { color: #555; font-size: 13px; }
.stale { color: #fff; background: #a33; padding: 6px 10px; font-weight: bold; }
"""


def esc(value) -> str:
    """`value` as HTML text, quotes included, so it is inert in an element or attribute."""
    return html.escape(str(value), quote=True)


def header_text(value) -> str:
    """A column title that wraps only between words or after an underscore: a browser
    would otherwise break `short_chunk_cnn` or `noise_0.1` anywhere (or `ROC-AUC` at its
    hyphen)."""
    return esc(value).replace("_", "_<wbr>").replace("-", "\u2011")  # a non-breaking hyphen


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


def table(
    header: list[str], rows: list[list], cls: str = "", text_columns=(), word_columns=()
) -> str:
    """A table in its own scrolling box: one wider than the page scrolls sideways there
    instead of pushing the page wider (or being cut off in a screenshot). Cells wrap
    between words; `text_columns` (paths, messages) anywhere, `word_columns` are left-
    aligned text that wraps between words only."""
    head = "".join(f"<th>{header_text(h)}</th>" for h in header)

    def cell(i, v):
        attr = (
            ' class="text"' if i in text_columns else ' class="words"' if i in word_columns else ""
        )
        return f"<td{attr}>{esc(fmt(v))}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return (f'<div class="wide"><table class="{esc(cls)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")  # fmt: skip


def image(data: bytes | None, alt: str) -> str:
    if data is None:
        return f'<p class="missing">({esc(alt)}: not available)</p>'
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def image_file(path: Path | None, alt: str) -> str:
    return image(path.read_bytes() if path is not None and path.is_file() else None, alt)


def note(text: str) -> str:
    """A note of the page's own words: values in `text` must already be `esc`'d."""
    return f'<p class="note">{text}</p>'


def stale_banner(why: str | None) -> str:
    """A warning over figures of an earlier checkpoint (also printed), or nothing."""
    if why is None:
        return ""
    print(f"warning: {why}", file=sys.stderr)
    return f'<p class="stale">Stale: {esc(why)}.</p>'


def read_json(path: Path) -> dict:
    """A run's JSON file (metrics.json, summary.json), {} when absent; one line (a
    UserError) when it is not a regular file, too large, or not a JSON object: a run
    directory is input like any other (a link to /dev/zero would never end)."""
    if not path.exists():
        return {}
    try:
        with open_regular_file(str(path)) as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except (OSError, OpenerError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if len(data) > MAX_JSON_BYTES:
        raise UserError(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object")
    return value


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():  # absent, or a device/FIFO that would never end
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
