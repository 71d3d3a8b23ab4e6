"""Latent codecs: waveform [B, n] <-> latent frames [B, C, T].

The diffusion model works on the frames a codec produces. Two codecs are offered:

- :class:`MelCodec` (the default, no weights): log-magnitude mel frames. Decoding inverts the mel
  filterbank with non-negative least squares and recovers phase with torchaudio's Griffin-Lim.
- :class:`VAECodec`: an adapter for a pretrained codec exported as TorchScript to a folder.

Per-channel normalisation to ``sigma_data`` is not a codec's job: the dataset stores the latent
mean/std and normalises (METHOD.md section 1).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Iterator

import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

from presto_ray.config import CodecConfig

LOG_FLOOR = 1e-5  # magnitude floor before the log: silence -> log(1e-5) = -11.5 (-100 dB)
MEL_POWER = 1.0  # mel of the STFT magnitude (power 1): measured to invert better than power 2
GRIFFIN_LIM_SEED = 0
GRIFFIN_LIM_MOMENTUM = 0.99


class Codec(abc.ABC):
    """A waveform <-> latent codec.

    Attributes: ``sample_rate`` (Hz), ``channels`` (latent channels C), ``frame_rate`` (latent
    frames per second), ``hop_length`` (samples per latent frame). Codecs are frozen: encode/decode
    run without gradients, on the device of their input.
    """

    sample_rate: int
    channels: int
    frame_rate: float
    hop_length: int

    @abc.abstractmethod
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, n] or [n] float in [-1, 1] -> latent [B, C, T] float32, T = frames_for(n)."""

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, C, T] -> wav [B, samples_for(T)] float32."""

    def frames_for(self, num_samples: int) -> int:
        """Number of latent frames T that ``encode`` gives for ``num_samples`` samples: n // hop."""
        return int(num_samples) // self.hop_length

    def samples_for(self, num_frames: int) -> int:
        """Number of samples that ``decode`` gives for ``num_frames`` latent frames: T * hop."""
        return int(num_frames) * self.hop_length

    @abc.abstractmethod
    def identity(self) -> dict:
        """Name and settings (JSON-serialisable), recorded in manifests and checkpoints."""


def _as_batch(wav: torch.Tensor) -> torch.Tensor:
    """wav: [n] or [B, n] -> [B, n] float32."""
    if not torch.is_tensor(wav):
        raise TypeError(f"wav must be a torch.Tensor, got {type(wav).__name__}")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"wav must be [B, n] or [n], got shape {tuple(wav.shape)}")
    return wav.float()


def _check_latent(latent: torch.Tensor, channels: int) -> torch.Tensor:
    """latent: [B, C, T] with C == channels -> float32."""
    if latent.dim() != 3 or latent.shape[1] != channels:
        raise ValueError(f"latent must be [B, {channels}, T], got shape {tuple(latent.shape)}")
    return latent.float()


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the default generator of ``device`` inside the block; restore every RNG state after."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield


def nnls_inverse_mel(fb: torch.Tensor, mel: torch.Tensor, iters: int) -> torch.Tensor:
    """Non-negative least-squares inverse of a mel filterbank by multiplicative updates.

    Minimises ||fb^T spec - mel||^2 subject to spec >= 0, starting from the back-projection
    fb @ mel (Lee-Seung updates keep every entry non-negative).
    fb: [F, M] filterbank (as torchaudio builds it); mel: [B, M, T] >= 0 -> spec [B, F, T] >= 0.

    Unlike the unconstrained least-squares solution with negatives clipped (torchaudio
    InverseMelScale), which smears a tone across its whole mel band, the non-negative solution
    concentrates energy where the band ratios put it (tests measure both).
    """
    back = fb @ mel  # [B, F, T]
    spec = back
    for _ in range(iters):
        spec = spec * back / (fb @ (fb.T @ spec)).clamp_min(1e-20)
    return spec


class MelCodec(Codec):
    """Log-magnitude mel frames; the default codec, which needs no weights.

    encode: wav [B, n] -> log(max(mel(|STFT|), 1e-5)) [B, n_mels, n // hop_length] (centred STFT,
    Hann window, HTK mel scale, power 1; the trailing centre frame is dropped so that
    T = n // hop_length exactly). decode: exp -> non-negative inverse mel (``inverse_iters``
    multiplicative updates; 0 selects torchaudio's InverseMelScale, lstsq then clip) -> Griffin-Lim
    (``cfg.griffin_lim_iters`` iterations, momentum 0.99, random phase drawn from a fixed seed) ->
    exactly T * hop_length samples.

    A coarse mel (32 bands) places a tone only as precisely as its band ratios allow: tones a band
    apart are resolved, tones within one band merge.
    """

    def __init__(self, cfg: CodecConfig, inverse_iters: int = 100):
        if cfg.hop_length <= 0 or cfg.n_fft <= 0 or cfg.n_mels <= 0:
            raise ValueError(f"codec.hop_length, codec.n_fft and codec.n_mels must be positive, got {cfg}")
        if cfg.hop_length > cfg.n_fft:
            raise ValueError(f"codec.hop_length={cfg.hop_length} exceeds codec.n_fft={cfg.n_fft}: "
                             "Griffin-Lim needs overlapping frames")
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.n_mels
        self.hop_length = cfg.hop_length
        self.frame_rate = cfg.sample_rate / cfg.hop_length
        self.f_max = float(cfg.f_max) if cfg.f_max is not None else cfg.sample_rate / 2
        if not 0 <= cfg.f_min < self.f_max <= cfg.sample_rate / 2:
            raise ValueError(f"need 0 <= codec.f_min < f_max <= sample_rate/2, got f_min={cfg.f_min}, "
                             f"f_max={self.f_max}, sample_rate={cfg.sample_rate}")
        self.inverse_iters = inverse_iters
        self._mel = AT.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, f_min=cfg.f_min,
            f_max=self.f_max, n_mels=cfg.n_mels, power=MEL_POWER, center=True, pad_mode="reflect",
            mel_scale="htk",
        )
        self._inverse_lstsq = AT.InverseMelScale(
            cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min, self.f_max, driver="gelsd"
        )
        self._window = torch.hann_window(cfg.n_fft)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, n] or [n] float in [-1, 1] -> log-mel [B, n_mels, n // hop_length] float32.

        Needs n > n_fft // 2 (the reflect padding of the centred STFT).
        """
        wav = _as_batch(wav)
        n = wav.shape[-1]
        if n <= self.cfg.n_fft // 2:
            raise ValueError(f"MelCodec.encode needs more than n_fft // 2 = {self.cfg.n_fft // 2} samples, got {n}")
        mel = self._mel.to(wav.device)(wav)[..., : self.frames_for(n)]  # [B, M, T]
        return torch.log(mel.clamp_min(LOG_FLOOR))

    def _inverse_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: [B, M, T] magnitudes -> linear magnitude spectrogram [B, n_fft // 2 + 1, T]."""
        if self.inverse_iters > 0:
            fb = self._inverse_lstsq.fb.to(mel.device)  # [F, M]
            return nnls_inverse_mel(fb, mel, self.inverse_iters)
        return self._inverse_lstsq(mel.cpu()).to(mel.device)  # lstsq with the gelsd driver is CPU-only

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, n_mels, T] log-mel -> wav [B, T * hop_length] float32 (deterministic)."""
        latent = _check_latent(latent, self.channels)
        num_frames = latent.shape[-1]
        # A magnitude frame of unit-bounded audio never exceeds the window sum (n_fft / 2), so
        # clamping to that range loses nothing real and keeps a poor sample from overflowing exp.
        latent = latent.nan_to_num(nan=math.log(LOG_FLOOR)).clamp(math.log(LOG_FLOOR), math.log(self.cfg.n_fft / 2))
        spec = self._inverse_mel(latent.exp())  # [B, F, T]
        # The encoder dropped the trailing centre frame; repeat the last one so that an STFT of
        # T * hop samples (T + 1 centred frames) matches during Griffin-Lim.
        spec = torch.cat([spec, spec[..., -1:]], dim=-1)
        with _seeded_rng(spec.device, GRIFFIN_LIM_SEED):
            wav = AF.griffinlim(
                spec, self._window.to(spec.device), self.cfg.n_fft, self.hop_length, self.cfg.n_fft,
                MEL_POWER, self.cfg.griffin_lim_iters, GRIFFIN_LIM_MOMENTUM,
                self.samples_for(num_frames), True,
            )
        return wav.float()

    def identity(self) -> dict:
        """{"name": "mel", sample_rate, n_fft, hop_length, n_mels, f_min, f_max, ...}."""
        return {
            "name": "mel", "sample_rate": self.sample_rate, "n_fft": self.cfg.n_fft,
            "hop_length": self.hop_length, "n_mels": self.channels, "f_min": self.cfg.f_min,
            "f_max": self.f_max, "mel_scale": "htk", "power": MEL_POWER, "log_floor": LOG_FLOOR,
            "channels": self.channels, "frame_rate": self.frame_rate,
            "griffin_lim_iters": self.cfg.griffin_lim_iters, "inverse_iters": self.inverse_iters,
        }


VAE_KEYS = ("sample_rate", "channels", "frame_rate")


class VAECodec(Codec):
    """Adapter for a pretrained codec in a folder: ``codec.pt`` (TorchScript, loaded with
    torch.jit.load, never unpickled) exposing ``encode(wav [B, n]) -> [B, C, T]`` and
    ``decode(latent [B, C, T]) -> wav [B, n] or [B, 1, n]``, plus ``codec.json`` with
    ``sample_rate``, ``channels`` and ``frame_rate``. The hop sample_rate / frame_rate must be a
    whole number of samples; frames_for(n) = n // hop, samples_for(T) = T * hop, and decoded audio
    is trimmed or zero-padded to samples_for(T) (a codec off by more than one hop is an error).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(f"codec folder '{self.path}' does not exist (codec.path)")
        meta_file = self.path / "codec.json"
        module_file = self.path / "codec.pt"
        for file in (meta_file, module_file):
            if not file.is_file():
                raise FileNotFoundError(f"codec folder '{self.path}' has no {file.name} (expected {file})")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_file}: not valid JSON: {err}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file}: must hold a JSON object with keys {list(VAE_KEYS)}")
        for key in VAE_KEYS:
            if key not in meta:
                raise ValueError(f"{meta_file}: missing key '{key}' (needs {list(VAE_KEYS)})")
        self.sample_rate = int(meta["sample_rate"])
        self.channels = int(meta["channels"])
        self.frame_rate = float(meta["frame_rate"])
        if self.sample_rate <= 0 or self.channels <= 0 or self.frame_rate <= 0:
            raise ValueError(f"{meta_file}: sample_rate, channels and frame_rate must be positive, got {meta}")
        hop = self.sample_rate / self.frame_rate
        if abs(hop - round(hop)) > 1e-6 * hop:
            raise ValueError(f"{meta_file}: sample_rate / frame_rate = {hop} is not a whole number of samples")
        self.hop_length = int(round(hop))
        try:
            self.module = torch.jit.load(str(module_file), map_location="cpu").eval()
        except Exception as err:  # noqa: BLE001 - torch raises several types for a non-TorchScript file
            raise ValueError(f"{module_file}: not a TorchScript module (save one with "
                             f"torch.jit.script(model).save(...)): {str(err).splitlines()[0]}") from None
        for method in ("encode", "decode"):
            if not hasattr(self.module, method):
                raise ValueError(f"{module_file}: the TorchScript module has no '{method}' method "
                                 "(mark it with @torch.jit.export)")
        self._sha256: str | None = None

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: [B, n] or [n] -> latent [B, C, T] float32 from the scripted ``encode``."""
        wav = _as_batch(wav)
        latent = self.module.to(wav.device).encode(wav)
        if latent.dim() != 3 or latent.shape[:2] != (wav.shape[0], self.channels):
            raise ValueError(f"{self.path / 'codec.pt'}: encode returned shape {tuple(latent.shape)}, "
                             f"expected [{wav.shape[0]}, {self.channels}, T]")
        return latent.float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, C, T] -> wav [B, T * hop_length] float32 from the scripted ``decode``."""
        latent = _check_latent(latent, self.channels)
        wav = self.module.to(latent.device).decode(latent)
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() != 2 or wav.shape[0] != latent.shape[0]:
            raise ValueError(f"{self.path / 'codec.pt'}: decode returned shape {tuple(wav.shape)}, "
                             f"expected [{latent.shape[0]}, n]")
        n = self.samples_for(latent.shape[-1])
        if abs(wav.shape[-1] - n) > self.hop_length:
            raise ValueError(f"{self.path / 'codec.pt'}: decode returned {wav.shape[-1]} samples for "
                             f"{latent.shape[-1]} frames, expected about {n}")
        if wav.shape[-1] >= n:
            return wav[..., :n].float()
        return torch.nn.functional.pad(wav, (0, n - wav.shape[-1])).float()

    def sha256(self) -> str:
        """Content hash of codec.pt (computed once)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.path / "codec.pt", "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def identity(self) -> dict:
        """{"name": "vae", path, sha256 of codec.pt, sample_rate, channels, frame_rate, hop_length}."""
        return {
            "name": "vae", "path": str(self.path.resolve()), "sha256": self.sha256(),
            "sample_rate": self.sample_rate, "channels": self.channels, "frame_rate": self.frame_rate,
            "hop_length": self.hop_length,
        }


def load_codec(cfg: CodecConfig) -> Codec:
    """The codec ``cfg`` names: ``mel`` -> MelCodec(cfg); ``vae`` -> VAECodec(cfg.path);
    ``oobleck`` -> the VAE of the Stable Audio teacher folder cfg.path (local or s3://). A codec with
    weights must run at codec.sample_rate (the rate audio is prepared at)."""
    if cfg.name == "mel":
        return MelCodec(cfg)
    if cfg.name not in ("vae", "oobleck"):
        raise ValueError(f"unknown codec.name '{cfg.name}' (expected 'mel', 'vae' or 'oobleck')")
    if cfg.path is None:
        needs = "a folder with codec.pt and codec.json" if cfg.name == "vae" else "a Stable Audio teacher folder"
        raise ValueError(f"codec.name='{cfg.name}' needs codec.path: {needs}")
    if cfg.name == "vae":
        codec: Codec = VAECodec(cfg.path)
        where = str(codec.path / "codec.json")
    else:
        from presto_ray.models.stable_audio_folder import load_oobleck_codec

        codec, where = load_oobleck_codec(cfg.path), f"{cfg.path}/vae/config.json"
    if codec.sample_rate != cfg.sample_rate:
        raise ValueError(f"codec.sample_rate={cfg.sample_rate} differs from the sample_rate "
                         f"{codec.sample_rate} in {where}")
    return codec
