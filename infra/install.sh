#!/usr/bin/env bash
# Install everything presto_ray needs on a fresh Debian/Ubuntu machine (system packages too) into a
# project virtual environment (.venv), then run the embedded-default quickstart.
#   bash infra/install.sh [--skip-quickstart] [--out DIR]
# PYTHON picks the base interpreter (default python3, must be >= 3.11). The venv sees the base
# interpreter's packages (--system-site-packages), so a torch that is already installed is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

run_quickstart=1
out=quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-quickstart) run_quickstart=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "presto_ray needs Python >= 3.11; '$PY' is $("$PY" --version 2>&1 || echo missing). Set PYTHON=..." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  echo "==> system packages: FluidSynth, two General MIDI soundfonts, libsndfile, headless Chromium (report test)"
  pkgs="fluidsynth fluid-soundfont-gm timgm6mb-soundfont libsndfile1 chromium-headless-shell"
  "$PY" -m venv --help >/dev/null 2>&1 || pkgs="$pkgs python3-venv"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
else
  echo "apt-get not found: install fluidsynth and a General MIDI soundfont with your package manager" >&2
fi

VENV="${PRESTO_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> virtual environment $VENV (from $("$PY" --version))"
  "$PY" -m venv --system-site-packages "$VENV"
fi
echo "==> Python packages: torch/torchaudio 2.11, Ray 2.60, DeepSpeed 0.19, transformers, ... (several GB once)"
"$VENV/bin/python" -m pip install -q -e ".[test]"
echo "==> musicnn 0.1.0 (pretrained MTT_musicnn weights for the evaluation embedding; --no-deps: its metadata pins numpy<1.17)"
"$VENV/bin/python" -m pip install -q --no-deps musicnn==0.1.0

if [ "$run_quickstart" = 1 ]; then
  echo "==> presto-ray quickstart --out $out"
  "$VENV/bin/presto-ray" quickstart --out "$out"
  echo "done: activate the environment with 'source $VENV/bin/activate'"
fi
