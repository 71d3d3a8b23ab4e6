"""Pure-PyTorch port of musicnn's ``MTT_musicnn`` tagger (Pons & Serra, ISC licence) as an evaluation
embedding: 200-d penultimate features and 50 MagnaTagATune tag probabilities per 3-s patch.

The weights are read, without TensorFlow, from the TF1 checkpoint shipped inside the ``musicnn`` wheel
(``pip install --no-deps musicnn==0.1.0``; its metadata pins numpy<1.17, hence ``--no-deps``). The
network follows ``musicnn/models.py::build_musicnn`` and the input pipeline ``musicnn/extractor.py``:

* audio at 16 kHz mono (other rates are resampled with torchaudio; musicnn itself lets librosa.load
  resample with soxr, so resampled inputs match it only approximately);
* librosa's mel power spectrogram: n_fft 512, hop 256, periodic Hann window, ``center=True`` with
  zero (``constant``) padding (librosa 0.10 default), power 2, 96 Slaney-scale bands over 0-8 kHz
  with Slaney area normalisation;
* musicnn's quirk of casting the mel power to float16 before ``log10(10000 x + 1)`` (computed in
  float32, as numpy 1.x does), reproduced so that the features match the reference;
* non-overlapping patches of 187 frames (3 s); a trailing partial patch is dropped, as musicnn does.

Verified against the TF reference (``benchmarks/musicnn_reference.py`` ->
``tests/fixtures/musicnn_reference.npz``, checked by ``tests/test_musicnn.py``).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from presto_ray.eval.tf_bundle import read_tf_bundle

__all__ = ["MTT_TAGS", "MusicnnEmbedder", "MusicnnNet", "musicnn_checkpoint_prefix", "log_mel"]

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default

# musicnn/configuration.py MTT_LABELS, in output order.
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird",
    "country", "metal", "female voice", "choral",
)  # fmt: skip

# Windowed-sinc settings closest to librosa.load's soxr_hq on the reference sweep (22.05 -> 16 kHz):
# the spectra agree within ~1e-3 log-mel below ~7.3 kHz; the top two mel bands (near the new Nyquist)
# depend on each resampler's transition band and differ by up to ~0.07 log-mel.
_RESAMPLE_KW = dict(
    lowpass_filter_width=96, rolloff=0.955, resampling_method="sinc_interp_kaiser", beta=14.769656459379492
)

_INSTALL_HINT = "pip install --no-deps musicnn==0.1.0"


def musicnn_checkpoint_prefix(model: str = "MTT_musicnn") -> str:
    """Checkpoint prefix of ``model`` inside the installed musicnn package (``<pkg>/<model>/``)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the musicnn package (pretrained {model} weights) is not installed; install it with "
            f"`{_INSTALL_HINT}` (--no-deps: its metadata pins an ancient numpy, and TensorFlow is "
            "not needed by this port)"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    prefix = str(pkg_dir / model) + os.sep  # the checkpoint files are <model>/.index, <model>/.data-*
    if not os.path.exists(prefix + ".index"):
        raise FileNotFoundError(
            f"musicnn is installed at {pkg_dir} but has no {model} checkpoint ({prefix}.index); "
            f"reinstall it with `{_INSTALL_HINT}`"
        )
    return prefix


# ----------------------------------------------------------------------------- input pipeline


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f / min_log_hz) / logstep, lin)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """[n_mels, n_fft//2+1] float32 filters equal to librosa.filters.mel(sr, n_fft, n_mels) defaults
    (Slaney mel scale, fmin 0, fmax sr/2, Slaney area norm), computed in float64 like librosa."""
    dt = torch.float64
    fftfreqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=dt)
    mels = torch.linspace(
        float(_hz_to_mel(torch.tensor(0.0, dtype=dt))),
        float(_hz_to_mel(torch.tensor(sr / 2, dtype=dt))),
        n_mels + 2,
        dtype=dt,
    )
    mel_f = _mel_to_hz(mels)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).to(torch.float32)


def mel_power(audio: torch.Tensor, fbank: torch.Tensor | None = None) -> torch.Tensor:
    """librosa.feature.melspectrogram(y, sr=16000, n_fft=512, hop_length=256, n_mels=96).T for 16 kHz
    mono ``audio`` [N] -> [frames, 96] float32 (frames = 1 + N // 256)."""
    if fbank is None:
        fbank = mel_filterbank()
    x = audio.to(torch.float64)
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64, device=x.device)
    spec = torch.stft(
        x, N_FFT, HOP, N_FFT, window, center=True, pad_mode="constant", return_complex=True
    )
    power = spec.real.square() + spec.imag.square()  # [257, frames]
    return (fbank.to(x.device, torch.float64) @ power).T.to(torch.float32)


def log_mel(audio: torch.Tensor, fbank: torch.Tensor | None = None) -> torch.Tensor:
    """musicnn's network input for 16 kHz mono ``audio`` [N]: log10(10000 * float16(mel) + 1),
    [frames, 96] float32."""
    mel = mel_power(audio, fbank).to(torch.float16).to(torch.float32)
    return torch.log10(10000.0 * mel + 1.0)


# ----------------------------------------------------------------------------- network


class _BN(nn.Module):
    """Inference-mode TF batch normalisation over the channel dim ``dim`` (eps 1e-3)."""

    def __init__(self, n: int, dim: int = 1):
        super().__init__()
        self.dim = dim
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            self.register_buffer(name, torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gamma * torch.rsqrt(self.moving_variance + BN_EPS)
        shift = self.beta - self.moving_mean * scale
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x * scale.view(shape) + shift.view(shape)


class MusicnnNet(nn.Module):
    """``build_musicnn(num_filt_midend=64, num_units_backend=200)`` with 50 classes, inference only.

    Input [B, 187, 96] log-mel patches (time, frequency); returns (logits [B, 50], penultimate [B, 200]).
    """

    # (TF layer name, kernel (time, freq), out channels, time padding (before, after)), in models.py order
    _FRONT = (
        ("conv2d", (7, 38), 204, (3, 3)),  # timbral 7x(0.4*96), input padded by 3 frames, 'valid'
        ("conv2d_1", (7, 67), 204, (3, 3)),  # timbral 7x(0.7*96)
        ("conv2d_2", (128, 1), 51, (63, 64)),  # temporal, TF 'same' padding (extra frame after)
        ("conv2d_3", (64, 1), 51, (31, 32)),
        ("conv2d_4", (32, 1), 51, (15, 16)),
    )

    def __init__(self, n_mels: int = N_MELS, num_classes: int = len(MTT_TAGS)):
        super().__init__()
        self.bn_in = _BN(1)
        self.front = nn.ModuleList(
            nn.Conv2d(1, out, kernel) for _, kernel, out, _ in self._FRONT
        )
        self.front_bn = nn.ModuleList(_BN(out) for _, _, out, _ in self._FRONT)
        n_front = sum(out for _, _, out, _ in self._FRONT)  # 561
        self.mid = nn.ModuleList(
            [nn.Conv1d(c, 64, 7, padding=3) for c in (n_front, 64, 64)]
        )
        self.mid_bn = nn.ModuleList(_BN(64) for _ in range(3))
        n_mid = n_front + 3 * 64  # 753
        self.bn_pool = _BN(2 * n_mid)
        self.dense = nn.Linear(2 * n_mid, 200)
        self.bn_dense = _BN(200)
        self.out = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bn_in(x.unsqueeze(1))  # [B, 1, T, F]
        feats = []
        for (_, _, _, pad), conv, bn in zip(self._FRONT, self.front, self.front_bn):
            h = bn(F.relu(conv(F.pad(x, (0, 0, pad[0], pad[1])))))  # [B, C, T, F']
            feats.append(h.amax(dim=3))  # max over frequency -> [B, C, T]
        front = torch.cat(feats, dim=1)  # [B, 561, T]
        h1 = self.mid_bn[0](F.relu(self.mid[0](front)))
        h2 = self.mid_bn[1](F.relu(self.mid[1](h1))) + h1
        h3 = self.mid_bn[2](F.relu(self.mid[2](h2))) + h2
        mid = torch.cat([front, h1, h2, h3], dim=1)  # [B, 753, T]
        # TF concatenates [max, mean] on a trailing axis then flattens: features interleave.
        pooled = torch.stack([mid.amax(dim=2), mid.mean(dim=2)], dim=2).flatten(1)  # [B, 1506]
        penultimate = self.bn_dense(F.relu(self.dense(self.bn_pool(pooled))))
        return self.out(penultimate), penultimate

    def load_tf_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Copy the TF variables (names as in the MTT_musicnn checkpoint) into this module."""

        def t(name: str) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f"checkpoint lacks variable {name!r}")
            return torch.from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32))

        def put(param: torch.Tensor, value: torch.Tensor, name: str) -> None:
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(
                    f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)

        def bn(module: _BN, name: str) -> None:
            for field in ("gamma", "beta", "moving_mean", "moving_variance"):
                put(getattr(module, field), t(f"{name}/{field}"), f"{name}/{field}")

        bn(self.bn_in, "batch_normalization")
        for i, ((name, _, _, _), conv) in enumerate(zip(self._FRONT, self.front)):
            put(conv.weight, t(f"{name}/kernel").permute(3, 2, 0, 1), f"{name}/kernel")  # HWIO -> OIHW
            put(conv.bias, t(f"{name}/bias"), f"{name}/bias")
            bn(self.front_bn[i], f"batch_normalization_{i + 1}")
        for i, conv in enumerate(self.mid):
            name = f"conv2d_{5 + i}"
            # [7, C_in, 1, 64] (time, 'frequency' = channel axis, 1, out) -> Conv1d [64, C_in, 7]
            put(conv.weight, t(f"{name}/kernel")[:, :, 0, :].permute(2, 1, 0), f"{name}/kernel")
            put(conv.bias, t(f"{name}/bias"), f"{name}/bias")
            bn(self.mid_bn[i], f"batch_normalization_{6 + i}")
        bn(self.bn_pool, "batch_normalization_9")
        put(self.dense.weight, t("dense/kernel").T, "dense/kernel")
        put(self.dense.bias, t("dense/bias"), "dense/bias")
        bn(self.bn_dense, "batch_normalization_10")
        put(self.out.weight, t("dense_1/kernel").T, "dense_1/kernel")
        put(self.out.bias, t("dense_1/bias"), "dense_1/bias")


# ----------------------------------------------------------------------------- embedder


class MusicnnEmbedder:
    """MTT_musicnn features and tags for audio.

    >>> emb = MusicnnEmbedder()
    >>> out = emb.embed(audio, sample_rate=44100)  # audio [N] (or [C, N], averaged to mono)
    >>> out["features"].shape, out["tags"].shape   # [patches, 200], [patches, 50]

    One row per non-overlapping 3-s patch (187 frames); a trailing partial patch is dropped (as
    musicnn does). Audio shorter than one patch is zero-padded (in the log-mel domain, i.e. silence)
    to one patch when ``pad_short`` (musicnn itself fails on such input), else raises ValueError.
    """

    name: str = "musicnn MTT penultimate (200-d, 3-s patches)"
    tag_names: tuple[str, ...] = MTT_TAGS
    sample_rate: int = SAMPLE_RATE
    feature_dim: int = 200

    def __init__(
        self,
        device: str | torch.device = "cpu",
        checkpoint: str | os.PathLike | None = None,
        batch_size: int = 64,
        pad_short: bool = True,
    ):
        prefix = os.fspath(checkpoint) if checkpoint is not None else musicnn_checkpoint_prefix()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.pad_short = pad_short
        self.net = MusicnnNet()
        self.net.load_tf_weights(read_tf_bundle(prefix))
        self.net.eval().to(self.device)
        self.fbank = mel_filterbank().to(self.device)

    def _to_mono16k(self, audio, sample_rate: int) -> torch.Tensor:
        x = torch.as_tensor(np.array(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio)  # a copy: arrays from Ray are read-only
        x = x.detach().to(self.device, torch.float32)
        if x.dim() == 2:
            x = x.mean(dim=0)  # [C, N] -> mono, like librosa.load(mono=True)
        if x.dim() != 1:
            raise ValueError(f"audio must be [N] or [C, N], got shape {tuple(x.shape)}")
        if sample_rate != SAMPLE_RATE:
            import torchaudio.functional as AF

            x = AF.resample(x, int(sample_rate), SAMPLE_RATE, **_RESAMPLE_KW)
        return x

    @torch.no_grad()
    def patches(self, audio, sample_rate: int) -> torch.Tensor:
        """Network input: [patches, 187, 96] log-mel patches of ``audio``."""
        spec = log_mel(self._to_mono16k(audio, sample_rate), self.fbank)  # [frames, 96]
        n = spec.shape[0] // PATCH_FRAMES
        if n == 0:
            if not self.pad_short:
                raise ValueError(
                    f"audio too short for musicnn: {spec.shape[0]} frames < {PATCH_FRAMES} (3 s at 16 kHz)"
                )
            spec = F.pad(spec, (0, 0, 0, PATCH_FRAMES - spec.shape[0]))
            n = 1
        return spec[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, N_MELS)

    @torch.no_grad()
    def embed_patches(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network on [B, 187, 96] log-mel patches -> features [B, 200], tags [B, 50]."""
        patches = torch.as_tensor(patches).to(self.device, torch.float32)
        feats, tags = [], []
        for i in range(0, patches.shape[0], self.batch_size):
            logits, pen = self.net(patches[i : i + self.batch_size])
            feats.append(pen)
            tags.append(torch.sigmoid(logits))
        return {"features": torch.cat(feats), "tags": torch.cat(tags)}

    def embed(self, audio, sample_rate: int) -> dict[str, torch.Tensor]:
        """``audio`` [N] (or [C, N]) float numpy array or tensor at ``sample_rate`` ->
        dict(features=[patches, 200] penultimate layer, tags=[patches, 50] probabilities), float32
        tensors on ``device``."""
        return self.embed_patches(self.patches(audio, sample_rate))
