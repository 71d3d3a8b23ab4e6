"""FluidSynth: find the fluidsynth binary and the FluidR3_GM soundfont (errors name the package
to install), and render a MIDI file to mono float32 audio with the fluidsynth CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

SOUNDFONT_NAME = "FluidR3_GM.sf2"
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/usr/local/share/soundfonts",
                  "/usr/local/share/sounds/sf2", "/opt/homebrew/share/soundfonts")
FLUIDSYNTH_GAIN = 0.5


def find_soundfont(path: str | Path | None = None) -> str:
    """Path of the FluidR3_GM soundfont (``path`` when given). Raises FileNotFoundError naming
    the package to install when it is missing."""
    hint = ("install the Debian/Ubuntu package fluid-soundfont-gm "
            "(apt-get install -y --no-install-recommends fluid-soundfont-gm) or pass a .sf2 path")
    if path is not None:
        if Path(path).is_file():
            return str(path)
        raise FileNotFoundError(f"soundfont '{path}' does not exist: {hint}")
    for folder in SOUNDFONT_DIRS:
        candidate = Path(folder) / SOUNDFONT_NAME
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{SOUNDFONT_NAME} not found in {', '.join(SOUNDFONT_DIRS)}: {hint}")


def find_fluidsynth(executable: str = "fluidsynth") -> str:
    """Path of the fluidsynth binary; FileNotFoundError naming the package when missing."""
    found = shutil.which(executable)
    if found is None:
        raise FileNotFoundError(f"the '{executable}' binary is not on PATH: install the fluidsynth package "
                                f"(apt-get install -y --no-install-recommends fluidsynth; brew install fluid-synth)")
    return found


def render_midi(midi_path: str | Path, wav_path: str | Path, sample_rate: int, soundfont: str,
                executable: str = "fluidsynth") -> np.ndarray:
    """Render a MIDI file with the fluidsynth CLI (no reverb/chorus, gain 0.5, float WAV) ->
    mono float32 [n] at ``sample_rate``. Raises RuntimeError when fluidsynth fails."""
    cmd = [find_fluidsynth(executable), "-ni", "-q", "-R", "0", "-C", "0", "-g", str(FLUIDSYNTH_GAIN),
           "-r", str(int(sample_rate)), "-O", "float", "-o", "synth.dynamic-sample-loading=1",
           "-F", str(wav_path), str(soundfont), str(midi_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not Path(wav_path).is_file():
        raise RuntimeError(f"fluidsynth failed ({proc.returncode}) on {midi_path}: {proc.stderr.strip()[-400:]}")
    import soundfile

    audio, rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz, asked for {sample_rate} Hz")
    return audio.mean(axis=1).astype(np.float32)
