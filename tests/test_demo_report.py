"""The main job end to end: scripts/demo.sh (what `make demo` runs after set-up) on a small
demo corpus, then its report rendered by a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tests.conftest import DEMO_TEST_N, ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.mark.slow
def test_demo_runs_every_stage_and_learns_the_tags(demo_run):
    stdout = (demo_run / "stdout.txt").read_text()
    for stage in range(1, 8):
        assert f"{stage}/7" in stdout
    run = demo_run / "runs/short_chunk_cnn"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["roc_auc"] >= 0.75, metrics
    perturbed = sorted(p.name for p in (demo_run / "data/perturbed").iterdir())
    assert len(perturbed) == 8
    report = run / "report.html"
    assert f"report: {report.resolve()}" in stdout
    commands = (demo_run / "commands.sh").read_text()
    for step in ("manifests.demo", "prepare", "perturb", "train", "evaluate", "robustness"):
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
    for table in ("splits", "per-tag", "robustness"):
        assert f'class="{table}"' in dom, table
    assert dom.count("<tr>") > 40  # per-tag rows, robustness rows, epochs
    for heading in ("Dataset", "Training", "Evaluation", "Robustness", "Reproduce"):
        assert heading in dom
    # The embedded figures are real images: the training curves and the robustness plot.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    for data in images:
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
