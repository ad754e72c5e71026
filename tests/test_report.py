"""report.html from small fake run directories (no training): untrusted values stay text,
the card is read with the loader's checks, the headline and the robustness table carry the
intervals and significance marks, one sign convention, comparable heat maps, and the page
renders in a real browser at 1400 px."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.features import FeatureConfig
from tagtrain.__main__ import main
from tagtrain.inference.robustness_report import row_fields
from tagtrain.reporting import figures, robustness_section
from tagtrain.reporting.html import table
from tagtrain.reporting.page import build_report
from tagtrain.reporting.run_sections import dataset_section

# Breaks out of an attribute and opens an element with a handler: live if unescaped. No
# "/" (it is also a file name) and no "_" (headers break at underscores with <wbr>).
MARK = "\"'><xss-probe onmouseover=alert(1)>&amp;"
PUBLISHED = "musicnn-mtt"


def names(mark: str) -> tuple[list[str], list[str], str]:
    """(tags, test sets, the trained run's label), `mark` in some of each."""
    tags = [f"rock{mark}", "jazz", "pop", "calm", "$\\undefinedcommand$"]
    return tags, ["clean", f"noise_0.1{mark}", "pitch_shift_1"], f"short_chunk_cnn{mark}"


TAGS, SETS, TRAINED = names(MARK)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def card(mark: str = MARK, **changes) -> dict:
    features = {**dataclasses.asdict(FeatureConfig()), "stored": ["mel"]}
    split = {"samples": 40, "seconds": 1200.0, "shards": []}
    found = {
        "format": "tagging-shards/1",
        "features": features,
        "vocabulary": names(mark)[0],
        "splits": {"train": dict(split), "test": dict(split)},
        "counts": {"inputs": 81, "samples": 80, "rejects": 1,
                   "rejects_by_reason": {f"reason{mark}": 1}},
    }  # fmt: skip
    found.update(changes)
    return found


def write_predictions(path: Path, vocabulary: list[str], labels, probs) -> None:
    tags = [[vocabulary[t] for t in np.flatnonzero(row)] for row in labels]
    schema = pa.schema(
        [("key", pa.string()), ("tags", pa.list_(pa.string())),
         ("probabilities", pa.list_(pa.float32()))],
        metadata={b"tagtrain": json.dumps({"vocabulary": vocabulary}).encode()},
    )  # fmt: skip
    keys = [f"trk{i:03d}" for i in range(len(labels))]
    pq.write_table(pa.table([keys, tags, probs.tolist()], schema=schema), path)


def scores(rng, labels, noise: float):
    return np.clip(labels * 0.6 + rng.uniform(0, 0.4, labels.shape) + noise * rng.standard_normal(labels.shape), 0, 1)  # fmt: skip


def robustness_rows(mark: str) -> list[dict]:
    _, sets, trained = names(mark)
    rows = []
    for label in (trained, PUBLISHED):
        for i, name in enumerate(sets):
            drop = [0.0, 0.03, 0.01][i]
            row = dict.fromkeys(row_fields(), "")
            row.update(run=label, model=f"model{mark}", deformation=name, tracks=40,
                       params=json.dumps({f"param{mark}": f"value{mark}"}) if i else "{}")  # fmt: skip
            for m, clean in (("roc_auc", 0.9), ("pr_auc", 0.6)):
                row.update({m: clean - drop, f"{m}_drop": drop, f"{m}_drop_significant": i == 1})
            rows.append(row)
    return rows


def fake_run(root: Path, runs: int = 1, mark: str = MARK) -> tuple[Path, Path, Path]:
    """(run, data, compare): a run directory with what train, evaluate, embed and
    robustness leave there, a dataset card, and a published model's evaluated run; markup
    in every value the report shows."""
    rng = np.random.default_rng(0)
    tags, sets, trained = names(mark)
    data, run, compare = root / "data", root / f"run{mark}", root / f"compare{mark}"
    for d in (data, run, compare, run / "robustness"):
        d.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps(card(mark)))
    pq.write_table(pa.table({c: [f"{c}{mark}"] for c in ("key", "path", "stage", "reason", "message")}),
                   data / "rejects.parquet")  # fmt: skip
    metrics = {"model": f"model{mark}", "tracks": 40, "chunks": 4, "roc_auc": 0.9, "pr_auc": 0.6,
               "bootstrap": {"resamples": 200, "roc_auc": {"low": 0.851, "high": 0.942},
                             "pr_auc": {"low": 0.512, "high": 0.688}},
               "excluded_tags": [f"excluded{mark}"], "data": f"data{mark}",
               "data_card_sha256": "an earlier card"}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    published = {**metrics, "not_in_model_vocabulary": [f"unscored{mark}"]}
    (compare / "metrics.json").write_text(json.dumps(published))
    for d in (run, compare):
        with open(d / "per_tag.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["tag", "positives", "roc_auc", "pr_auc"])
            writer.writerows([t, 10, 0.9 - 0.01 * i, 0.5] for i, t in enumerate(tags))
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "phase", "lr", "train_loss", "val_loss", "roc_auc", "pr_auc"])
        writer.writerows([e, f"phase{mark}", 1e-3, 0.5, 0.4, 0.8, 0.5] for e in range(3))
    (run / "summary.json").write_text(json.dumps({"model": f"summary{mark}", "best_epoch": 2}))
    (root / "commands.sh").write_text(f"python -m tagtrain train cmd{mark}\n")
    labels = (rng.uniform(size=(40, len(tags))) < 0.3).astype(float)
    labels[:2] = 1  # every tag has positives...
    labels[2:4] = 0  # ... and negatives
    write_predictions(run / "predictions.parquet", tags, labels, scores(rng, labels, 0))
    rows = robustness_rows(mark)
    for extra in range(runs - 1):  # more runs: a table wider than the page
        rows += [{**r, "run": f"another{extra}"} for r in rows if r["run"] == PUBLISHED]
    with open(run / "robustness" / "robustness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, row_fields())
        writer.writeheader()
        writer.writerows(rows)
    # The published model has no output for the first tag: its heat map shows it grey.
    for label, vocabulary in ((trained, tags), (PUBLISHED, tags[1:])):
        columns = [tags.index(t) for t in vocabulary]
        for i, name in enumerate(sets):
            probs = scores(rng, labels[:, columns], 0.1 * i * (1 + (label == PUBLISHED)))
            path = run / "robustness" / f"predictions-{label}-{name}.parquet"
            write_predictions(path, vocabulary, labels[:, columns], probs)
    return run, data, compare


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run, data, compare = fake_run(root)
    page = build_report(run, data, commands=root / "commands.sh", compare=[compare])
    return root, run, data, page


class Parsed(HTMLParser):
    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.attributes, self.text = [], [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append(tag)
        self.attributes += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def test_markup_in_any_value_the_report_shows_stays_text(fake):
    _, _, _, page = fake
    parsed = Parsed(page)
    assert "xss-probe" not in parsed.elements and "script" not in parsed.elements
    assert "onmouseover" not in parsed.attributes
    assert set(parsed.attributes) <= {"lang", "charset", "name", "content", "class", "id",
                                      "alt", "src", "title"}  # fmt: skip
    text = "".join(parsed.text)
    shown = ["reason", "key", "path", "message", "rock", "model", "phase", "summary",
             "noise_0.1", "param", "value", "excluded", "unscored", "data", "cmd", "short_chunk_cnn",
             "run", "compare"]  # fmt: skip
    missing = [field for field in shown if f"{field}{MARK}" not in text]
    assert missing == []  # each value is on the page, as text
    # A tag that reads as (broken) math to matplotlib is drawn as text in the figures.
    assert page.count("<img") >= 5


def test_the_report_escapes_through_one_helper():
    """Every section builds its HTML through tagtrain.reporting.html.esc (quotes
    included): no module of the report escapes on its own, or forgets to."""
    import ast

    import tagtrain.reporting

    for path in Path(tagtrain.reporting.__file__).parent.glob("*.py"):
        if path.name == "html.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            imported = isinstance(node, ast.Import) and any(a.name == "html" for a in node.names)
            called = isinstance(node, ast.Attribute) and node.attr == "escape"
            assert not (imported or called), f"{path.name}:{node.lineno}: use esc"


def test_card_counts_with_markup_are_text():
    """The issue's card (`counts.inputs` a script) as the section renders it: escaped."""
    hostile = card(counts={"inputs": "<script>alert(1)</script>", "samples": MARK})
    parsed = Parsed(dataset_section(Path("/nonexistent"), hostile))
    assert "script" not in parsed.elements and "xss-probe" not in parsed.elements
    assert "<script>alert(1)</script>" in "".join(parsed.text)


def report_cli(run: Path, data: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["report", "--run", str(run), "--data", str(data)])
    return status, err.getvalue()


@pytest.mark.parametrize(
    "hostile, says",
    [
        ("dev-zero", "is not a regular file"),
        ({"splits": {"test": {"samples": 1, "seconds": "abc", "shards": []}}},
         "splits.test.seconds must be a non-negative number"),
        ({"counts": {"inputs": "<script>alert(1)</script>"}}, "counts.inputs"),
    ],
)  # fmt: skip
def test_report_reads_the_card_with_the_loaders_checks(tmp_path, hostile, says):
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    if hostile == "dev-zero":
        (data / "dataset.json").symlink_to("/dev/zero")
    else:
        (data / "dataset.json").write_text(json.dumps(card(**hostile)))
    status, err = report_cli(run, data)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err and "unexpected" not in err
    assert not (run / "report.html").exists()


def test_the_beam_jobs_read_a_card_with_the_same_schema(tmp_path):
    """perturb reads its source card through parse_card, which applies the loader's
    schema: the same one line as the report, exit 2."""
    from tests.conftest import run_cli

    hostile = card(splits={"test": {"samples": 1, "seconds": "abc", "shards": []}})
    (tmp_path / "dataset.json").write_text(json.dumps(hostile))
    result = run_cli("beam_runner.py", "perturb", "--data", str(tmp_path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"beam_runner.py: error: {tmp_path / 'dataset.json'}: splits.test.seconds must be a "
        "non-negative number, not 'abc'"
    ]


def test_a_run_file_linked_to_a_device_is_one_line(tmp_path):
    run, data, _ = fake_run(tmp_path)
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to("/dev/zero")
    status, err = report_cli(run, data)
    assert status == 2 and "not a regular file" in err and len(err.strip().splitlines()) == 1


def test_headline_intervals_and_robustness_marks_with_one_sign(fake):
    _, _, _, page = fake
    assert '<div class="kpi">ROC-AUC <b>0.900</b> <span class="ci"' in page
    assert "95% CI 0.851\u20130.942" in page and "95% CI 0.512\u20130.688" in page
    robustness = re.search(r'<table class="robustness">(.*?)</table>', page, re.S).group(1)
    header = re.findall(r"<th>(.*?)</th>", robustness)
    assert sum(h.endswith(": change") for h in header) == 4  # two metrics, two runs
    assert not any("drop" in h for h in header)
    rows = [
        re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", robustness)
    ]
    by_set = {Parsed(r[0]).text[0]: r for r in rows if r}
    assert by_set["clean"][3:5] == ["0.900", "–"]
    assert by_set[SETS[1]][3:5] == ["0.870", "-0.030*"]  # significant, worse
    assert by_set[SETS[2]][3:5] == ["0.890", "-0.010"]
    assert "negative is worse for ROC-AUC, PR-AUC" in page
    assert "positive is worse" not in page and "clean minus deformed" not in page
    assert "(-0.030)" in page  # the most damaging deformation, in the same sign


def captured_figures(monkeypatch) -> list:
    found = []

    def keep(fig):
        found.append(fig)
        return b"png"

    monkeypatch.setattr(figures, "_png", keep)
    return found


def test_heat_maps_share_tag_order_size_and_colour_range(fake, monkeypatch):
    _, run, _, _ = fake
    rows = list(csv.DictReader(open(run / "robustness" / "robustness.csv")))
    found = captured_figures(monkeypatch)
    assert len(robustness_section.heat_maps(run / "robustness", rows, TAGS)) == 2
    trained, published = found
    ticks = [[t.get_text() for t in f.axes[0].get_yticklabels()] for f in found]
    columns = [[t.get_text() for t in f.axes[0].get_xticklabels()] for f in found]
    assert ticks[0] == ticks[1] and len(ticks[0]) == len(TAGS)
    assert columns[0] == columns[1] == [s.replace("$", "\\$") for s in SETS[1:]]
    assert tuple(trained.get_size_inches()) == tuple(published.get_size_inches())
    limits = [f.axes[0].images[0].get_clim() for f in found]
    assert limits[0] == limits[1] and limits[0][0] == -limits[0][1]
    # The range covers both maps' largest change (the published model's, here).
    values = [np.ma.filled(f.axes[0].images[0].get_array(), np.nan) for f in found]
    assert limits[0][1] == pytest.approx(max(np.nanmax(np.abs(v)) for v in values))
    assert np.nanmax(np.abs(values[1])) > np.nanmax(np.abs(values[0]))
    # The tag the published model has no output for is a masked (grey) row, not dropped.
    row = ticks[1].index(TAGS[0].replace("$", "\\$"))
    assert np.isnan(values[1][row]).all() and np.isfinite(values[0][row]).all()


def test_pr_curves_are_drawn_inside_the_axes(monkeypatch):
    found = captured_figures(monkeypatch)
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 3, dtype=float)
    figures.pr_curves(labels, labels * 0.8 + 0.1, ["a", "b"], n=1)
    for ax in found[0].axes:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x0 < 0 and x1 > 1 and y0 < 0 and y1 > 1  # recall 0/1, precision 1 off the spines


def test_headers_wrap_between_words_and_wide_tables_scroll_in_their_box():
    page = table(["short_chunk_cnn: ROC-AUC", "noise_0.1"], [[1, 2]], "robustness")
    assert "<th>short_<wbr>chunk_<wbr>cnn: ROC\u2011AUC</th>" in page  # a non-breaking hyphen
    assert "<th>noise_<wbr>0.1</th>" in page
    assert page.startswith('<div class="wide"><table class="robustness">')
    from tagtrain.reporting.html import CSS

    assert re.search(r"\.wide \{[^}]*overflow-x: auto", CSS)
    th = re.search(r"(?m)^th \{([^}]*)\}", CSS).group(1)
    assert "anywhere" not in th and "break-all" not in th


# Appended to a copy of the page: where its sections are, as the browser lays them out.
PROBE = """<script>
const at = id => { const e = document.getElementById(id); return e ? e.getBoundingClientRect().top + scrollY : -1; };
const wide = [...document.querySelectorAll('.wide')].filter(e => e.scrollWidth > e.clientWidth + 1).length;
document.body.setAttribute('data-probe', JSON.stringify({
  sections: Object.fromEntries(['dataset', 'training', 'evaluation', 'robustness', 'reproduce'].map(id => [id, at(id)])),
  height: document.documentElement.scrollHeight, page: document.documentElement.scrollWidth,
  width: document.documentElement.clientWidth, scrolling: wide,
  heat: [...document.querySelectorAll('img[alt^="per-tag x deformation"]')].map(e => Math.round(e.getBoundingClientRect().width)),
}));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh")
def test_report_renders_its_sections_in_chromium_at_1400_px(tmp_path):
    # Plain names (as a real run has), and a robustness table wider than the page.
    run, data, compare = fake_run(tmp_path, runs=4, mark="")
    page = build_report(run, data, commands=tmp_path / "commands.sh", compare=[compare])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]  # fmt: skip
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1400,1000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    probe = json.loads(attribute(dom, "data-probe"))
    tops = list(probe["sections"].values())
    assert all(t > 0 for t in tops) and tops == sorted(tops), probe  # every section, in order
    assert probe["page"] <= probe["width"] == 1400, probe  # the page itself never scrolls sideways
    assert probe["scrolling"] >= 1, probe  # the wide robustness table scrolls in its box
    assert len(probe["heat"]) == 2 and probe["heat"][0] == probe["heat"][1] > 400, probe
    height = probe["height"]
    assert height > tops[-1]
    shot = tmp_path / "report.png"
    report = tmp_path / "report.html"
    report.write_text(page)
    subprocess.run(
        [CHROMIUM, *flags, f"--window-size=1400,{height}", f"--screenshot={shot}", report.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3].mean(axis=-1)
    assert pixels.shape == (height, 1400)
    # Drawn below the robustness heading too (its table, figures, the commands), not cut off.
    below = pixels[int(probe["sections"]["robustness"]) :]
    assert np.mean(below < 0.9) > 0.01
    if os.environ.get("REPORT_SCREENSHOT"):  # to look at it
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])


def attribute(dom: str, name: str) -> str:
    return html.unescape(re.search(rf'{name}="([^"]*)"', dom).group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh")
def test_the_demos_robustness_table_fits_a_1200_px_page_unbroken(tmp_path):
    """Two runs on the paper's eight deformations (the demo's table): it fits the page
    without scrolling, and no header or test-set name breaks inside a word."""
    from pipelines.core.deformations import load_deformations
    from tagtrain.reporting.html import CSS
    from tagtrain.reporting.robustness_section import robustness_table

    rows = []
    for label in ("short_chunk_cnn", PUBLISHED):
        for d in [None, *load_deformations("paper")]:
            row = dict.fromkeys(row_fields(), "")
            row.update(run=label, deformation=d.name if d else "clean", tracks=24,
                       params=json.dumps(d.params()) if d else "{}", roc_auc=0.91234,
                       pr_auc=0.51234, roc_auc_drop=0.0123, pr_auc_drop=-0.0123,
                       roc_auc_drop_significant=True)  # fmt: skip
            rows.append(row)
    # Each header and first-column cell: its words' widths against the cell's, as laid out.
    probe = """<script>
const box = document.querySelector('.wide') || document.documentElement;
const broken = [...document.querySelectorAll('th, td:first-child')].filter(cell => {
  const range = document.createRange(); range.selectNodeContents(cell);
  const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
  const words = cell.innerHTML.split(/<wbr>|\\s+/).filter(w => w).length;
  return lines.size > words;  // more lines than pieces it may break between
}).map(cell => cell.textContent);
document.body.setAttribute('data-probe', JSON.stringify({
  scroll: box.scrollWidth - box.clientWidth, broken: broken}));
</script>"""
    page = tmp_path / "table.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><style>{CSS}</style>"
                    f"</head><body>{robustness_table(rows)}{probe}</body></html>")  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1200", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = json.loads(attribute(dom, "data-probe"))
    assert found == {"scroll": 0, "broken": []}, found


def test_the_terminal_table_shows_the_change_from_clean_as_the_report_does(capsys):
    from tagtrain.inference.robustness_report import print_table

    rows = [{**r, "roc_auc": float(r["roc_auc"]), "pr_auc": float(r["pr_auc"])}
            for r in robustness_rows("") if r["run"] == PUBLISHED]  # fmt: skip
    print_table(rows, [PUBLISHED], [r["deformation"] for r in rows], "test")
    printed = " ".join(capsys.readouterr().out.split())
    assert "deformed minus clean as in report.html: negative is worse" in printed
    assert "0.8700 (-0.0300*)" in printed  # the report's "-0.030*"


def test_the_pr_curves_take_the_tags_scores_from_per_tag_csv(fake, monkeypatch):
    """Issue 31: the report scored every track of predictions.parquet again only to rank
    tags for its PR curves (the section's costliest step at a million tracks); evaluate's
    per_tag.csv already has those figures. Without it, the figure scores them itself."""
    from tagtrain.reporting import evaluation_section as section

    _, run, _, _ = fake
    found = captured_figures(monkeypatch)

    def refuse(*args):
        raise AssertionError("the predictions were scored again")

    monkeypatch.setattr(figures, "tag_scores", refuse)
    assert "PR curves of the best and worst tags" in section.evaluation_section(run, card(), [])
    pr = next(f for f in found if "precision-recall" in f.axes[0].get_title())
    legends = [
        t.get_text() for ax in pr.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    ]
    # per_tag.csv's figures (0.9 - 0.01 i), not those of the predictions.
    assert any(TAGS[1] in text and "ROC-AUC 0.89" in text for text in legends), legends
    no_csv = run.parent / "no-csv"
    shutil.copytree(run, no_csv)
    (no_csv / "per_tag.csv").unlink()
    with pytest.raises(AssertionError, match="scored again"):
        section.evaluation_section(no_csv, card(), [])
