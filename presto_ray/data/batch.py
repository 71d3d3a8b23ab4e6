"""Training batches: shard columns -> (normalised latents x0, condition c)."""

from __future__ import annotations

import numpy as np
import torch

from presto_ray.data.stats import LatentStats
from presto_ray.models.cond import Cond

TRAIN_COLUMNS = ["latent", "text_states", "text_mask", "bpm"]


def batch_to_inputs(batch: dict, stats: LatentStats, device: torch.device) -> tuple[torch.Tensor, Cond]:
    """batch: latent [B, C, T], text_states [B, L, Dt], text_mask [B, L], bpm [B] (tensors or
    arrays) -> x0 [B, C, T] float32 with per-channel std sigma_data, and the Cond."""
    def tensor(key):
        value = batch[key]
        return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))

    x0 = stats.normalise(tensor("latent").to(device=device, dtype=torch.float32))
    cond = Cond(tokens=tensor("text_states").to(device=device, dtype=torch.float32),
                mask=tensor("text_mask").to(device=device, dtype=torch.bool),
                bpm=tensor("bpm").to(device=device, dtype=torch.float32))
    return x0, cond


def stack_rows(rows: list[dict], columns: list[str] = TRAIN_COLUMNS) -> dict[str, np.ndarray]:
    """Rows (dicts) -> column arrays, e.g. for a fixed evaluation batch."""
    return {c: np.stack([np.asarray(r[c]) for r in rows]) for c in columns}
