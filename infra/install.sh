#!/usr/bin/env bash
# Install everything presto_ray needs on a fresh Debian/Ubuntu machine (system packages too), then
# run the embedded-default quickstart. Usage: bash infra/install.sh [--skip-quickstart] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

run_quickstart=1
out=quickstart
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-quickstart) run_quickstart=0 ;;
    --out) out="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  echo "==> system packages (FluidSynth + General MIDI soundfont, libsndfile)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    fluidsynth fluid-soundfont-gm libsndfile1 >/dev/null
else
  echo "apt-get not found: install fluidsynth and a General MIDI soundfont yourself" >&2
fi

echo "==> Python packages (torch/torchaudio 2.11, Ray 2.60, DeepSpeed, transformers, ...)"
python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e ".[test]"

if [ "$run_quickstart" = 1 ]; then
  echo "==> presto-ray quickstart --out $out"
  presto-ray quickstart --out "$out"
fi
