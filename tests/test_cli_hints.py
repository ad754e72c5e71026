"""Issue 30, item 9: a mistyped model gets close names, not the whole zoo; `export` writes
with `--out` like every other command (`--onnx` still read); help texts name the papers,
not the internal seed numbers."""

from __future__ import annotations

import re

import pytest

from tagtrain.__main__ import main
from tagtrain.models.registry import list_models


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_mistyped_model_gets_close_names_not_the_whole_zoo(tmp_path, capsys):
    line = one_error_line(capsys, ["train", "--data", str(tmp_path), "--model", "short_chunk_cn"])
    assert "unknown model 'short_chunk_cn' (did you mean short_chunk_cnn" in line, line
    assert "maest_10s" not in line and len(line) < 200, line
    line = one_error_line(capsys, ["train", "--data", str(tmp_path), "--model", "zzz"])
    assert "did you mean" not in line
    assert f"`models` lists the {len(list_models())} models" in line


def test_export_writes_with_out_and_still_reads_onnx(tmp_path, capsys):
    pytest.importorskip("onnx")
    for flag in ("--out", "--onnx"):
        out = tmp_path / f"published{flag}.onnx"
        assert main(["export", "--pretrained", "musicnn-mtt", flag, str(out)]) == 0
        assert out.stat().st_size > 1_000_000 and f"wrote {out}" in capsys.readouterr().out
    assert main(["export", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--out FILE.onnx" in shown and "--onnx" not in shown
    line = one_error_line(capsys, ["export", "--pretrained", "musicnn-mtt"])
    assert line.endswith("the following arguments are required: --out")
    line = one_error_line(capsys, ["export", "--run", "r", "--out", str(tmp_path / "x.txt")])
    assert "--out must name a .onnx file" in line


COMMANDS = ["train", "student", "train-patchout", "evaluate", "robustness", "tag", "embed"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_papers_not_seed_numbers(command, capsys):
    assert main([command, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"seed[ -]?00\d", shown, re.IGNORECASE), command


def test_the_model_zoo_names_papers_not_seed_numbers(capsys):
    assert main(["models"]) == 0
    assert not re.search(r"seed[ -]?00\d", capsys.readouterr().out, re.IGNORECASE)
