"""Per-channel latent statistics: codec latents are normalised so that sigma_data holds."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentStats:
    """mean, std: [C] per-channel statistics of raw codec latents; sigma_data: target std."""

    mean: torch.Tensor
    std: torch.Tensor
    sigma_data: float

    @classmethod
    def from_latents(cls, latents: torch.Tensor, sigma_data: float) -> "LatentStats":
        """latents: [N, C, T] raw codec latents."""
        if latents.ndim != 3:
            raise ValueError(f"expected latents [N, C, T], got shape {tuple(latents.shape)}")
        flat = latents.double().transpose(0, 1).reshape(latents.shape[1], -1)
        std = flat.std(dim=1).clamp_min(1e-6)
        return cls(mean=flat.mean(dim=1).float(), std=std.float(), sigma_data=sigma_data)

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

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "sigma_data": self.sigma_data}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentStats":
        missing = {"mean", "std", "sigma_data"} - set(d)
        if missing:
            raise ValueError(f"latent statistics lack keys {sorted(missing)}")
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32),
                   float(d["sigma_data"]))
