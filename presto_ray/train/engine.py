"""One DeepSpeed engine per trained role.

Each role (teacher; generator and guidance in ``distill``) gets its own config dict (ZeRO stage, precision,
clipping) and its own torch AdamW optimizer, so one engine's backward never reaches another's
parameters. Checkpoints are read back without unpickling arbitrary objects: DeepSpeed's loader is
replaced by one that calls ``torch.load(weights_only=True)`` with an allow-list of the few plain
DeepSpeed/torch types its checkpoints contain.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from presto_ray.config import TrainConfig, deep_merge
from presto_ray.runtime import Runtime, deepspeed_env


def deepspeed_config(train: TrainConfig, runtime: Runtime) -> dict:
    """The DeepSpeed config dict for one role (micro-batch = train.batch_size per worker)."""
    zero: dict = {"stage": train.zero_stage}
    if train.zero_stage in (1, 2):
        # Large buckets: few flushes per backward. On CPU, gradients need no defragmenting copy and
        # a plain all-reduce beats reduce-scatter over gloo (measured: docs/benchmarks.md).
        zero.update({"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8})
        if not runtime.is_cuda:
            zero.update({"contiguous_gradients": False, "reduce_scatter": False})
    if train.zero_stage == 3:
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": False})
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": runtime.dtype == torch.bfloat16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "Ignore"},
    }
    return deep_merge(config, train.deepspeed)


def _warmup(warmup_steps: int):
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

    return factor


@dataclass
class RoleEngine:
    """A trained role: its name, the DeepSpeed engine (which owns module and optimizer)."""

    name: str
    engine: object  # deepspeed.DeepSpeedEngine

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def __call__(self, *args, **kw):
        """Forward through the engine (ZeRO-3 gathers the parameters it needs)."""
        return self.engine(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float | None:
        """Clip, optimiser step, zero gradients; returns the global gradient norm when DeepSpeed
        measured one."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    @property
    def zero_stage(self) -> int:
        return self.engine.zero_optimization_stage()

    def full_fp32_params(self):
        """Yield (name, fp32 tensor) for every parameter: DeepSpeed's fp32 master copy when there is
        one (ZeRO 1-3, bf16), else the parameter itself. Collective: call on every rank."""
        from deepspeed.utils import safe_get_full_fp32_param

        for name, p in self.module.named_parameters():
            master = safe_get_full_fp32_param(p)
            yield name, (master if master is not None else p).detach().float()

    def full_fp32_state(self) -> dict[str, torch.Tensor]:
        """{name: fp32 CPU tensor} of the whole model (see :meth:`full_fp32_params`)."""
        return {name: t.cpu().contiguous() for name, t in self.full_fp32_params()}

    def gathered(self):
        """Context in which every parameter of the module is whole on every rank (ZeRO-3 gathers)."""
        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()


def build_engine(name: str, module: torch.nn.Module, train: TrainConfig, runtime: Runtime) -> RoleEngine:
    """Wrap ``module`` in a DeepSpeed engine with AdamW and linear warm-up."""
    deepspeed_env(runtime)
    import deepspeed

    module = module.to(runtime.device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(train.warmup_steps))
    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=scheduler,
        config=deepspeed_config(train, runtime), dist_init_required=False,
    )
    engine.checkpoint_engine = safe_checkpoint_engine(engine.checkpoint_engine)
    return RoleEngine(name=name, engine=engine)


def build_inference_engine(module: torch.nn.Module, train: TrainConfig, runtime: Runtime):
    """A frozen module sharded with ZeRO-3 across the workers (no optimiser): each rank holds a
    slice of the weights and forward passes gather them block by block. For a teacher that does
    not fit whole on one device. Call it on every rank; every forward is collective."""
    deepspeed_env(runtime)
    import deepspeed

    config = deepspeed_config(train.model_copy(update={"zero_stage": 3}), runtime)
    config.pop("gradient_clipping", None)
    engine, _, _, _ = deepspeed.initialize(model=module.to(runtime.device), config=config, dist_init_required=False)
    engine.eval()
    return engine


def _deepspeed_safe_globals() -> list:
    """Types that DeepSpeed writes into its checkpoints besides tensors and builtins."""
    import argparse
    import collections

    from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [argparse.Namespace, collections.OrderedDict, torch.Size, ZeroStageEnum, LossScaler,
            DynamicLossScaler, fragment_address, collections.defaultdict, set]


def safe_checkpoint_engine(base):
    """Return a DeepSpeed checkpoint engine whose ``load`` never unpickles arbitrary objects."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if type(base) is not TorchCheckpointEngine:
        return base

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    safe = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
    safe.__dict__.update(base.__dict__)
    return safe


def weights_digest(role: RoleEngine) -> str:
    """sha256 over the role's parameters (fp32, ordered by name): equal digests = equal weights.
    Collective under ZeRO-3 (every rank must call it)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(role.full_fp32_state().items()):
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
