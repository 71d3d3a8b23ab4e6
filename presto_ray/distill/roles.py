"""Roles as DMD2 names them: the generator, the guidance model (fake score + discriminator head)
and the frozen teacher. A trained role owns its module and optimiser; the update functions in
this package only call it, step it and read its parameters, so the same code runs on a plain
torch optimiser (one process, tests) and on a DeepSpeed engine (``presto_ray.train.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn


class TrainedRole(Protocol):
    """What a distillation update needs from a trained role."""

    name: str
    module: nn.Module  # the bare module: forward passes whose backward must not reach this role

    def __call__(self, *args: Any, **kw: Any) -> Any: ...  # forward through the module (engine)

    def backward(self, loss: Tensor) -> None: ...

    def step(self) -> float | None: ...  # clip, optimiser step, zero grads; returns the grad norm

    def full_fp32_params(self) -> Iterator[tuple[str, Tensor]]: ...


class TorchRole:
    """A trained role on a plain torch optimiser (no DeepSpeed): one process, tests, benchmarks."""

    def __init__(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0):
        self.name, self.module, self.optimizer, self.grad_clip = name, module, optimizer, grad_clip

    @classmethod
    def adamw(cls, name: str, module: nn.Module, lr: float, betas=(0.9, 0.99), weight_decay: float = 0.0,
              grad_clip: float = 0.0) -> "TorchRole":
        params = [p for p in module.parameters() if p.requires_grad]
        return cls(name, module, torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay),
                   grad_clip)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.module(*args, **kw)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.grad is not None]
        limit = self.grad_clip if self.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, limit) if params else torch.zeros(())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def full_fp32_params(self) -> Iterator[tuple[str, Tensor]]:
        for name, p in self.module.named_parameters():
            yield name, p.detach().float()


@dataclass
class Roles:
    """The networks of one training run (a distillation, or the teacher's own training).

    generator: trained role, a denoiser ``(x, sigma [B], cond, **kw) -> x0_hat`` (the student; in
    ``train-teacher`` the teacher being trained);
    guidance: trained role (presto-s, dmd2), a :class:`~presto_ray.distill.guidance.GuidanceModel`;
    teacher: frozen denoiser (network or analytic), called without gradients (None in
    ``train-teacher``);
    target: frozen EMA copy of the generator (cd only).
    """

    generator: TrainedRole
    teacher: Callable[..., Tensor] | None = None
    guidance: TrainedRole | None = None
    target: nn.Module | None = None


def frozen(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with every parameter's requires_grad off; returns it."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


Guard = Callable[[str, Tensor], bool]
"""guard(role_name, loss) -> False to skip that role's update (a non-finite loss)."""


def allow_all(role: str, loss: Tensor) -> bool:
    """The default guard: every update is applied."""
    return True


def guarded_step(role: TrainedRole, loss: Tensor, guard: Guard, metrics: dict[str, Tensor]) -> bool:
    """Backward ``loss`` through ``role`` and step it, unless ``guard(role.name, loss)`` refuses.
    Records ``<role>_updates`` and the gradient norm (``grad_norm_gen`` for the generator,
    ``grad_norm_<role>`` otherwise) in ``metrics``, or ``skipped_<role>``. Returns whether it stepped."""
    if not guard(role.name, loss.detach()):
        metrics[f"skipped_{role.name}"] = torch.ones(())
        return False
    role.backward(loss)
    norm = role.step()
    metrics[f"{role.name}_updates"] = torch.ones(())
    if norm is not None:
        short = "gen" if role.name == "generator" else role.name
        metrics[f"grad_norm_{short}"] = torch.as_tensor(float(norm))
    return True
