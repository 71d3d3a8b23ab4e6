"""Exponential moving average of a role's weights (kept in fp32, whole on every rank)."""

from __future__ import annotations

import torch

from presto_ray.train.engine import RoleEngine


class EMA:
    """shadow[name] <- decay * shadow[name] + (1 - decay) * param, for every trainable parameter."""

    def __init__(self, role: RoleEngine, decay: float):
        self.decay = decay
        with role.gathered():
            self.shadow = {n: p.detach().float().clone() for n, p in role.module.named_parameters()}

    @torch.no_grad()
    def update(self, role: RoleEngine) -> None:
        with role.gathered():
            for name, p in role.module.named_parameters():
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])
