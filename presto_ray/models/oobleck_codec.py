"""Stable Audio's VAE (diffusers ``AutoencoderOobleck``) as a presto_ray :class:`~presto_ray.models.codec.Codec`.

The codec contract is mono, wav [B, n] <-> latent [B, C, T]; the Oobleck VAE reads and writes A audio
channels (A = 2 for Stable Audio Open). The choices, kept simple:

- ``encode`` duplicates a mono wav [B, n] onto the A channels ([B, A, n], what
  ``StableAudioPipeline.prepare_latents`` does with a mono initial waveform) and returns the mean
  of the VAE's posterior (its deterministic mode), never a sample. ``encode_channels`` takes
  [B, A, n] audio as it is.
- ``decode`` returns the mean of the A decoded channels [B, T * hop]; ``decode_channels`` returns
  what the VAE makes, [B, A, T * hop] (``vae.decode(latent).sample``, what the pipeline returns
  before its crop to the requested seconds).

hop_length is the product of the VAE's ``downsampling_ratios`` (2 * 4 * 4 * 8 * 8 = 2048 for Stable
Audio Open 1.0, at 44.1 kHz: 21.5 latent frames per second, 64 latent channels).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from presto_ray.models.codec import Codec


class OobleckCodec(Codec):
    """A frozen ``AutoencoderOobleck`` ``vae`` as a codec; ``weights_sha256`` identifies its weights
    (the loader computes it from the safetensors it read).

    Attributes: ``sample_rate`` (the VAE's ``sampling_rate``), ``channels`` (latent channels C =
    ``decoder_input_channels``), ``audio_channels`` (A), ``hop_length`` (samples per latent frame),
    ``frame_rate`` = sample_rate / hop_length. encode/decode run without gradients, on the device of
    their input (the VAE is moved there), in the VAE's dtype; they return float32.
    """

    def __init__(self, vae: torch.nn.Module, weights_sha256: str) -> None:
        cfg = vae.config
        if cfg.encoder_hidden_size != 2 * cfg.decoder_input_channels:
            raise ValueError(f"AutoencoderOobleck config: encoder_hidden_size={cfg.encoder_hidden_size} must be twice "
                             f"decoder_input_channels={cfg.decoder_input_channels} (the posterior's mean and scale)")
        self.vae = vae.eval().requires_grad_(False)
        self.weights_sha256 = str(weights_sha256)
        self.sample_rate = int(cfg.sampling_rate)
        self.channels = int(cfg.decoder_input_channels)
        self.audio_channels = int(cfg.audio_channels)
        self.downsampling_ratios = [int(r) for r in cfg.downsampling_ratios]
        self.hop_length = math.prod(self.downsampling_ratios)
        self.frame_rate = self.sample_rate / self.hop_length

    def _on(self, x: Tensor) -> tuple[torch.nn.Module, Tensor]:
        """The VAE on x's device and x in the VAE's dtype."""
        vae = self.vae.to(x.device)
        return vae, x.to(vae.dtype)

    @torch.no_grad()
    def encode_channels(self, wav: Tensor) -> Tensor:
        """wav: [B, A, n] audio of the VAE's A channels -> latent [B, C, n // hop_length] float32, the
        posterior mean. Needs n >= hop_length."""
        if wav.ndim != 3 or wav.shape[1] != self.audio_channels:
            raise ValueError(f"wav must be [B, {self.audio_channels}, n], got shape {tuple(wav.shape)}")
        n = wav.shape[-1]
        if n < self.hop_length:
            raise ValueError(f"OobleckCodec.encode needs at least hop_length = {self.hop_length} samples, got {n}")
        vae, wav = self._on(wav)
        latent = vae.encode(wav).latent_dist.mode()
        if tuple(latent.shape) != (wav.shape[0], self.channels, self.frames_for(n)):
            raise ValueError(f"AutoencoderOobleck encoded {n} samples to shape {tuple(latent.shape)}, expected "
                             f"[{wav.shape[0]}, {self.channels}, {self.frames_for(n)}] (downsampling_ratios "
                             f"{self.downsampling_ratios}: odd strides do not divide the length exactly)")
        return latent.float()

    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """wav: [B, n] or [n] mono float in [-1, 1] -> latent [B, C, n // hop_length] float32: the
        mono signal on every one of the A channels, then :meth:`encode_channels`."""
        if not torch.is_tensor(wav):
            raise TypeError(f"wav must be a torch.Tensor, got {type(wav).__name__}")
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2:
            raise ValueError(f"wav must be [B, n] or [n] (mono), got shape {tuple(wav.shape)}; "
                             f"use encode_channels for [B, {self.audio_channels}, n]")
        return self.encode_channels(wav[:, None].expand(-1, self.audio_channels, -1))

    @torch.no_grad()
    def decode_channels(self, latent: Tensor) -> Tensor:
        """latent: [B, C, T] -> wav [B, A, T * hop_length] float32, the VAE's decoder output as it is."""
        if latent.ndim != 3 or latent.shape[1] != self.channels:
            raise ValueError(f"latent must be [B, {self.channels}, T], got shape {tuple(latent.shape)}")
        vae, latent = self._on(latent)
        wav = vae.decode(latent).sample
        expected = (latent.shape[0], self.audio_channels, self.samples_for(latent.shape[-1]))
        if tuple(wav.shape) != expected:
            raise ValueError(f"AutoencoderOobleck decoded {latent.shape[-1]} frames to shape {tuple(wav.shape)}, "
                             f"expected {list(expected)}")
        return wav.float()

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """latent: [B, C, T] -> mono wav [B, T * hop_length] float32, the mean of the A decoded channels."""
        return self.decode_channels(latent).mean(dim=1)

    def identity(self) -> dict:
        """{"name": "oobleck", sample_rate, channels, audio_channels, hop_length, frame_rate,
        downsampling_ratios, sha256 of the weights, and the mono choices: encode "posterior_mean"
        of the duplicated channel, decode "channel_mean"}."""
        return {
            "name": "oobleck", "sample_rate": self.sample_rate, "channels": self.channels,
            "audio_channels": self.audio_channels, "hop_length": self.hop_length, "frame_rate": self.frame_rate,
            "downsampling_ratios": list(self.downsampling_ratios), "sha256": self.weights_sha256,
            "encode": "posterior_mean", "decode": "channel_mean",
        }
