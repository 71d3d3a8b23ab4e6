"""Exponential moving average of a role's weights, kept in fp32 and whole on every rank.

It averages DeepSpeed's fp32 master weights (not the bf16 module copy, which cannot resolve small
updates). Under ZeRO-3 this gathers the full model each update; a sharded EMA is future work.

With warm-up (the default) the decay of update n (counting from 0) is
``min(decay, (1 + n) / (10 + n))``: a short run averages its recent weights instead of keeping most
of its initial ones (0.999 over 60 updates would leave 94% of them), and a long one reaches
``decay``. The update count is stored with the shadow weights so a resumed run continues the same
schedule."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from presto_ray.train.engine import RoleEngine

UPDATES_KEY = "ema_updates"  # safetensors metadata entry holding the update count


class EMA:
    """shadow[name] <- d_n * shadow[name] + (1 - d_n) * param, for every trainable parameter, with
    d_n = decay, or min(decay, (1 + n) / (10 + n)) under warm-up."""

    def __init__(self, role: RoleEngine, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {n: t.clone() for n, t in role.full_fp32_params()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, role: RoleEngine) -> None:
        """Collective under ZeRO: call on every rank."""
        weight = 1.0 - self.current_decay()
        for name, t in role.full_fp32_params():
            self.shadow[name].lerp_(t, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])

    def save(self, path: Path, weights: dict[str, torch.Tensor]) -> None:
        """Write ``weights`` (this EMA's state_dict, taken at the checkpoint) with the update count."""
        save_file(weights, str(path), metadata={UPDATES_KEY: str(self.updates)})

    def load(self, path: Path) -> None:
        """Read a file written by ``save``; one without a count (older checkpoints) restarts the
        warm-up count at 0."""
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            self.updates = int((f.metadata() or {}).get(UPDATES_KEY, 0))
        self.load_state_dict(state)
