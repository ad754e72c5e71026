#!/usr/bin/env bash
# Installs what the project needs: the system audio tools, then a .venv with the pinned
# requirements. Idempotent: a second run with nothing to do finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg sox libsox-fmt-mp3 rubberband-cli fluidsynth fluid-soundfont-gm chromium)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing system packages: ${missing[*]}" >&2
    echo "setup: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
echo "setup: creating .venv with the pinned requirements (first run takes a few minutes)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# muda depends on the obsolete `pysoundfile`, whose soundfile.py overwrites the modern
# soundfile module: reinstall the pinned modern one last so it wins.
sf_pin=$(grep -E '^soundfile==' requirements.txt)
.venv/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps "$sf_pin"
# musicnn's wheel carries the published MTT/MSD checkpoints (ISC licence); --no-deps keeps
# TensorFlow out: tagtrain reads the checkpoints itself.
.venv/bin/pip install -q --disable-pip-version-check --no-deps musicnn==0.1.0
# Editable install of our own packages: Beam and Dask worker processes import them from
# any working directory.
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python - <<'PY'
import soundfile, muda  # noqa: F401
assert soundfile.__version__.startswith("0.14"), f"old soundfile {soundfile.__version__} won"
PY
echo "$want" > "$stamp"
echo "setup: done"
