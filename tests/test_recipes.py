"""Recipes are typed (issue 28 items 1, 4, 5): every key of every shipped recipe reaches
the run its command builds, a key nothing reads is one line, a user's YAML is a recipe,
the paper's figures are listed, and docs/FIDELITY.md's recipe tables are the recipes'."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from pipelines.core.errors import OneLineParser
from pipelines.core.flags import from_args
from tagtrain.recipes import RecipeError, load_recipe, recipe_names

MODULES = {
    "train": "tagtrain.commands.train",
    "student": "tagtrain.commands.student",
    "train-patchout": "tagtrain.commands.train_patchout",
}


def resolve(recipe: str, *extra: str):
    """(run config, objective options) that `python -m tagtrain COMMAND --recipe NAME`
    builds, without training: the command's own parser and `run_settings`, as its run()."""
    from tagtrain.commands.student import StudentFlags
    from tagtrain.commands.train import TrainFlags, run_settings
    from tagtrain.training.patchout import PatchoutOptions
    from tagtrain.training.student import StudentConfig

    r = load_recipe(recipe)
    parser = OneLineParser(prog="t")
    importlib.import_module(MODULES[r.cli_command]).add_arguments(parser)
    argv = ["--recipe", recipe, "--data", "data-dir", *extra]
    if r.command == "student" or r.model.endswith("_ts"):
        argv += ["--teacher", "teacher-run"]
    args = parser.parse_args(argv)
    if r.command == "student":
        flags = from_args(args, StudentFlags)
        return run_settings("student", args, flags, StudentConfig, flags.student_model)
    flags = from_args(args, TrainFlags)
    objective = PatchoutOptions if r.command == "patchout" else None
    return run_settings(r.cli_command, args, flags, objective)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_value_arrives_in_the_run(name, tmp_path):
    recipe = load_recipe(name)
    cfg, options = resolve(name, "--out", str(tmp_path / "run"))
    saved = cfg.to_dict()  # what the run writes as config.json
    assert saved["recipe"] == name
    for key, value in recipe.train.items():
        assert saved[key] == value, (name, f"train.{key}")
    section = recipe.options()
    if recipe.command == "train":
        assert options is None and not recipe.student and not recipe.patchout
    else:
        saved_options = dataclasses.asdict(options)  # student.json / patchout.json
        assert section, name
        for key, value in section.items():
            assert saved_options[key] == value, (name, f"{recipe.command}.{key}")
    # The evaluation of the run: its recipe's eval_chunks (else val_chunks) chunks.
    assert cfg.evaluation_chunks() == (recipe.train.get("eval_chunks") or cfg.val_chunks)


def test_the_papers_values_where_the_paper_is_explicit():
    for secs in ("5s", "10s", "20s", "30s"):
        r = load_recipe(f"maest_{secs}")
        assert (r.patchout["freq_patchout"], r.patchout["init_checkpoint"]) == (3, "required")
        masks = [r.patchout[k] for k in ("time_mask_count", "time_mask")]
        masks += [r.patchout[k] for k in ("freq_mask_count", "freq_mask")]
        assert masks == [20, 8, 5, 8], secs
        assert (r.train["epoch_samples"], r.train["balance"]) == (200000, "inverse_frequency")
    assert load_recipe("maest_5s").patchout["time_patchout"] == 15
    for name in ("won2021_teacher", "won2021_ke", "won2021_kd", "won2021_kd_released"):
        assert load_recipe(name).train["patience"] == 20, name
    for name in ("pons2018_spec_3s", "pons2018_spec_15s"):
        assert load_recipe(name).train["standardize"] == "band", name
    for name in ("pons2018_spec_3s", "pons2018_wave_3s"):
        assert load_recipe(name).train["split_variant"] == "full", name
    for name in ("pons2018_spec_3s", "pons2018_spec_15s", "pons2018_wave_3s", "pons2018_wave_15s"):
        train = load_recipe(name).train  # the paper's moving window (no chunk count to set)
        assert train["eval_window"] == "moving" and "eval_chunks" not in train, name
    # Each of those departs from the reference code, and the recipe says so.
    for name, word in (("maest_10s", "s_patchout_f"), ("won2021_teacher", "40"),
                       ("pons2018_spec_3s", "unnormalised")):  # fmt: skip
        assert any(word in d.why for d in load_recipe(name).differs), name


def test_a_key_nothing_implements_is_one_line(tmp_path, capsys):
    from tagtrain.__main__ import main

    bad = tmp_path / "maest_mine.yaml"
    base = "cite: x\ncommand: patchout\ntrain: {model: maest_10s}\n"
    for extra, message in (
        ("protocol: {mask_p: 0.2}\n", "recipe maest_mine: protocol.mask_p is not implemented"),
        ("patchout: {mask_q: 0.2}\n", "recipe maest_mine: patchout.mask_q is not implemented"),
        ("train_crop: random\n", "recipe maest_mine: train_crop is not implemented"),
        ("reported: {dataset: d, table: t, auc: 1}\n", "reported.auc is not implemented"),
        ("differs: [{paper: a, ours: b}]\n", "differs[0]"),
        ("student: {iterations: 2}\n", "a patchout recipe has no student section"),
    ):  # fmt: skip
        bad.write_text(base + extra)
        with pytest.raises(RecipeError, match=message.replace("[", r"\[")):
            load_recipe(str(bad))
    bad.write_text(base + "protocol: {mask_p: 0.2}\n")
    assert main(["train-patchout", "--recipe", str(bad), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe maest_mine: protocol.mask_p is not implemented" in err[0]
    assert main(["recipes", "--show", str(bad)]) == 2
    assert "protocol.mask_p is not implemented" in capsys.readouterr().err


def test_a_users_yaml_is_a_recipe_for_its_command(tmp_path, capsys):
    from tagtrain.__main__ import main

    mine = tmp_path / "fcn_short.yaml"
    mine.write_text(
        "cite: my variant of won2020_fcn\ncommand: train\n"
        "train: {model: fcn, epochs: 3, eval_chunks: 4, sgd_nesterov: false}\n"
        "reported: {dataset: MTAT, table: none, roc_auc: 0.9, pr_auc: null}\n"
    )
    cfg, _ = resolve(str(mine), "--out", str(tmp_path / "run"))
    # config.json names the file: the run can be traced to the variant it ran.
    assert (cfg.recipe, cfg.epochs, cfg.eval_chunks, cfg.sgd_nesterov) == (
        str(mine), 3, 4, False
    )  # fmt: skip
    assert main(["student", "--recipe", str(mine), "--data", "d", "--teacher", "t"]) == 2
    assert "recipe fcn_short is for `python -m tagtrain train`" in capsys.readouterr().err
    assert main(["recipes", "--show", str(mine)]) == 0
    shown = capsys.readouterr().out
    assert "eval_chunks: 4" in shown and "roc_auc: 0.9" in shown


def test_recipes_lists_each_papers_figures(capsys):
    from tagtrain.__main__ import main

    assert main(["recipes"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert len(lines) == len(recipe_names()) + 1
    assert "0.9005 / 0.4295" in lines["won2020_fcn"] and "Table 2" in lines["won2020_fcn"]
    assert "88.75 / 31.24" in lines["pons2018_spec_15s"]
    assert "0.9217 / 0.3889" in lines["won2021_kd"]
    assert "- / 26.1" in lines["maest_30s"]  # the paper prints mAP only
    assert "- / -" in lines["won2021_kd_released"]  # no row of the paper


def test_reported_figures_are_the_papers_rows():
    # A few rows read from the papers (../shared/papers): as printed, percent or fraction.
    expected = {
        "won2020_short_chunk_resnet": ("Table 2", 0.9129, 0.4614),
        "won2019_wave": ("Table 2", 90.66, 44.21),
        "pons2018_wave_3s": ("Table 2", 88.9, 34.18),
        "pons2018_wave_15s": ("Table 4", 87.41, 28.53),
        "won2021_teacher": ("Table 4", 0.9191, 0.3845),
        "maest_5s": ("Table 4 (segment length)", None, 21.1),
    }
    for name, (table, roc, pr) in expected.items():
        rep = load_recipe(name).reported
        assert (rep.table, rep.roc_auc, rep.pr_auc) == (table, roc, pr), name
    assert load_recipe("won2019_wave").reported.fraction("roc_auc") == pytest.approx(0.9066)
    assert "1M" not in load_recipe("pons2018_spec_15s").cite  # MSD, not the private set
    for name in recipe_names():
        rep = load_recipe(name).reported
        assert rep is not None and rep.dataset and rep.table, name


def test_fidelity_tables_are_generated_from_the_recipes(tmp_path, monkeypatch):
    from tagtrain.recipes import fidelity

    doc = fidelity.DEFAULT_PATH
    assert doc.read_text(encoding="utf-8") == fidelity.expected_document(doc), (
        "docs/FIDELITY.md's recipe tables differ from the recipes: run "
        "`python -m tagtrain recipes --fidelity docs/FIDELITY.md`"
    )
    section = fidelity.fidelity_section()
    for name in recipe_names():
        assert f"### `{name}`" in section
        for d in load_recipe(name).differs:
            assert fidelity._cell(d.why) in section, name
    # A recipe changed without the document: the check fails, --fidelity rewrites it.
    copy = tmp_path / "FIDELITY.md"
    copy.write_text(doc.read_text(encoding="utf-8"), encoding="utf-8")
    real = fidelity.recipe_markdown
    monkeypatch.setattr(
        fidelity, "recipe_markdown", lambda n: real(n).replace("freq_patchout: 3", "fp 0")
    )
    assert copy.read_text(encoding="utf-8") != fidelity.expected_document(copy)
    assert fidelity.write_fidelity(copy) is True
    assert copy.read_text(encoding="utf-8") == fidelity.expected_document(copy)
    assert "fp 0" in copy.read_text(encoding="utf-8")
    copy.write_text("no markers\n")
    with pytest.raises(RecipeError, match="no single generated recipes section"):
        fidelity.expected_document(copy)


def test_a_maest_recipe_without_its_init_weights_is_refused(tmp_path, capsys):
    from tagtrain.__main__ import main

    argv = ["train-patchout", "--recipe", "maest_10s", "--data", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0]


def test_evaluate_takes_a_recipes_evaluate_section_under_the_flags_given(tmp_path, monkeypatch):
    from tagtrain.__main__ import main
    from tagtrain.commands import evaluate as command

    mine = tmp_path / "fcn_eval.yaml"
    mine.write_text(
        "cite: my evaluation of won2020_fcn\ncommand: train\ntrain: {model: fcn}\n"
        "evaluate: {bootstrap: 7, allow_partial: true}\n"
    )
    seen = []
    monkeypatch.setattr(command, "evaluate", lambda flags: seen.append(flags) or 0)
    assert main(["evaluate", "--run", "r", "--recipe", str(mine)]) == 0
    assert main(["evaluate", "--run", "r", "--recipe", str(mine), "--bootstrap", "3"]) == 0
    assert main(["evaluate", "--run", "r"]) == 0
    assert [(f.bootstrap, f.allow_partial) for f in seen] == [(7, True), (3, True), (1000, False)]
    mine.write_text(mine.read_text() + "protocol: {eval_chunks: 8}\n")
    assert main(["evaluate", "--run", "r", "--recipe", str(mine)]) == 2
