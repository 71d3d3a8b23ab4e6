"""Prompt adherence without a joint text-audio model (METHOD.md section 6, RESOURCES.md): the
tempo and key a clip is heard in, estimated from the audio, against what its caption asks for.

- tempo: an onset-strength envelope (half-wave rectified log-mel flux), autocorrelated over lags
  of 40-240 BPM and weighted by a log-normal tempo prior around 120 BPM (one octave wide);
  errors are reported raw and octave-folded (the nearest of bpm/2, bpm, 2 bpm), since beat level is
  ambiguous even for listeners.
- key: a chroma vector (spectral energy folded onto the 12 pitch classes between 55 Hz and 2 kHz)
  correlated with the Krumhansl-Kessler major and minor profiles in all 12 transpositions.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torchaudio

PITCH_CLASSES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
_ALIASES = {"Db": "C#", "D#": "Eb", "Gb": "F#", "G#": "Ab", "A#": "Bb", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _mono(audio, sample_rate: int, target: int) -> torch.Tensor:
    wav = torch.as_tensor(np.array(audio, dtype=np.float32))  # a copy: arrays from Ray are read-only
    if wav.ndim == 2:
        wav = wav.mean(0)
    if wav.ndim != 1 or wav.numel() == 0:
        raise ValueError(f"audio must be a non-empty mono [n] or [channels, n] array, got {tuple(wav.shape)}")
    return torchaudio.functional.resample(wav, sample_rate, target) if sample_rate != target else wav


def onset_envelope(audio, sample_rate: int, *, rate: int = 16000, hop: int = 256) -> tuple[np.ndarray, float]:
    """(onset strength per frame [F], frames per second)."""
    wav = _mono(audio, sample_rate, rate)
    mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=1024, hop_length=hop, n_mels=64)(wav)
    log_mel = torch.log(mel + 1e-6)
    flux = torch.clamp(log_mel[:, 1:] - log_mel[:, :-1], min=0).mean(0)
    return flux.numpy().astype(np.float64), rate / hop


def estimate_tempo(audio, sample_rate: int, *, prior_bpm: float = 120.0, prior_octaves: float = 1.0,
                   lo: float = 40.0, hi: float = 240.0) -> float:
    """Tempo in BPM of a clip (see the module docstring)."""
    env, fps = onset_envelope(audio, sample_rate)
    env = env - env.mean()
    if len(env) < 8 or not np.any(env):
        raise ValueError("the clip is too short or silent to estimate a tempo")
    ac = np.correlate(env, env, mode="full")[len(env) - 1:]
    lags = np.arange(1, len(ac))
    bpm = 60.0 * fps / lags
    ok = (bpm >= lo) & (bpm <= hi)
    if not ok.any():
        raise ValueError("the clip is too short for the tempo range")
    weight = np.exp(-0.5 * (np.log2(bpm[ok] / prior_bpm) / prior_octaves) ** 2)
    score = ac[1:][ok] * weight
    best = int(np.argmax(score))
    # parabolic refinement around the best lag
    lag = lags[ok][best]
    if 1 < lag < len(ac) - 1:
        a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
        denom = a - 2 * b + c
        lag = lag + (0.5 * (a - c) / denom if denom != 0 else 0.0)
    return float(60.0 * fps / lag)


def tempo_errors(estimated: float, target: float) -> dict[str, float]:
    """{"tempo_err_bpm": |est - target|, "tempo_err_octave_bpm": nearest of est/2, est, 2 est}."""
    folded = min(abs(estimated * f - target) for f in (0.5, 1.0, 2.0))
    return {"tempo_err_bpm": abs(estimated - target), "tempo_err_octave_bpm": folded}


def chroma(audio, sample_rate: int, *, rate: int = 16000, n_fft: int = 4096) -> np.ndarray:
    """Energy per pitch class [12] (C first), normalised to sum 1."""
    wav = _mono(audio, sample_rate, rate)
    spec = torch.stft(wav, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    power = spec.abs().pow(2).mean(1).numpy()
    freqs = np.arange(power.shape[0]) * rate / n_fft
    band = (freqs >= 55.0) & (freqs <= 2000.0)
    pcs = np.round(69 + 12 * np.log2(freqs[band] / 440.0)).astype(int) % 12
    out = np.bincount(pcs, weights=power[band], minlength=12)
    total = out.sum()
    if total <= 0:
        raise ValueError("the clip is silent between 55 Hz and 2 kHz: no key to estimate")
    return out / total


def key_correlation(chroma_vector: np.ndarray, key: str) -> float:
    """Correlation of a chroma vector [12] with the rotated profile of ``key`` ("<tonic> <mode>")."""
    tonic, mode = normalise_key(key).split()
    profile = MAJOR if mode == "major" else MINOR
    return float(np.corrcoef(chroma_vector, np.roll(profile, PITCH_CLASSES.index(tonic)))[0, 1])


def estimate_key(audio, sample_rate: int) -> tuple[str, float]:
    """("<tonic> major|minor", correlation) of the best-matching rotated key profile."""
    c = chroma(audio, sample_rate)
    keys = [f"{t} {mode}" for t in PITCH_CLASSES for mode in ("major", "minor")]
    scores = [key_correlation(c, k) for k in keys]
    best = int(np.argmax(scores))
    return keys[best], scores[best]


def normalise_key(name: str) -> str:
    """"G major", "f# minor", "Bb Major" -> canonical "<tonic> <mode>" (enharmonics merged)."""
    m = re.fullmatch(r"\s*([A-Ga-g])([#b\-]?)\s+(major|minor)\s*", name, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"not a key name: {name!r}")
    tonic = m.group(1).upper() + m.group(2).replace("-", "b")
    tonic = _ALIASES.get(tonic, tonic)
    return f"{tonic} {m.group(3).lower()}"


def caption_bpm(caption: str) -> float | None:
    """The "<n> BPM" a caption asks for, if any."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*BPM", caption, flags=re.IGNORECASE)
    return float(m.group(1)) if m else None


def caption_key(caption: str) -> str | None:
    """The "<tonic> major|minor" a caption names, if any (canonical form)."""
    m = re.search(r"\b([A-G][#b\-]?)\s+(major|minor)\b", caption)
    return normalise_key(f"{m.group(1)} {m.group(2)}") if m else None


def adherence(audio, sample_rate: int, caption: str, bpm: float | None = None) -> dict[str, float]:
    """Tempo and key agreement of one clip with its caption; keys absent when the caption does not
    name a tempo or key. key_match: 1.0 when the estimated key is the caption's, else 0.0;
    key_correlation: how well the clip's chroma fits the caption's key profile. ``bpm`` overrides
    the caption's tempo (e.g. the prompt's own BPM field)."""
    out: dict[str, float] = {}
    bpm = caption_bpm(caption) if bpm is None or not np.isfinite(bpm) else float(bpm)
    if bpm is not None:
        est = estimate_tempo(audio, sample_rate)
        out.update({"tempo_bpm": est, **tempo_errors(est, bpm)})
    key = caption_key(caption)
    if key is not None:
        est_key, _ = estimate_key(audio, sample_rate)
        out.update({"key_match": float(est_key == key),
                    "key_correlation": key_correlation(chroma(audio, sample_rate), key)})
    return out


# Instrument agreement. MagnaTagATune's tags name few instruments, and musicnn confuses those
# within a family (a FluidSynth piano tags as "guitar", a cello as "violin"), so agreement is
# scored per family: the family of the clip's strongest instrument tag against the families of
# the instruments its caption names. Instruments without an MTT family (brass, reeds) are not scored.
TAG_FAMILIES = {
    "keys and plucked": ("piano", "harpsichord", "guitar", "harp", "sitar"),
    "bowed strings": ("violin", "cello", "strings"),
    "flutes": ("flute",),
    "voices": ("choir", "choral", "vocal", "vocals", "voice", "singing"),
}
INSTRUMENT_FAMILIES = {
    "keys and plucked": ("piano", "harpsichord", "celesta", "music box", "vibraphone", "marimba", "dulcimer",
                         "classical guitar", "acoustic guitar", "guitar", "harp", "banjo", "sitar", "pizzicato strings"),
    "bowed strings": ("violin", "viola", "cello", "double bass", "strings", "fiddle"),
    "flutes": ("flute", "piccolo", "recorder", "pan flute", "tin whistle", "ocarina"),
    "voices": ("choir", "voices"),
}


def caption_families(caption: str) -> set[str]:
    """Instrument families named in a caption (longest instrument names matched first)."""
    text = caption.lower()
    found = set()
    names = sorted(((n, fam) for fam, ns in INSTRUMENT_FAMILIES.items() for n in ns), key=lambda x: -len(x[0]))
    for name, family in names:
        pattern = rf"\b{re.escape(name)}s?\b"
        if re.search(pattern, text):
            found.add(family)
            text = re.sub(pattern, " ", text)
    return found


def tag_family(tag_probs, tag_names) -> str:
    """The family of the strongest instrument tag: tag_probs [50] (mean over patches)."""
    probs = dict(zip(tag_names, np.asarray(tag_probs, dtype=np.float64)))
    best = max(((probs[t], fam) for fam, tags in TAG_FAMILIES.items() for t in tags if t in probs))
    return best[1]


def instrument_match(tag_probs, tag_names, caption: str) -> float | None:
    """1.0 when the clip's strongest instrument-tag family is one the caption names, 0.0 when not,
    None when the caption names no scorable instrument."""
    families = caption_families(caption)
    if not families:
        return None
    return float(tag_family(tag_probs, tag_names) in families)


ADHERENCE_KEYS = (("tempo_err_bpm", "tempo_err_bpm"), ("tempo_err_octave_bpm", "tempo_err_octave_bpm"),
                  ("key_match", "key_acc"), ("instrument_match", "instrument_acc"))


def adherence_metrics(audio: list, sample_rate: int, captions: list[str], bpms: list[float | None],
                      tag_probs: list | None = None, tag_names=None) -> dict[str, float]:
    """Mean prompt adherence over clips: tempo_err_bpm, tempo_err_octave_bpm, key_acc and (with
    per-clip tag probabilities [K] from an embedder with ``tag_names``) instrument_acc; each key only
    when some caption states what it measures. ``audio``: clips [N] at ``sample_rate``."""
    scores = [adherence(w, sample_rate, c, b) for w, c, b in zip(audio, captions, bpms)]
    if tag_probs is not None:
        for score, probs, caption in zip(scores, tag_probs, captions):
            match = instrument_match(probs, tag_names, caption)
            if match is not None:
                score["instrument_match"] = match
    out = {}
    for key, name in ADHERENCE_KEYS:
        values = [s[key] for s in scores if key in s]
        if values:
            out[name] = float(np.mean(values))
    return out
