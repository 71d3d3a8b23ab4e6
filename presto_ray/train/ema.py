"""Exponential moving average of a role's weights, kept in fp32 and whole on every rank.

It averages DeepSpeed's fp32 master weights (not the bf16 module copy, which cannot resolve small
updates). Under ZeRO-3 this gathers the full model each update; a sharded EMA is future work."""

from __future__ import annotations

import torch

from presto_ray.train.engine import RoleEngine


class EMA:
    """shadow[name] <- decay * shadow[name] + (1 - decay) * param, for every trainable parameter."""

    def __init__(self, role: RoleEngine, decay: float):
        self.decay = decay
        self.shadow = {n: t.clone() for n, t in role.full_fp32_params()}

    @torch.no_grad()
    def update(self, role: RoleEngine) -> None:
        """Collective under ZeRO: call on every rank."""
        for name, t in role.full_fp32_params():
            self.shadow[name].lerp_(t, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])
