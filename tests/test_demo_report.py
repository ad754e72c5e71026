"""The main job end to end: scripts/demo.sh (what `make demo` runs after set-up) on a small
demo corpus, then its report rendered by a real browser."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import DEMO_TEST_N, ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = (
    "training curves",
    "learning rate",
    "per-tag AUC against positives",
    "PR curves of the best and worst tags",
    "embedding map",
    "robustness figure",
    "per-tag x deformation heat map",
    "per-tag x deformation heat map (musicnn-mtt)",
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Appended to a copy of the report: what overflows the page, measured by the browser.
LAYOUT_PROBE = """<script>
const width = document.documentElement.clientWidth;
const over = [...document.querySelectorAll('table, pre, img, h1, p')]
  .filter(e => e.getBoundingClientRect().right > width + 1).map(e => e.tagName + '.' + e.className);
document.body.setAttribute('data-overflow', JSON.stringify(over));
document.body.setAttribute('data-scroll', document.documentElement.scrollWidth - width);
</script>"""


def run_demo(demo_dir: Path) -> str:
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "DEMO_N": str(DEMO_TEST_N),
        "DEMO_TRAIN_MINUTES": "2.5",
    }
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/demo.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def demo_run(demo_corpus, tmp_path_factory) -> Path:
    demo_dir = tmp_path_factory.mktemp("demo")
    # The session's rendered corpus has the same seed and size: the demo's render step
    # finds every clip already there and skips it.
    shutil.copytree(demo_corpus, demo_dir / "corpus")
    (demo_dir / "stdout.txt").write_text(run_demo(demo_dir))
    return demo_dir


def macro_roc_auc(predictions: Path, shuffles: int) -> tuple[float, list[float]]:
    """The macro ROC-AUC of an evaluation's predictions.parquet (over the tags with positives
    and negatives), and the same with the predictions dealt to the wrong tracks, `shuffles`
    times: what a model that heard nothing of each track would score."""
    from sklearn.metrics import roc_auc_score

    table = pq.read_table(predictions)
    vocabulary = json.loads(table.schema.metadata[b"tagtrain"])["vocabulary"]
    rows = table.to_pylist()
    y = np.array([[t in r["tags"] for t in vocabulary] for r in rows], dtype=float)
    p = np.array([r["probabilities"] for r in rows], dtype=float)
    scored = [j for j in range(len(vocabulary)) if 0 < y[:, j].sum() < len(y)]

    def macro(q):
        return float(np.mean([roc_auc_score(y[:, j], q[:, j]) for j in scored]))

    rng = np.random.default_rng(0)
    return macro(p), [macro(p[rng.permutation(len(p))]) for _ in range(shuffles)]


# Checked (its training and evaluation steps, on this session's prepared corpus) under
# ATEN_CPU_CAPABILITY=default, avx2 and avx512 and ONEDNN_MAX_CPU_ISA=AVX2, the demo's own
# seed (scripts/demo.sh takes none): ROC-AUC 0.868-0.899 (bound 0.75), 30 epochs within the
# 2.5 minutes on 2 busy cores; the control (20 shuffles) at most 0.64-0.68. The published
# musicnn: 0.926 under every kernel (bound 0.8), its control at most 0.62.
@pytest.mark.slow
@pytest.mark.isa
def test_demo_runs_every_stage_and_learns_the_tags(demo_run):
    stdout = (demo_run / "stdout.txt").read_text()
    for stage in range(1, 9):
        assert f"{stage}/8" in stdout
    run = demo_run / "runs/short_chunk_cnn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["roc_auc"] >= 0.75, metrics
    # The control: the same predictions on the wrong tracks fail the same bound.
    macro, shuffled = macro_roc_auc(run / "predictions.parquet", 20)
    assert macro == pytest.approx(metrics["roc_auc"], abs=1e-6)
    assert not max(shuffled) >= 0.75, shuffled
    perturbed = sorted(p.name for p in (demo_run / "data/perturbed").iterdir())
    assert len(perturbed) == 8
    report = run / "report.html"
    assert f"report: {report.resolve()}" in stdout
    commands = (demo_run / "commands.sh").read_text()
    for step in ("manifests.demo", "prepare", "perturb", "train", "evaluate", "robustness"):
        assert step in commands
    # The published MTT musicnn tagged every test track, no training needed.
    tagged = [json.loads(line) for line in (demo_run / "pretrained-musicnn-mtt.jsonl").open()]
    test_tracks = (demo_run / "data/dataset.json").read_text()
    assert tagged and all(len(t["probabilities"]) == 50 and t["taggram"] for t in tagged)
    assert len(tagged) == json.loads(test_tracks)["splits"]["test"]["samples"]
    # ... and was evaluated and put through the robustness evaluator beside the trained
    # model, on the tags both vocabularies have, the others listed.
    card = json.loads(test_tracks)
    published = json.loads((demo_run / "runs/musicnn-mtt/metrics.json").read_text())
    unscored = published["not_in_model_vocabulary"]
    assert sorted(unscored) == ["banjo", "bass", "folk", "no drums"]
    assert published["tags"] == len(card["vocabulary"]) - len(unscored)
    assert published["roc_auc"] > 0.8, published
    macro, shuffled = macro_roc_auc(demo_run / "runs/musicnn-mtt/predictions.parquet", 20)
    assert macro == pytest.approx(published["roc_auc"], abs=1e-6)
    assert not max(shuffled) > 0.8, shuffled
    robustness = json.loads((run / "robustness/robustness.json").read_text())
    assert [r["label"] for r in robustness["runs"]] == ["short_chunk_cnn", "musicnn-mtt"]
    assert [r["chunks"] for r in robustness["runs"]] == [16, 4]  # --pretrained-chunks 4
    rows = robustness["rows"]
    assert len(rows) == 2 * 9 and {r["run"] for r in rows} == {"short_chunk_cnn", "musicnn-mtt"}
    per_tag = (run / "robustness/robustness-per-tag.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in per_tag[1:]} == {"short_chunk_cnn", "musicnn-mtt"}
    for label in ("short_chunk_cnn", "musicnn-mtt"):
        assert f"most damaging deformation for {label}: " in stdout
        assert f"most affected tags of {label} (largest ROC-AUC drop): " in stdout
    pitch = [r for r in rows if r["run"] == "musicnn-mtt" and r["deformation"].startswith("pitch")]
    print("musicnn-mtt pitch-shift drops:", [(r["deformation"], r["roc_auc_drop"]) for r in pitch])
    assert (run / "embeddings-test.parquet").exists()
    for step in ("embed", "--pretrained musicnn-mtt", "--compare"):
        assert step in commands


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh")
def test_report_renders_in_a_real_browser_with_its_figures_and_tables(demo_run, tmp_path):
    report = demo_run / "runs/short_chunk_cnn/report.html"
    page = report.read_text()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", report.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for table in ("splits", "per-tag", "robustness", "compare"):
        assert f'class="{table}"' in dom, table
    # The published model beside the trained one: its own row, scores on the shared tags.
    compare = re.search(r'<table class="compare">(.*?)</table>', dom, re.S).group(1)
    assert "musicnn-mtt" in compare and "shared tags" in compare
    assert "Not in the model" in dom and "Most damaging (largest ROC-AUC drop)" in dom
    assert dom.count("<tr>") > 40  # per-tag rows, robustness rows, epochs
    for heading in ("Dataset", "Training", "Evaluation", "Robustness", "Reproduce"):
        assert heading in dom
    # The embedded figures are real images: the training curves and the robustness plot,
    # and (with predictions present) every other figure.
    images = dict(re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page))
    assert set(images) == set(FIGURES), sorted(images)
    for data in images.values():
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.05

    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2400",
         report.resolve().as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    # The page is drawn, not blank: plenty of non-white pixels.
    assert np.mean(pixels[..., :3].mean(axis=-1) < 0.9) > 0.02


@pytest.mark.slow
def test_demo_again_replaces_an_older_demos_data_and_keeps_the_trained_run(demo_run):
    # Last in this module: it runs the demo again in the same directory. The card now
    # claims other settings, as an older demo's would: the demo must replace the data,
    # not stop, and keep the run, which was trained on exactly the shards it rewrites.
    card_path = demo_run / "data/dataset.json"
    original = card_path.read_bytes()
    card = json.loads(original)
    card["identity"]["shard_size_mb"] = 999.0
    card_path.write_text(json.dumps(card))
    best = demo_run / "runs/short_chunk_cnn/best.pt"
    trained_at = best.stat().st_mtime_ns
    stdout = run_demo(demo_run)
    assert card_path.read_bytes() == original
    assert "already trained on this dataset" in stdout
    assert best.stat().st_mtime_ns == trained_at
    assert "demo finished" in stdout


def browser_dom(report: Path, tmp_path: Path) -> str:
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,2400",
         "--dump-dom", probed.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def cells(table_html: str) -> list[list[str]]:
    return [
        re.findall(r"<td[^>]*>(.*?)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", table_html)
        if "<td" in row
    ]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh")
def test_report_fits_the_page_with_sorted_rounded_tables_and_epochs_from_one(demo_run, tmp_path):
    report = demo_run / "runs/short_chunk_cnn/report.html"
    dom = browser_dom(report, tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    overflow = json.loads(html.unescape(re.search(r'data-overflow="([^"]*)"', body).group(1)))
    assert overflow == [], overflow  # no table, command, figure or heading runs off the page
    assert int(re.search(r'data-scroll="(-?\d+)"', body).group(1)) <= 0
    tables = dict(re.findall(r'<table class="([^"]+)">(.*?)</table>', dom, re.S))
    number = re.compile(r"^-?[\d,]+(\.\d+)?(e-?\d+)?$|^–$")
    for name in ("per-tag", "epochs", "robustness", "splits"):
        for row in cells(tables[name]):
            for cell in row:
                if number.match(cell) and "." in cell and "e" not in cell:
                    assert len(cell.split(".")[1]) <= 3, (name, cell)  # rounded
    # Per-tag: every per-tag table, in page order, is one ranking by ROC-AUC.
    per_tag = re.findall(r'<table class="per-tag">(.*?)</table>', dom, re.S)
    aucs = [float(r[2]) for t in per_tag for r in cells(t) if r[2] != "–"]
    assert len(aucs) >= 10 and aucs == sorted(aucs, reverse=True)
    # Epochs count from 1 in the table, as in the summary's best epoch and the plots.
    epochs = [int(r[0]) for r in cells(tables["epochs"])]
    assert epochs[0] == 1 and epochs == list(range(1, len(epochs) + 1))
    summary = json.loads((demo_run / "runs/short_chunk_cnn/summary.json").read_text())
    assert summary["best_epoch"] in epochs
    # Robustness: one row per test set, readable parameters, no raw JSON, no repeated run.
    rows = cells(tables["robustness"])
    assert [r[0] for r in rows][0] == "clean" and len(rows) == 9
    assert all("{" not in c and "short_chunk_cnn" not in c for r in rows for c in r)
    assert any("semitones=" in r[1] for r in rows)
    assert "<pre>" in dom and "beam_runner.py prepare" in dom

    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile3'}", f"--screenshot={shot}",
         "--window-size=1200,7000", report.resolve().as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = matplotlib.image.imread(shot)
    # The right margin stays empty all the way down: nothing is drawn past the page.
    assert pixels[:, -20:, :3].min() > 0.95
    shutil.copy(shot, os.environ.get("REPORT_SCREENSHOT", tmp_path / "kept.png"))
