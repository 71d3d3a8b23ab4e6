"""Where a process computes: device, collective backend and precision, chosen once.

CUDA -> NCCL + bf16; CPU -> gloo + fp32 with DeepSpeed's CPU accelerator. Everything downstream
receives a :class:`Runtime` instead of testing for CUDA itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    """device: where tensors live; backend: torch.distributed backend; dtype: compute precision."""

    device: torch.device
    backend: str
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        """Autocast context for forward passes (bf16 on GPU, a no-op on CPU)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def describe(self) -> dict:
        info = {"device": str(self.device), "backend": self.backend, "precision": self.precision}
        if self.is_cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        else:
            info["cpu_threads"] = torch.get_num_threads()
        return info


def choose_runtime(use_gpu: bool | None = None, device: torch.device | str | None = None) -> Runtime:
    """Pick the runtime. ``use_gpu=None`` means "a GPU if one is visible"; ``device`` pins the
    exact device (inside Ray Train workers this is ``ray.train.torch.get_device()``)."""
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError("use_gpu=True but no CUDA device is visible to this process")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        return Runtime(device=device, backend="nccl", dtype=torch.bfloat16)
    return Runtime(device=device, backend="gloo", dtype=torch.float32)


def deepspeed_env(runtime: Runtime) -> None:
    """Select DeepSpeed's accelerator before ``import deepspeed`` (it reads DS_ACCELERATOR once)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if runtime.is_cuda else "cpu")
