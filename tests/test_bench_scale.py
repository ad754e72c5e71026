"""bench/scale.py: the table of cost growth, its exponent, and the synthetic corpus."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402
import scale_prepare  # noqa: E402
from scale_corpus import build_corpus, cache_dir  # noqa: E402

NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def _row_names() -> list[str]:
    names = [row.name for row in scale_prepare.ROWS]
    if importlib.util.find_spec("scale_loader") is not None:
        names += [row.name for row in importlib.import_module("scale_loader").ROWS]
    return names


@pytest.mark.slow
def test_the_table_has_every_row_with_finite_figures_and_the_exponent_last(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "300,600", "--repeats", "1",
         "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    rows = {line.split(" | ")[0].strip(): line for line in lines[header + 1 :] if " | " in line}
    assert sorted(rows) == sorted(_row_names())
    for name, line in rows.items():
        cells = line.split(" | ")
        assert len(cells) == 4, line  # name, two sizes, exponents
        for cell in cells[1:3]:
            figures = [float(x) for x in re.findall(rf"(?<![\w=])({NUMBER})(?:s|MB)", cell)]
            # wall seconds, CPU seconds, peak RSS
            assert len(figures) == 3 and all(math.isfinite(f) for f in figures), (name, cell)
        exponents = [float(x) for x in re.findall(rf"\w+ ({NUMBER})", cells[3])]
        assert exponents and all(math.isfinite(e) for e in exponents), (name, cells[3])
    last = re.fullmatch(rf"max growth exponent ({NUMBER}) \((.+)\)", lines[-1])
    assert last and math.isfinite(float(last[1])) and last[2] in rows, lines[-1]


def test_bad_sizes_are_one_line_and_exit_2():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "10k"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--sizes" in done.stderr


def test_growth_exponent_of_linear_quadratic_and_floored_figures():
    assert scale.growth_exponent(1000, 2.0, 10000, 20.0) == pytest.approx(1.0)
    assert scale.growth_exponent(1000, 1.0, 10000, 100.0) == pytest.approx(2.0)
    # Under the floor at both sizes: noise, no growth; one side under it: measured from it.
    assert scale.growth_exponent(1000, 0.001, 10000, 0.04, floor=0.05) == 0.0
    assert scale.growth_exponent(1000, 0.001, 10000, 0.5, floor=0.05) == pytest.approx(1.0)


def test_the_table_names_the_row_that_grows_fastest_and_the_goals_it_misses():
    rows = [(None, scale_prepare.Row("prepare plan: --update", None)),
            (None, scale_prepare.Row("flat", None))]  # fmt: skip
    results = {
        "prepare plan: --update": {
            100_000: scale.Result(6.0, 500, 100),
            1_000_000: scale.Result(600.0, 900, 500),
        },
        "flat": {100_000: scale.Result(1.0, 100, 10), 1_000_000: scale.Result(10.0, 100, 10)},
    }
    lines = scale.table(rows, [100_000, 1_000_000], results)
    assert lines[-1] == "max growth exponent 2.00 (prepare plan: --update)"
    assert any(line.startswith("goal failed: prepare plan: --update at 1000000") for line in lines)


def test_the_last_line_takes_cpu_time_over_wall_time_which_carries_the_machines_load():
    rows = [(None, scale_prepare.Row("busy", None))]
    busy = {
        1_000: scale.Result(1.0, 100, 10, cpu=1.0),
        10_000: scale.Result(100.0, 100, 10, cpu=10.0),
    }
    lines = scale.table(rows, [1_000, 10_000], {"busy": busy})
    assert "t 2.00 cpu 1.00" in lines[1]
    assert lines[-1] == "max growth exponent 1.00 (busy)"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"), 250, tags=7, seed=1)


def test_a_corpus_is_built_once_and_reused(corpus):
    card = corpus.dataset / "dataset.json"
    stamp = card.stat().st_mtime_ns
    again = build_corpus(corpus.root.parent, 250, tags=7, seed=1)
    assert again == corpus and card.stat().st_mtime_ns == stamp
    assert sum(1 for _ in corpus.audio_dir.rglob("*.mp3")) == 250


def test_prepare_plans_nothing_on_the_corpus_and_some_shards_after_a_change(corpus):
    with cache_dir(corpus):
        _, work = scale_prepare.plan(corpus, corpus.manifest)
        assert not work.build and sum(work.rows.values()) == 250
        _, update = scale_prepare.plan(corpus, corpus.changed_manifest, "--update")
    assert update.build and update.to_decode == math.ceil(250 / 50)
    card = json.loads((corpus.dataset / "dataset.json").read_text())
    assert card["job"]["shard_size_mb"] == 256.0 and card["counts"]["samples"] == 250


def test_the_loader_reads_a_batch_of_the_corpus_with_its_label_width(corpus):
    from tagtrain import loader
    from tagtrain.models.registry import get_entry

    card = json.loads((corpus.dataset / "dataset.json").read_text())
    shards = loader.split_shards(card, str(corpus.dataset), "train")
    plan = loader.plan_input(card, get_entry("short_chunk_cnn").input_spec)
    cfg = loader.LoaderConfig(batch_size=8, workers=0, seed=0)
    reader = loader.EpochReader(loader.ShardStream(shards, plan, card["vocabulary"], cfg, 0, None))
    batch = next(iter(reader))
    reader.close()
    assert tuple(batch.y.shape) == (8, 7) and batch.y.sum(dim=1).min() >= 1
    assert reader.stats.bad_samples == 0


def test_split_predictions_stay_float32():
    """predict_split hands evaluate the model's float32 probabilities and labels: float64
    copies of a million tracks x 50 tags held 800 MB more (issue 31)."""
    import scale_loader

    preds = scale_loader._predictions(40)
    assert preds.probs.dtype == preds.labels.dtype == np.float32
    assert preds.probs.shape == preds.labels.shape == (40, scale_loader.TAGS)
