"""``generate``: prompts -> WAV files from an exported (or checkpointed) model.

Stages: text encoding -> sampling in latent space -> de-normalisation with the dataset
statistics -> codec decode. The sampler follows the exported role: the teacher and layer-dropped
students (presto-l, ase) use Heun/Euler with CFG, the latter under their sigma -> budget schedule;
few-step students (presto-s, presto-ls, dmd2, cd) use ping-pong without CFG at
``distill.student_steps`` steps (presto-ls under its schedule). ``--steps`` and a replacement
budget schedule may be given at inference.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from presto_ray.data import storage
from presto_ray.data.stats import LatentStats
from presto_ray.distill.budget import BudgetSchedule, ScheduledDenoiser
from presto_ray.distill.methods import method_of
from presto_ray.edm import ClassifierFreeGuidance, EDMPrecond, karras_sigmas, sample_pingpong, sample_teacher
from presto_ray.models.codec import load_codec
from presto_ray.models.cond import Cond
from presto_ray.models.dit import DiT1D
from presto_ray.models.text import load_text_encoder
from presto_ray.runtime import Runtime, choose_runtime
from presto_ray.train.export import Exported, load_export

log = logging.getLogger("presto_ray.generate")


@dataclass
class Prompt:
    """One request: caption text, optional tempo, length in seconds and noise seed."""

    text: str
    bpm: float | None = None
    seconds: float | None = None
    seed: int = 0


def load_prompts(path: str | Path) -> list[Prompt]:
    """A ``.txt`` file (one caption per line) or ``.jsonl`` (objects with prompt/text, bpm,
    seconds, seed). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file '{path}' does not exist")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
                text = obj.get("prompt", obj.get("text"))
                if not isinstance(text, str):
                    raise ValueError("no 'prompt' string")
                prompts.append(Prompt(text, obj.get("bpm"), obj.get("seconds"), int(obj.get("seed", n - 1))))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}:{n}: {err}") from None
        else:
            prompts.append(Prompt(line.strip(), seed=n - 1))
    if not prompts:
        raise ValueError(f"prompts file '{path}' holds no prompts")
    return prompts


def default_sampler(cfg, role: str) -> str:
    """The sampler a ``role`` of an export with config ``cfg`` was trained for: "pingpong" for
    few-step students, else "teacher" (Heun/Euler with CFG)."""
    return method_of(cfg, role).sampler


def sampler_steps(cfg, sampler: str, steps: int | None) -> int:
    """The step count of ``sampler`` ("pingpong" or "teacher") for an export with config ``cfg``:
    ``steps``, or when it is None the export's default (``distill.student_steps`` for ping-pong,
    ``sampler.steps`` for Heun/Euler). A count that is not an integer >= 1 raises ValueError
    (0 is an error, never "the default")."""
    if steps is None:
        return cfg.distill.student_steps if sampler == "pingpong" else cfg.sampler.steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_prompts(prompts: list[Prompt]) -> None:
    """Refuse an empty list and empty or whitespace-only captions (ValueError naming the prompt's
    index); called before any model is loaded."""
    if not prompts:
        raise ValueError("no prompts given")
    for i, p in enumerate(prompts):
        if not p.text.strip():
            raise ValueError(f"prompt {i} is empty")


def resolve_role(exported: Exported, role: str = "auto") -> str:
    """"auto" -> the student ``generator`` when the export has one, else ``teacher``."""
    return ("generator" if "generator" in exported.roles else "teacher") if role == "auto" else role


def out_of_range_share(stats: LatentStats, outside: int, decoded: int) -> float | None:
    """Share of ``decoded`` latent values that lay outside the data's range (``outside`` of them,
    as :meth:`MusicGenerator.decode` counts them); None when nothing was decoded or ``stats``
    record no range."""
    if not decoded or stats.low is None:
        return None
    return outside / decoded


class MusicGenerator:
    """Loads one exported role and turns prompts into waveforms."""

    def __init__(self, checkpoint: str, role: str = "auto", runtime: Runtime | None = None,
                 budget_schedule: BudgetSchedule | None = None):
        """checkpoint: export, step or run folder (local or s3://); role: "auto" (the student
        ``generator`` when the export has one, else ``teacher``) or a role name; budget_schedule:
        replaces the exported sigma -> budget schedule (layer-dropping students)."""
        self.runtime = runtime or choose_runtime()
        self._tmp = tempfile.TemporaryDirectory(prefix="presto-export-") if storage.is_remote(checkpoint) else None
        local = storage.fetch_dir(checkpoint, Path(self._tmp.name) if self._tmp else Path("."))
        self.export: Exported = load_export(local)
        role = resolve_role(self.export, role)
        cfg = self.export.cfg
        net = DiT1D(cfg.model)
        self.denoiser = EDMPrecond(net, cfg.edm.sigma_data)
        missing, unexpected = self.denoiser.load_state_dict(self.export.state_dict(role), strict=False)
        if missing or unexpected:
            raise ValueError(f"{self.export.folder}: weights do not fit the model config "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.denoiser.to(self.runtime.device).eval()
        self.codec = load_codec(cfg.codec)
        self.text = load_text_encoder(cfg.text, device=self.runtime.device)
        self.role = role
        method = method_of(cfg, role)
        if budget_schedule is not None and not budget_schedule.is_full and not method.uses_budget_schedule:
            raise ValueError(f"{self.export.folder}: --budget-schedule needs a layer-dropping student "
                             f"(presto-l, ase, presto-ls); this is the {role} of a {method.name} run")
        trained = method.budget_schedule(cfg)
        self.schedule = budget_schedule or trained
        self.schedule.validate(cfg.model.depth, method.lowest_budget(cfg.model))
        self.decoded_values = 0  # raw latent values decoded so far ...
        self.out_of_range_values = 0  # ... and how many of them lay outside the data's range (clamped)

    @property
    def sampler(self) -> str:
        """"pingpong" for few-step students, else "teacher" (Heun/Euler with CFG)."""
        return default_sampler(self.export.cfg, self.role)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def frames_for(self, seconds: float | None) -> int:
        cfg = self.export.cfg
        if seconds is None:
            return cfg.model.latent_frames
        frames = self.codec.frames_for(int(round(seconds * self.codec.sample_rate)))
        return max(cfg.model.patch, int(math.ceil(frames / cfg.model.patch)) * cfg.model.patch)

    def condition(self, prompts: list[Prompt]) -> Cond:
        tokens, mask = self.text.encode([p.text for p in prompts])
        bpm = torch.tensor([math.nan if p.bpm is None else float(p.bpm) for p in prompts])
        return Cond(tokens=tokens, mask=mask, bpm=bpm).to(self.runtime.device)

    def initial_noise(self, prompts: list[Prompt]) -> torch.Tensor:
        """Per-prompt seeded N(0, I) noise [B, C, T] for prompts of one length."""
        cfg = self.export.cfg
        frames = {self.frames_for(p.seconds) for p in prompts}
        if len(frames) != 1:
            raise ValueError("sample_latents takes prompts of one length; use generate() for mixed lengths")
        shape = (cfg.model.latent_channels, frames.pop())
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(p.seed)) for p in prompts])
        return noise.to(self.runtime.device)

    @torch.no_grad()
    def sample_latents(self, prompts: list[Prompt], **kw) -> torch.Tensor:
        """Prompts of equal length -> normalised latents [B, C, T]; ``kw`` as in :meth:`sample_from`."""
        return self.sample_from(self.initial_noise(prompts), self.condition(prompts), seed=prompts[0].seed + 1, **kw)

    @torch.no_grad()
    def sample_from(self, noise: torch.Tensor, cond: Cond, *, seed: int = 1, steps: int | None = None,
                    cfg_scale: float | None = None, cfg_rescale: float | None = None, s_churn: float | None = None,
                    sampler: str | None = None,
                    schedule: BudgetSchedule | None = None, progress: bool = False, **sampler_kw) -> torch.Tensor:
        """Noise [B, C, T] + condition -> normalised latents [B, C, T].

        sampler: "teacher" (Heun/Euler + CFG) or "pingpong" (default: what the exported role was
        trained for, see :attr:`sampler`); schedule: overrides this generator's budget schedule
        (``BudgetSchedule([], [])`` = full depth); seed: the sampler's own noise (churn, ping-pong).
        cfg_scale, cfg_rescale, s_churn: replace the exported ``sampler`` settings (teacher sampler;
        ``cfg_rescale`` wherever guidance is used). Ping-pong
        takes ``cfg_scale`` only for the teacher role (an undistilled control: the teacher's weights
        under the student's sampler); None there means no guidance."""
        cfg = self.export.cfg
        sampler = sampler or self.sampler
        steps = sampler_steps(cfg, sampler, steps)
        schedule = self.schedule if schedule is None else schedule
        denoiser = self.denoiser if schedule.is_full else ScheduledDenoiser(self.denoiser, schedule)
        rescale = cfg.sampler.cfg_rescale if cfg_rescale is None else cfg_rescale
        gen = torch.Generator(device=self.runtime.device).manual_seed(seed)
        with self.runtime.autocast():
            if sampler == "pingpong":
                if cfg_scale is not None and self.role != "teacher":
                    raise ValueError("--cfg-scale does not apply to a few-step student: guidance is distilled in")
                sigmas = karras_sigmas(steps, cfg.edm.sigma_min, cfg.edm.sigma_max, cfg.distill.student_rho,
                                       device=self.runtime.device)
                if cfg_scale is not None:  # the teacher's weights as an undistilled control, with guidance
                    denoiser = ClassifierFreeGuidance(denoiser, cfg_scale, rescale=rescale)
                x = sample_pingpong(denoiser, noise, sigmas, cond, generator=gen, progress=progress, **sampler_kw)
            else:
                sigmas = karras_sigmas(steps, cfg.edm.sigma_min, cfg.edm.sigma_max, cfg.sampler.rho,
                                       device=self.runtime.device)
                scale = cfg.sampler.cfg_scale if cfg_scale is None else cfg_scale
                churn = cfg.sampler.s_churn if s_churn is None else s_churn
                x = sample_teacher(ClassifierFreeGuidance(denoiser, scale, rescale=rescale), noise, sigmas, cond,
                                   solver=cfg.sampler.solver, s_churn=churn,
                                   s_tmin=cfg.sampler.s_tmin, s_tmax=cfg.sampler.s_tmax,
                                   s_noise=cfg.sampler.s_noise, generator=gen, progress=progress, **sampler_kw)
        return x.float()

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Normalised latents [B, C, T] -> waveforms [B, n] float32. Raw values outside the data's
        per-channel range (where the export records one) are clamped to it before the codec and
        counted in :attr:`out_of_range_values` (see :attr:`out_of_range_share`)."""
        latent, outside = self.export.stats.to_data_range(self.export.stats.denormalise(x.float().cpu()))
        self.decoded_values += latent.numel()
        self.out_of_range_values += outside
        return self.codec.decode(latent).cpu().numpy().astype(np.float32)

    @property
    def out_of_range_share(self) -> float | None:
        """:func:`out_of_range_share` of what this generator has decoded so far."""
        return out_of_range_share(self.export.stats, self.out_of_range_values, self.decoded_values)

    def generate(self, prompts: list[Prompt], *, batch_size: int = 8, progress: bool = True,
                 **kw) -> list[np.ndarray]:
        """Prompts -> one waveform [n] each, batched by length."""
        check_prompts(prompts)
        out: list[np.ndarray | None] = [None] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(self.frames_for(p.seconds), []).append(i)
        for idx in by_len.values():
            for lo in range(0, len(idx), batch_size):
                chunk = idx[lo:lo + batch_size]
                x = self.sample_latents([prompts[i] for i in chunk], progress=progress, **kw)
                for i, wav in zip(chunk, self.decode(x)):
                    out[i] = wav
        return out  # type: ignore[return-value]


def write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> Path:
    """Peak-safe 16-bit PCM WAV; written to a temporary name and renamed (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.wav")
    sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")
    tmp.replace(path)
    return path


def generate_files(checkpoint: str, prompts: list[Prompt], out_dir: str | Path, *, role: str = "auto",
                   budget_schedule: BudgetSchedule | None = None, **kw) -> list[Path]:
    """Generate one WAV per prompt into ``out_dir`` (``000_<slug>.wav``); returns the paths. The
    prompts are checked (:func:`check_prompts`) before the model is loaded."""
    check_prompts(prompts)
    gen = MusicGenerator(checkpoint, role=role, budget_schedule=budget_schedule)
    wavs = gen.generate(prompts, **kw)
    out = Path(out_dir)
    paths = []
    for i, (p, wav) in enumerate(zip(prompts, wavs)):
        slug = "".join(ch if ch.isalnum() else "_" for ch in p.text.lower())[:40].strip("_")
        paths.append(write_wav(out / f"{i:03d}_{slug}.wav", wav, gen.sample_rate))
    log.info("wrote %d files to %s", len(paths), out)
    return paths
