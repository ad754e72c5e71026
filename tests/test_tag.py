"""Issue 30, item 2: one `tag` for a trained run (`--run`, here a run imported from the
seeded reference musicnn state) and a published model (`--pretrained musicnn-mtt`): the
same text by default, the same JSON lines with `--json` and `--out`, the same short-file
rule, progress never on stdout, errors named by the program."""

from __future__ import annotations

import io
import json
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtrain.__main__ import main
from tagtrain.inference.tagging import RECORD_KEYS
from tests.test_import_weights import CLIP, reference_state

HEADER = re.compile(r"^(\S+)  \(\d+:\d\d\.\d, (\d+) windows? of (\d+\.\d\d) s, (\S+)\)$")
TAG_LINE = re.compile(r"^  (.+?) +(0\.\d{3}|1\.000)$")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    short = folder / "short.wav"
    sr = 16000
    sf.write(short, 0.1 * np.sin(np.arange(int(2.5 * sr)) / 5.0), sr)  # < both windows
    return CLIP, short


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imported")
    torch.save({"state_dict": reference_state("musicnn")}, folder / "best_model.pth")
    out = folder / "run"
    argv = ["import-weights", "--from", "sota", str(folder / "best_model.pth")]
    assert main([*argv, "--model", "musicnn", "--vocabulary", "mtt", "--out", str(out)]) == 0
    return out


MODELS = {"run": lambda run_dir: ["--run", str(run_dir)], "pretrained": lambda _: [
    "--pretrained", "musicnn-mtt"]}  # fmt: skip


def tag(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["tag", *map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", sorted(MODELS))
def test_text_by_default_top_n_per_file(model, run_dir, files, capsys):
    clip, _ = files
    for extra in ([], ["--no-json"]):
        code, out, err = tag(capsys, clip, *MODELS[model](run_dir), "--top", "5", *extra)
        assert code == 0, err
        header, *rows = out.splitlines()
        match = HEADER.match(header)
        assert match and match[1] == str(clip) and int(match[2]) >= 2, header
        assert len(rows) == 5 and all(TAG_LINE.match(r) for r in rows), out
        probabilities = [float(TAG_LINE.match(r)[2]) for r in rows]
        assert probabilities == sorted(probabilities, reverse=True)
        assert "\r" not in out + err and "{" not in out


@pytest.mark.parametrize("model", sorted(MODELS))
def test_json_and_out_are_the_same_json_lines(model, run_dir, files, tmp_path, capsys):
    clip, short = files
    flags = MODELS[model](run_dir)
    code, printed, err = tag(capsys, clip, short, *flags, "--top", "3", "--json")
    assert code == 1  # the short file
    out = tmp_path / "tags.jsonl"
    code, stdout, err = tag(capsys, clip, short, *flags, "--top", "3", "--out", out)
    assert code == 1 and out.read_text() == printed
    assert stdout.strip() == f"wrote 1 of 2 files' tags to {out}"
    assert "\r" not in err
    record, error = map(json.loads, printed.splitlines())
    assert tuple(record) == RECORD_KEYS and record["path"] == str(clip)
    assert len(record["top"]) == 3 and len(record["probabilities"]) == 50
    assert len(record["taggram"]) == record["windows"] == len(record["windows_s"])
    assert np.allclose(record["probabilities"], np.mean(record["taggram"], axis=0))
    best = int(np.argmax(record["probabilities"]))
    assert record["top"][0] == [
        record["vocabulary"][best],
        pytest.approx(max(record["probabilities"])),
    ]
    assert set(error) == {"path", "model", "error"} and error["path"] == str(short)
    assert error["model"] == record["model"]
    assert re.search(r"short\.wav: 2\.50 s is shorter than one \d\.\d\d s window", error["error"])
    assert f"error: {error['error']}" in err and "1 of 2 files could not be tagged" in err


def test_both_models_give_the_same_shape_of_output(run_dir, files, tmp_path, capsys):
    clip, _ = files
    for model in sorted(MODELS):
        out = tmp_path / f"{model}.jsonl"
        assert tag(capsys, clip, *MODELS[model](run_dir), "--out", out)[0] == 0
        assert tuple(json.loads(out.read_text())) == RECORD_KEYS
        code, text, _ = tag(capsys, clip, *MODELS[model](run_dir))
        header, *rows = text.splitlines()
        assert code == 0 and len(rows) == 10 and all(TAG_LINE.match(r) for r in rows)
        named = HEADER.match(header)[4]
        assert named == ("musicnn-mtt" if model == "pretrained" else run_dir.name)
    # The short-file rule is stated in --help.
    assert main(["tag", "--help"]) == 0
    assert "shorter than one model window" in " ".join(capsys.readouterr().out.split())


def test_tag_errors_name_the_program_and_json_with_out_is_refused(run_dir, files, capsys):
    clip, _ = files
    code, _, err = tag(capsys, clip, "--pretrained", "musicnn-xyz")
    assert code == 2 and err.startswith("python -m tagtrain: error: "), err
    assert len(err.strip().splitlines()) == 1
    code, _, err = tag(capsys, clip, "--run", run_dir, "--json", "--out", "x.jsonl")
    assert code == 2 and "--json prints the JSON lines that --out writes" in err
    code, _, err = tag(capsys, clip, "--pretrained", "musicnn-mtt", "--top", "0")
    assert code == 2 and err.startswith("python -m tagtrain: error: --top must be at least 1")
    # embed --pretrained's errors too (they were prefixed `embed:`, not the program).
    argv = [
        "embed",
        str(clip),
        "--pretrained",
        "musicnn-mtt",
        "--layer",
        "nope",
        "--out",
        "e.parquet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m tagtrain: error: --layer 'nope'") and err.count("\n") == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_on_stderr_only_when_the_results_do_not_go_to_that_terminal(
    files, tmp_path, monkeypatch
):
    clip, _ = files
    argv = ["tag", str(clip), str(clip), "--pretrained", "musicnn-mtt", "--device", "cpu"]
    for extra, bar in (
        ([], False),
        (["--json"], False),
        (["--out", str(tmp_path / "t.jsonl")], True),
    ):
        out, err = Terminal(), Terminal()
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        assert main([*argv, *extra]) == 0
        monkeypatch.undo()
        assert ("file/s" in err.getvalue() or "2/2" in err.getvalue()) == bar, err.getvalue()
        assert "\r" not in out.getvalue() and "2/2" not in out.getvalue()


LONG_FILE_SCRIPT = """
import resource, sys
from pathlib import Path
from tagtrain.inference.predict import decode_windows
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
windows, seconds = decode_windows(Path(sys.argv[1]), 16000, 59049)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(windows), round(seconds), grown // 1024)
"""


def test_an_hours_long_file_is_tagged_in_bounded_memory(tmp_path):
    """A 2.2-hour file (past prepare's 2-hour decode cap, which guards jobs, not the user's
    own `tag`) is decoded block by block and held as int16: its 16 kHz PCM is 253 MB, a
    whole float decode at the file's rate and then at 16 kHz would be about 3 times that."""
    import subprocess

    path, rate, seconds = tmp_path / "long.wav", 8000, 2.2 * 3600
    t = np.arange(rate * 60) / rate
    minute = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        for _ in range(int(seconds // 60)):
            out.write(minute)
    proc = subprocess.run(
        [sys.executable, "-c", LONG_FILE_SCRIPT, str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    windows, decoded_seconds, grown_mb = map(int, proc.stdout.split())
    assert decoded_seconds == 7920
    assert windows == -(-7920 * 16000 // 59049)
    assert grown_mb < 600, grown_mb  # the int16 track (253 MB) and one block, not floats
