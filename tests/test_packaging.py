"""The package as a user gets it: build the wheel, install it with `[train]` into a fresh
venv, then train a tiny run and tag a file through the `tagkit` console script, without
Beam ever being imported.

Offline install: the project's dependencies are not available as wheel files here (the
shared venv was installed from the network; pip's cache holds HTTP responses, not a
`--find-links` directory), so a `--no-index --find-links` resolution of `[train]` cannot
be done. Instead the throwaway venv sees the shared venv's site-packages (the equivalent
of `--system-site-packages`, which would point at the bare interpreter because the shared
venv is itself a venv), the wheel goes in with `--no-deps`, and the test checks that
every requirement the wheel declares for `[train]` is satisfied there, so a missing or
wrong declaration still fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests import shardkit
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "setup.py", "README.md", "beam_runner.py")
PACKAGES = ("pipelines", "tagtrain", "manifests")


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


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # A bare path line: the shared site-packages joins sys.path after the venv's own, and
    # its .pth files (the checkout's editable install) are not processed.
    (Path(site) / "shared_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    wheel = build_wheel(tmp)
    python = make_venv(tmp / "venv")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
         "--no-deps", "--disable-pip-version-check", f"{wheel}[train]"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return tmp / "venv" / "bin"


def clean_env() -> dict:
    # Nothing of the checkout: the installed package alone must do.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1"}


def run(bin_dir: Path, *args: str, cwd: Path, timeout: int = 300):
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_declares_extras_and_the_one_console_script(installed, tmp_path):
    (wheel,) = (installed.parent.parent / "dist").glob("*.whl")
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


def test_train_extra_requirements_are_all_satisfied_in_the_venv(installed, tmp_path):
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
    result = run(installed, "python", "-c", check, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_every_subcommand_has_help(installed, tmp_path):
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
    wrong = run(installed, "tagkit", "tga", cwd=tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "did you mean tag?" in wrong.stderr


def test_installed_script_trains_and_tags_without_importing_beam(installed, tmp_path):
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
    (tagged,) = json.loads(result.stdout)
    assert tagged["file"].endswith("a.wav") and tagged["seconds"] == pytest.approx(5.0, abs=0.01)
    probabilities = [t["probability"] for t in tagged["tags"]]
    assert len(probabilities) == len(shardkit.VOCABULARY)
    assert all(0 < p < 1 for p in probabilities)

    # And the script itself, as a user types it.
    direct = run(installed, "tagkit", "tag", "a.wav", "--run", str(tmp_path / "run"), cwd=tmp_path)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert "a.wav" in direct.stdout
