"""Per-channel latent statistics: codec latents are normalised so that sigma_data holds, and the
range the data covers bounds what the codec is asked to decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentStats:
    """mean, std: [C] per-channel statistics of raw codec latents; sigma_data: target std;
    low, high: [C] the smallest and largest raw value of each channel in the data (None where the
    data's manifest predates them: then nothing is bounded)."""

    mean: torch.Tensor
    std: torch.Tensor
    sigma_data: float
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None

    @classmethod
    def from_latents(cls, latents: torch.Tensor, sigma_data: float) -> "LatentStats":
        """latents: [N, C, T] raw codec latents."""
        if latents.ndim != 3:
            raise ValueError(f"expected latents [N, C, T], got shape {tuple(latents.shape)}")
        flat = latents.double().transpose(0, 1).reshape(latents.shape[1], -1)
        std = flat.std(dim=1).clamp_min(1e-6)
        return cls(mean=flat.mean(dim=1).float(), std=std.float(), sigma_data=sigma_data,
                   low=flat.amin(dim=1).float(), high=flat.amax(dim=1).float())

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, C, T] raw -> [B, C, T] with per-channel std sigma_data."""
        shape = (1, -1, 1)
        m, s = self.mean.to(latent).view(shape), self.std.to(latent).view(shape)
        return (latent - m) / s * self.sigma_data

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`."""
        shape = (1, -1, 1)
        m, s = self.mean.to(x).view(shape), self.std.to(x).view(shape)
        return x / self.sigma_data * s + m

    def to_data_range(self, latent: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Raw latents [B, C, T] clamped channel by channel to the data's [low, high], and how many
        values were outside it. The codec decodes what its encoder can produce; a value beyond every
        value of the data (a log-mel band louder than any the data holds) is outside its domain. Without
        a recorded range the latent is returned as it is (count 0)."""
        if self.low is None or self.high is None:
            return latent, 0
        shape = (1, -1, 1)
        low, high = self.low.to(latent).view(shape), self.high.to(latent).view(shape)
        outside = int(((latent < low) | (latent > high)).sum())
        return torch.minimum(torch.maximum(latent, low), high), outside

    def to_dict(self) -> dict:
        d = {"mean": self.mean.tolist(), "std": self.std.tolist(), "sigma_data": self.sigma_data}
        if self.low is not None and self.high is not None:
            d.update(low=self.low.tolist(), high=self.high.tolist())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LatentStats":
        missing = {"mean", "std", "sigma_data"} - set(d)
        if missing:
            raise ValueError(f"latent statistics lack keys {sorted(missing)}")
        bounds = [torch.tensor(d[k], dtype=torch.float32) if k in d else None for k in ("low", "high")]
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32),
                   float(d["sigma_data"]), *bounds)
