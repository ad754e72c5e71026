"""The package as a user gets it, and the program names its command lines show.

The built wheel goes, per extra, into a FRESH venv that sees only its own site-packages
(not the shared .venv's, whose transitive packages once hid a missing declaration:
`google-crc32c`, imported by the checkpoint reader, came only with google-cloud-storage).
Its dependencies come from pip's configured index, constrained by the pins of
requirements.txt (torch 2.13.0 is the local CPU wheel; any other torch drags CUDA in).
One venv: `[train]` first, with the checks that need `[train]` alone (tagging with the
published musicnn model, a Beam job's one-line error), then `[beam]` added for the Beam
jobs' checks (`--dist loadfile` keeps this file's tests in order on one worker). Measured
here (2 shared cores): `[train]` installs in ~45 s with pip's cache warm (2.5-4 min cold),
`[beam]` adds ~20-40 s; the whole file takes ~3 min warm, ~6 min cold.

Usage lines and errors name the program the user typed: `tagkit ...` through the console
script, `python -m tagtrain` and `beam_runner.py` through theirs (the fast tests at the end,
in the checkout's venv).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests import shardkit
from tests.conftest import ROOT, run_cli

SOURCES = ("pyproject.toml", "setup.py", "README.md", "beam_runner.py")
PACKAGES = ("pipelines", "tagtrain", "manifests")
INSTALL_TIMEOUT = 900
BEAM_HINT = 'pip install "music-tagkit[beam]"'


def build_wheel(out: Path) -> Path:
    # From a copy, so that setuptools' build/ and *.egg-info never land in the checkout.
    src = out / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (out / "dist").glob("music_tagkit-*.whl")
    return wheel


def pinned_constraints(path: Path) -> Path:
    """requirements.txt's pins as a constraints file (pip refuses extras there)."""
    lines = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(re.sub(r"\[[^\]]*\]", "", line))
    path.write_text("\n".join(lines) + "\n")
    return path


def clean_env() -> dict:
    # Nothing of the checkout: the installed package alone must do.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1"}


def pip_install(python: Path, *args: str) -> float:
    """`pip install ARGS` into the venv of `python`; its duration in seconds."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
         "--disable-pip-version-check", *args],
        env=clean_env(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return time.monotonic() - start


def run(bin_dir: Path, *args: str, cwd: Path, timeout: int = 300):
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("pkg"))


@pytest.fixture(scope="module")
def train_venv(wheel, tmp_path_factory) -> Path:
    """The bin/ of a fresh venv with the wheel's `[train]` and musicnn's checkpoints."""
    tmp = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    constraints = pinned_constraints(tmp / "constraints.txt")
    seconds = pip_install(python, "-c", str(constraints), f"{wheel}[train]")
    # As README and scripts/setup.sh: the published checkpoints, without TensorFlow.
    seconds += pip_install(python, "--no-deps", "musicnn==0.1.0")
    print(f"\n[train] installed in a fresh venv in {seconds:.0f} s", file=sys.stderr)
    return python.parent


@pytest.fixture(scope="module")
def beam_venv(train_venv, wheel) -> Path:
    """The same venv with `[beam]` added (after every check of `[train]` alone)."""
    constraints = train_venv.parent.parent / "constraints.txt"
    python = train_venv / "python"
    seconds = pip_install(python, "-c", str(constraints), f"{wheel}[beam]")
    # muda requires the obsolete `pysoundfile`, whose soundfile.py overwrites the modern
    # soundfile's (no declaration can prevent it): the modern one goes back last, as
    # scripts/setup.sh does for make's .venv.
    pin = next(p for p in constraints.read_text().split() if p.startswith("soundfile=="))
    seconds += pip_install(python, "-c", str(constraints), "--force-reinstall", "--no-deps", pin)
    print(f"\n[beam] added in {seconds:.0f} s", file=sys.stderr)
    return train_venv


@pytest.mark.slow
def test_wheel_declares_extras_and_the_one_console_script(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
        entry_points = zf.read(meta.replace("METADATA", "entry_points.txt")).decode()
    assert "Name: music-tagkit" in metadata
    for extra in ("train", "beam", "cloud", "export", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "tagkit = pipelines.cli:main" in entry_points
    assert any(n.startswith("manifests/splits/mtat/") for n in names)
    assert "beam_runner.py" in names
    # Beam and Dask only with [beam]: plain tagging never needs them.
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for heavy in ("apache-beam", "dask", "distributed", "moto"):
        for line in required:
            if line.split()[1].lower().startswith(heavy):
                assert "extra ==" in line and "train" not in line.split("extra ==")[1], line


@pytest.mark.slow
def test_the_fresh_venv_has_only_what_train_declares(train_venv, tmp_path):
    probe = (
        "import importlib.util, json, sys, tagtrain\n"
        "print(json.dumps({'path': sys.path, 'tagtrain': tagtrain.__file__, "
        "'beam': importlib.util.find_spec('apache_beam') is not None}))\n"
    )
    result = run(train_venv, "python", "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout)
    shared = str(Path(sys.prefix).resolve())
    assert not [p for p in seen["path"] if p.startswith(shared)], seen["path"]
    assert seen["tagtrain"].startswith(str(train_venv.parent)), seen["tagtrain"]
    assert seen["beam"] is False  # the shared .venv has Beam: this venv must not see it


@pytest.mark.slow
def test_train_extra_requirements_are_all_satisfied_in_the_venv(train_venv, tmp_path):
    check = (
        "import importlib.metadata as md, json\n"
        "from packaging.requirements import Requirement\n"
        "bad = []\n"
        "for text in md.requires('music-tagkit'):\n"
        "    r = Requirement(text)\n"
        "    if r.marker and not r.marker.evaluate({'extra': 'train'}):\n"
        "        continue\n"
        "    try:\n"
        "        have = md.version(r.name)\n"
        "    except md.PackageNotFoundError:\n"
        "        bad.append(f'{r.name}: not installed'); continue\n"
        "    if not r.specifier.contains(have, prereleases=True):\n"
        "        bad.append(f'{r.name} {have} not in {r.specifier}')\n"
        "print(json.dumps(bad))\n"
    )
    result = run(train_venv, "python", "-c", check, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    torch = run(train_venv, "python", "-c", "import torch; print(torch.__version__)", cwd=tmp_path)
    assert torch.stdout.startswith("2.13.0"), torch.stdout + torch.stderr[-2000:]


@pytest.mark.slow
def test_pretrained_tagging_with_train_alone(train_venv, tmp_path):
    """Issue 30, item 1: `[train]` + musicnn's wheel tag a file with the published model."""
    sr = 22050
    t = np.arange(4 * sr) / sr
    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
    result = run(
        train_venv, "tagkit", "tag", "tone.wav", "--pretrained", "musicnn-mtt", "--top", "5",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = result.stdout.strip().splitlines()
    record = json.loads(line)
    assert "tone.wav" in line
    assert len(record["vocabulary"]) == 50  # MagnaTagATune's top 50
    top = record["top"]
    assert len(top) == 5
    assert all(tag in record["vocabulary"] and 0 <= p <= 1 for tag, p in top)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


@pytest.mark.slow
def test_a_beam_job_without_beam_is_one_line_naming_the_extra(train_venv, tmp_path):
    """Issue 30, item 6: before `[beam]` is installed."""
    for command in ("prepare", "perturb"):
        result = run(train_venv, "tagkit", command, "--help", cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("tagkit: error: ") and BEAM_HINT in lines[0], lines[0]
        assert "ModuleNotFoundError" not in lines[0]


@pytest.mark.slow
def test_installed_script_trains_and_tags_without_importing_beam(train_venv, tmp_path):
    installed = train_venv
    data = tmp_path / "data"
    shardkit.make_dataset(data, {"train": [4, 4], "valid": [4]}, seed=3)
    trained = run(
        installed, "tagkit", "train", "--data", str(data), "--out", str(tmp_path / "run"),
        "--model", "short_chunk_cnn", "--width", "0.125", "--epochs", "1", "--batch-size", "4",
        "--workers", "1", "--shuffle-buffer", "4", "--val-chunks", "1", "--no-progress",
        "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    rng = np.random.default_rng(0)
    sf.write(
        tmp_path / "a.wav",
        shardkit.track_audio([1], 5.0, 22050, rng).astype(np.float32),
        22050,
        subtype="PCM_16",
    )
    # The console script's code path, with a record of what it imported.
    probe = (
        "import json, sys\n"
        "from pipelines.cli import dispatch\n"
        f"code = dispatch(['tag', 'a.wav', '--run', {str(tmp_path / 'run')!r}, '--json'])\n"
        "import tagtrain\n"
        "print(json.dumps({'code': code, 'tagtrain': tagtrain.__file__, 'loaded': "
        "sorted(m for m in sys.modules if m.split('.')[0] in "
        "('apache_beam', 'dask', 'distributed', 'moto', 'muda'))}), file=sys.stderr)\n"
    )
    result = run(installed, "python", "-c", probe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stderr.strip().splitlines()[-1])
    assert record["code"] == 0
    assert record["tagtrain"].startswith(str(installed.parent)), record["tagtrain"]
    assert record["loaded"] == []
    (tagged,) = map(json.loads, result.stdout.splitlines())
    assert tagged["path"].endswith("a.wav") and tagged["seconds"] == pytest.approx(5.0, abs=0.01)
    probabilities = tagged["probabilities"]
    assert len(probabilities) == len(shardkit.VOCABULARY)
    assert all(0 < p < 1 for p in probabilities)

    # And the script itself, as a user types it.
    direct = run(installed, "tagkit", "tag", "a.wav", "--run", str(tmp_path / "run"), cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert "a.wav" in direct.stdout


@pytest.mark.slow
def test_the_installed_script_names_itself(train_venv, tmp_path):
    """Issue 30, item 7, as installed: `tagkit`, never `python -m tagtrain`."""
    shown = run(train_venv, "tagkit", "tag", "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: tagkit tag "), shown.stdout[:200]
    wrong = run(train_venv, "tagkit", "tag", "a.wav", "--no-such-flag", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("tagkit tag: error: "), wrong.stderr
    missing = run(train_venv, "tagkit", "tag", "a.wav", "--run", "no-run", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("tagkit: error: "), missing.stderr
    for result in (shown, wrong, missing):
        assert "python -m" not in result.stdout + result.stderr


@pytest.mark.slow
def test_every_subcommand_has_help(beam_venv, tmp_path):
    installed = beam_venv
    result = run(installed, "tagkit", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [
        line.split()[0] for line in result.stdout.split("commands:")[1].splitlines() if line.strip()
    ]
    for expected in ("prepare", "perturb", "manifest", "train", "evaluate", "robustness", "tag"):
        assert expected in commands
    for command in commands:
        shown = run(installed, "tagkit", command, "--help", cwd=tmp_path)
        assert shown.returncode == 0, (command, shown.stderr)
        assert "usage:" in shown.stdout, command
        assert shown.stdout.startswith(f"usage: tagkit {command}"), (command, shown.stdout[:200])
    wrong = run(installed, "tagkit", "tga", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "did you mean tag?" in wrong.stderr


@pytest.mark.slow
def test_beam_extra_runs_the_beam_jobs_help(beam_venv, tmp_path):
    for command in ("prepare", "perturb"):
        shown = run(beam_venv, "tagkit", command, "--help", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert shown.stdout.startswith(f"usage: tagkit {command} "), shown.stdout[:200]
    wrong = run(beam_venv, "tagkit", "prepare", "--manifest", "m.parquet", "--bogus", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("tagkit: error: unknown flag --bogus"), wrong.stderr


# --- program names, in the checkout (fast) ------------------------------------------------


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_tagkit_names_itself_in_usage_and_errors(capsys):
    from pipelines.cli import dispatch

    assert dispatch(["tag", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: tagkit tag ")
    assert dispatch(["manifest", "build", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: tagkit manifest build ")
    assert dispatch(["tag", "a.wav", "--no-such-flag"]) == 2
    assert _one_line(capsys).startswith("tagkit tag: error: unrecognized arguments: --no-such")
    assert dispatch(["tag", "a.wav", "--run", "no/such/run"]) == 2
    assert _one_line(capsys).startswith("tagkit: error: ")
    assert dispatch(["manifest", "vocab", "no/such.parquet"]) == 2
    assert _one_line(capsys).startswith("tagkit: error: ")


def test_tagkit_help_says_tag_takes_a_pretrained_model_too():
    from pipelines.cli import usage

    (line,) = [row for row in usage().splitlines() if row.split()[:1] == ["tag"]]
    assert "trained run" in line and "pretrained" in line, line


def test_python_m_tagtrain_names_itself_after_tagkit_ran(capsys):
    from pipelines.cli import dispatch
    from tagtrain.__main__ import main

    assert dispatch(["tag", "--help"]) == 0  # tagkit's name stays with tagkit
    capsys.readouterr()
    assert main(["tag", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m tagtrain tag ")
    assert main(["tag", "a.wav", "--no-such-flag"]) == 2
    assert _one_line(capsys).startswith("python -m tagtrain tag: error: ")
    assert main(["tag", "a.wav", "--run", "no/such/run"]) == 2
    assert _one_line(capsys).startswith("python -m tagtrain: error: ")


def test_the_module_and_beam_runner_entries_name_themselves():
    shown = run_cli("tagtrain", "tag", "--help", timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith("usage: python -m tagtrain tag "), shown.stdout[:200]
    wrong = run_cli("tagtrain", "tag", "a.wav", "--run", "no/such/run", timeout=300)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("python -m tagtrain: error: "), wrong.stderr

    shown = run_cli("beam_runner.py", "prepare", "--help", timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith("usage: beam_runner.py prepare "), shown.stdout[:200]
    wrong = run_cli("beam_runner.py", "prepare", "--manifest", "m.parquet", "--bogus", timeout=300)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("beam_runner.py: error: unknown flag --bogus"), wrong.stderr
    missing = run_cli("beam_runner.py", "prepare", timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.startswith("beam_runner.py prepare: error: "), missing.stderr
