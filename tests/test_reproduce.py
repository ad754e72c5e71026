"""`tagtrain reproduce PAPER` (issue 28 item 5): a paper's recipes as normal, resumable
runs, each evaluated on the test split with its recipe's protocol, and the ledger of the
paper's figures beside ours."""

from __future__ import annotations

import csv
import json
import shlex

import pytest
import yaml

from tagtrain.recipes import load_recipe
from tagtrain.recipes.reproduce import ledger_rows, plan


def test_print_commands_lists_the_runs_teachers_first(tmp_path, capsys):
    from tagtrain.__main__ import main

    out = tmp_path / "won2021"
    assert main(["reproduce", "won2021", "--data", "D", "--out", str(out), "--print-commands",
                 "--max-minutes", "30"]) == 0  # fmt: skip
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [line[3:6] for line in lines] == [
        ["train", "--recipe", "won2021_teacher"],
        ["student", "--recipe", "won2021_kd"],
        ["student", "--recipe", "won2021_kd_released"],
        ["student", "--recipe", "won2021_ke"],
    ]
    for line in lines:
        name = line[5]
        assert line[line.index("--out") + 1] == str(out / name)
        assert line[line.index("--max-minutes") + 1] == "30" and "--resume" not in line
        if line[3] == "student":  # taught by the paper's supervised run
            assert line[line.index("--teacher") + 1] == str(out / "won2021_teacher")
    # A run already started is resumed; --only picks recipes of the paper.
    (out / "won2021_teacher").mkdir(parents=True)
    (out / "won2021_teacher" / "config.json").write_text("{}")
    steps = plan("won2021", "D", out, only=["won2021_teacher"])
    assert len(steps) == 1 and steps[0].argv[-1] == "--resume"


def test_reproduce_refuses_what_it_cannot_run(tmp_path, capsys):
    from tagtrain.__main__ import main

    base = ["--data", "D", "--out", str(tmp_path), "--print-commands"]
    for argv, message in (
        (["reproduce", "won2030", *base], "unknown paper 'won2030'"),
        (["reproduce", "won2020", *base, "--only", "maest_5s"], "not a recipe of won2020"),
        (["reproduce", "maest", *base], "give --init FILE"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    steps = plan("maest", "D", tmp_path, init="passt.pt", only=["maest_30s", "maest_30s_ts"])
    assert [s.recipe.name for s in steps] == ["maest_30s", "maest_30s_ts"]
    ts = steps[1].argv
    assert ts[ts.index("--teacher") + 1] == str(tmp_path / "maest_30s")
    assert ts[ts.index("--init") + 1] == "passt.pt"


def test_ledger_flags_an_interval_that_excludes_the_papers_figure():
    recipe = load_recipe("won2019_wave")  # printed in percent: 90.66 / 44.21
    summary = {
        "roc_auc": 0.85, "pr_auc": 0.44, "tracks": 10, "chunks": 16, "run": "r",
        "bootstrap": {"resamples": 100, "roc_auc": {"low": 0.80, "high": 0.90},
                      "pr_auc": {"low": 0.40, "high": 0.48}},
    }  # fmt: skip
    roc, pr = ledger_rows(recipe, summary)
    assert roc["reported"] == pytest.approx(0.9066) and roc["reported_as_printed"] == 90.66
    assert roc["difference"] == pytest.approx(0.85 - 0.9066) and roc["flagged"] is True
    assert pr["flagged"] is False and pr["difference"] == pytest.approx(0.44 - 0.4421)
    # No figure in the paper, or no interval: nothing to flag.
    rows = ledger_rows(load_recipe("won2021_kd_released"), summary)
    assert [r["reported"] for r in rows] == [None, None] and not any(r["flagged"] for r in rows)
    no_interval = {**summary, "bootstrap": {"resamples": 0}}
    assert not any(r["flagged"] for r in ledger_rows(recipe, no_interval))


def test_a_recipes_evaluate_section_is_how_reproduce_evaluates(tmp_path):
    from tagtrain.recipes import RecipeError
    from tagtrain.recipes.reproduce import Step, evaluation_options

    mine = tmp_path / "fcn_last.yaml"
    mine.write_text(
        "cite: x\ncommand: train\ntrain: {model: fcn}\n"
        "evaluate: {chunks: 3, checkpoint: last, batch_size: 2}\n"
    )
    step = Step(load_recipe(str(mine)), tmp_path / "run")
    options = evaluation_options(step, bootstrap=7, device="cpu", workers=0)
    assert (options.chunks, options.checkpoint, options.batch_size) == (3, "last", 2)
    assert (options.run, options.split, options.bootstrap) == (str(tmp_path / "run"), "test", 7)
    # Without the section the run's own protocol decides (chunks unset).
    plain = evaluation_options(Step(load_recipe("won2021_teacher"), tmp_path / "t"))
    assert plain.chunks is None and plain.checkpoint == "best"
    # The split is reproduce's (the test split): a recipe cannot set it.
    mine.write_text("cite: x\ncommand: train\ntrain: {model: fcn}\nevaluate: {split: valid}\n")
    with pytest.raises(RecipeError, match="evaluate.split is not implemented"):
        load_recipe(str(mine))


@pytest.mark.slow
def test_reproduce_runs_a_recipe_end_to_end_on_the_demo(demo_dataset, tmp_path, capsys):
    from tagtrain.__main__ import main
    from tagtrain.reporting.ledger_section import ledger_section_for_run, read_ledger

    settings = tmp_path / "tiny.yaml"  # tiny budgets for every run of the paper
    settings.write_text(yaml.safe_dump({
        "width": 0.125, "batch_size": 2, "workers": 0, "shuffle_buffer": 4, "epochs": 1,
        "max_steps_per_epoch": 2, "val_chunks": 1, "progress": False, "device": "cpu",
    }))  # fmt: skip
    out = tmp_path / "won2020"
    argv = ["reproduce", "won2020", "--data", str(demo_dataset), "--out", str(out),
            "--only", "won2020_short_chunk_cnn", "--max-minutes", "5", "--config",
            str(settings), "--bootstrap", "50", "--eval-workers", "0", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    run = out / "won2020_short_chunk_cnn"
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "won2020_short_chunk_cnn" and config["sgd_nesterov"] is True
    assert (config["max_minutes"], config["epochs"], config["eval_chunks"]) == (5, 1, 16)
    rows = read_ledger(out / "ledger.csv")
    assert [r["metric"] for r in rows] == ["roc_auc", "pr_auc"]
    roc = rows[0]
    assert (roc["recipe"], roc["table"], float(roc["reported"])) == (
        "won2020_short_chunk_cnn", "Table 2", 0.9126
    )  # fmt: skip
    # Evaluated on the test split with the recipe's protocol: its 16 chunks per track.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["chunks"] == 16 == int(roc["chunks"])
    ours, low, high = (float(roc[k]) for k in ("ours", "low", "high"))
    assert ours == pytest.approx(metrics["roc_auc"], abs=1e-4) and low <= ours <= high
    assert float(roc["difference"]) == pytest.approx(ours - 0.9126, abs=1e-4)
    assert roc["flagged"] == str(not low <= 0.9126 <= high)
    page = (out / "ledger.html").read_text()
    assert "reproduction-ledger" in page and "won2020_short_chunk_cnn" in page
    assert "| won2020_short_chunk_cnn |" in (out / "ledger.md").read_text()
    # The run's report finds the ledger beside it; another run has none.
    assert "won2020_short_chunk_cnn" in ledger_section_for_run(run)
    assert ledger_section_for_run(tmp_path / "elsewhere") == ""
    assert main(["report", "--run", str(run), "--data", str(demo_dataset)]) == 0
    report = (run / "report.html").read_text()
    assert 'id="reproduction-ledger"' in report and "0.9126" in report
    # Again: the finished run is resumed (not retrained), and the ledger written again.
    assert main(argv) == 0
    assert "--resume" in capsys.readouterr().out
    with open(out / "ledger.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
