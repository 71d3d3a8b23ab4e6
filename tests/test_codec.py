"""Latent codecs: the weight-free mel codec (real torchaudio transforms) and the TorchScript adapter."""

from __future__ import annotations

import json
import math

import pytest
import torch

from presto_ray.config import CodecConfig
from presto_ray.models.codec import Codec, MelCodec, VAECodec, load_codec

CFG_16K = CodecConfig()  # 16 kHz, n_fft 1024, hop 512, 32 mels: the default
CFG_44K = CodecConfig(sample_rate=44100, n_fft=2048, hop_length=512, n_mels=128)


def tones(freqs: list[float], sample_rate: int, seconds: float = 1.0) -> torch.Tensor:
    """Sum of 0.3-amplitude sines -> [n]."""
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    return sum(0.3 * torch.sin(2 * math.pi * f * t) for f in freqs)


def spectrum(wav: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """wav [n] -> (frequencies [n//2+1], power [n//2+1]) of the Hann-windowed signal."""
    n = wav.shape[-1]
    power = torch.fft.rfft(wav * torch.hann_window(n)).abs() ** 2
    return torch.fft.rfftfreq(n, 1 / sample_rate), power


def peak_hz(freqs: torch.Tensor, power: torch.Tensor, lo: float = 0.0, hi: float = math.inf) -> float:
    band = (freqs >= lo) & (freqs <= hi)
    return freqs[band][power[band].argmax()].item()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


@pytest.mark.parametrize("cfg", [CFG_16K, CodecConfig(sample_rate=44100, n_fft=2048, hop_length=512, n_mels=32)],
                         ids=["16k", "44k"])
def test_mel_shapes_and_frame_counts(cfg):
    codec = MelCodec(cfg)
    hop = cfg.hop_length
    assert codec.frame_rate == cfg.sample_rate / hop and codec.channels == cfg.n_mels
    for n in (cfg.n_fft // 2 + 1, 3 * hop, 10 * hop + 7, cfg.sample_rate):
        wav = torch.randn(2, n).clamp(-1, 1) * 0.1
        latent = codec.encode(wav)
        assert latent.shape == (2, cfg.n_mels, n // hop) and latent.dtype == torch.float32
        assert codec.frames_for(n) == n // hop
        assert codec.samples_for(latent.shape[-1]) == (n // hop) * hop
    one = codec.encode(torch.zeros(5 * hop + 3))  # [n] -> batch of one
    assert one.shape == (1, cfg.n_mels, 5)
    assert codec.decode(codec.encode(torch.randn(3, 4 * hop) * 0.1)).shape == (3, 4 * hop)


def test_mel_frames_match_the_centred_stft():
    """Frame t covers samples centred on t * hop: a click at sample 10 * hop lights frame 10 most."""
    codec = MelCodec(CFG_16K)
    wav = torch.zeros(20 * 512)
    wav[10 * 512] = 1.0
    energy = codec.encode(wav)[0].exp().sum(0)
    assert energy.argmax().item() == 10


@pytest.mark.parametrize("cfg", [CFG_16K, CFG_44K], ids=["16k-32mels", "44k-128mels"])
def test_tone_survives_round_trip(cfg):
    codec = MelCodec(cfg)
    wav = tones([440.0], cfg.sample_rate)
    latent = codec.encode(wav)
    out = codec.decode(latent)
    assert out.shape == (1, codec.samples_for(latent.shape[-1]))
    freqs, power = spectrum(out[0], cfg.sample_rate)
    assert abs(peak_hz(freqs, power) - 440.0) / 440.0 < 0.03
    assert correlation(codec.encode(out), latent) > 0.9


def test_chord_survives_round_trip():
    """Both notes of a fifth come back; 32 mel bands locate each to within a few percent."""
    codec = MelCodec(CFG_16K)
    notes = [440.0, 660.0]
    latent = codec.encode(tones(notes, 16000))
    out = codec.decode(latent)[0]
    freqs, power = spectrum(out, 16000)
    dominant = peak_hz(freqs, power)
    assert min(abs(dominant - f) / f for f in notes) < 0.03
    for f in notes:
        assert abs(peak_hz(freqs, power, 0.85 * f, 1.15 * f) - f) / f < 0.05
    near_notes = sum(power[(freqs > 0.85 * f) & (freqs < 1.15 * f)].sum() for f in notes)
    assert near_notes / power.sum() > 0.8
    assert correlation(codec.encode(out[None]), latent) > 0.9


def test_nonnegative_inverse_beats_clipped_lstsq():
    """The default NNLS inverse mel keeps a tone sharper than torchaudio's InverseMelScale (lstsq + clip)."""
    latent = MelCodec(CFG_16K).encode(tones([440.0], 16000))
    corr = {it: correlation(MelCodec(CFG_16K, inverse_iters=it).encode(MelCodec(CFG_16K, inverse_iters=it)
                                                                         .decode(latent)), latent)
            for it in (0, 100)}
    assert corr[100] > corr[0] + 0.03, corr


def test_silence_stays_silent_and_decode_is_deterministic():
    codec = MelCodec(CFG_16K)
    latent = codec.encode(torch.zeros(2, 8000))
    assert torch.allclose(latent, torch.full_like(latent, math.log(1e-5)))
    assert codec.decode(latent).abs().max() < 1e-4
    music = codec.encode(tones([330.0, 495.0], 16000, 0.5))
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = codec.decode(music)
    assert torch.equal(torch.rand(4), expected)  # the global RNG is left alone
    assert torch.equal(first, codec.decode(music))


def test_mel_errors_and_identity():
    codec = MelCodec(CFG_16K)
    with pytest.raises(ValueError, match="512"):
        codec.encode(torch.zeros(512))
    with pytest.raises(ValueError, match=r"\[B, 32, T\]"):
        codec.decode(torch.zeros(1, 16, 10))
    ident = codec.identity()
    assert ident["name"] == "mel" and ident["n_mels"] == 32 and ident["hop_length"] == 512
    assert ident["sample_rate"] == 16000 and ident["f_max"] == 8000.0 and ident["frame_rate"] == 31.25
    json.dumps(ident)
    assert isinstance(load_codec(CFG_16K), MelCodec)


class TinyConvCodec(torch.nn.Module):
    """Strided conv encoder [B, n] -> [B, 4, n // 8] and transposed conv decoder back to [B, 1, n]."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv1d(1, 4, kernel_size=8, stride=8)
        self.dec = torch.nn.ConvTranspose1d(4, 1, kernel_size=8, stride=8)

    @torch.jit.export
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.enc(wav[:, None])

    @torch.jit.export
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.dec(latent)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(wav))


def write_vae(folder, meta: dict | None = None) -> TinyConvCodec:
    torch.manual_seed(0)
    module = TinyConvCodec().eval()
    folder.mkdir(exist_ok=True)
    torch.jit.script(module).save(str(folder / "codec.pt"))
    meta = {"sample_rate": 8000, "channels": 4, "frame_rate": 1000} if meta is None else meta
    (folder / "codec.json").write_text(json.dumps(meta))
    return module


def test_vae_codec_round_trip_uses_the_scripted_module(tmp_path):
    module = write_vae(tmp_path / "vae")
    codec = load_codec(CodecConfig(name="vae", path=str(tmp_path / "vae"), sample_rate=8000))
    assert isinstance(codec, VAECodec) and isinstance(codec, Codec)
    assert (codec.sample_rate, codec.channels, codec.frame_rate, codec.hop_length) == (8000, 4, 1000.0, 8)
    wav = torch.randn(2, 800) * 0.1
    latent = codec.encode(wav)
    assert latent.shape == (2, 4, 100) and codec.frames_for(800) == 100
    with torch.no_grad():
        torch.testing.assert_close(latent, module.encode(wav))
        expected = module.decode(latent)[:, 0]
    out = codec.decode(latent)
    assert out.shape == (2, codec.samples_for(100)) == (2, 800)
    torch.testing.assert_close(out, expected)
    assert codec.encode(wav[0]).shape == (1, 4, 100)
    ident = codec.identity()
    assert ident["name"] == "vae" and ident["channels"] == 4 and ident["hop_length"] == 8
    assert ident["path"] == str((tmp_path / "vae").resolve()) and len(ident["sha256"]) == 64


def test_vae_codec_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VAECodec(tmp_path / "nowhere")
    write_vae(tmp_path / "a")
    (tmp_path / "a" / "codec.json").unlink()
    with pytest.raises(FileNotFoundError, match="codec.json"):
        VAECodec(tmp_path / "a")
    write_vae(tmp_path / "b", {"sample_rate": 8000, "channels": 4})
    with pytest.raises(ValueError, match="codec.json.*frame_rate"):
        VAECodec(tmp_path / "b")
    write_vae(tmp_path / "c", {"sample_rate": 8000, "channels": 4, "frame_rate": 3000})
    with pytest.raises(ValueError, match="whole number"):
        VAECodec(tmp_path / "c")
    write_vae(tmp_path / "d")
    torch.save(TinyConvCodec().state_dict(), tmp_path / "d" / "codec.pt")  # a pickle, not TorchScript
    with pytest.raises(ValueError, match="codec.pt.*TorchScript"):
        VAECodec(tmp_path / "d")
    write_vae(tmp_path / "e")
    with pytest.raises(ValueError, match=r"\[B, 4, T\]"):
        VAECodec(tmp_path / "e").decode(torch.zeros(1, 3, 10))


def test_load_codec_errors(tmp_path):
    with pytest.raises(ValueError, match="codec.path"):
        load_codec(CodecConfig(name="vae"))
    write_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="codec.sample_rate=16000"):
        load_codec(CodecConfig(name="vae", path=str(tmp_path / "vae")))


def test_mel_decode_of_out_of_range_latents_stays_finite():
    """A poor sample (huge or NaN log-mel values) must still decode to finite audio."""
    from presto_ray.config import CodecConfig
    from presto_ray.models.codec import MelCodec

    codec = MelCodec(CodecConfig())
    latent = torch.full((1, 32, 16), 70.0)
    latent[0, 0, 0] = float("nan")
    latent[0, 1, :] = -200.0
    wav = codec.decode(latent)
    assert torch.isfinite(wav).all() and wav.shape == (1, 16 * 512)
