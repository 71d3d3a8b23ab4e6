"""Batch-1 generation latency, stage by stage, for a teacher and its students in one run
(METHOD.md section 6): text encoding, sampling and latent decoding, each timed after warm-up as
the median of repeats with the device synchronised. Network evaluations (NFE) and the share of
DiT blocks executed per evaluation are counted with hooks, not assumed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from presto_ray.distill.budget import BudgetSchedule
from presto_ray.distill.methods import method_of
from presto_ray.generate import MusicGenerator, Prompt, sampler_steps

PROMPT = Prompt("a calm piano piece in C major, 4/4, 90 BPM", bpm=90.0, seed=0)


@dataclass
class Case:
    """One way to sample a loaded model: label, sampler, steps (None = default), schedule (None =
    the model's own)."""

    label: str
    sampler: str
    steps: int | None = None
    schedule: BudgetSchedule | None = None


def cases_for(gen: MusicGenerator, teacher_steps: tuple[int, ...] = (), student_steps: tuple[int, ...] = (1, 2, 4)):
    """The cases the benchmark runs for a loaded role: the teacher at its default sampler (plus
    ``teacher_steps``); a layer-dropping student with its schedule and at full depth; a few-step
    student at ``student_steps``, with its schedule (presto-ls) and at full depth."""
    full = BudgetSchedule([], [])
    if gen.role == "teacher":
        return [Case("default", "teacher")] + [Case(f"{n} steps", "teacher", n) for n in teacher_steps]
    cases = []
    if gen.sampler == "teacher":
        cases.append(Case("schedule" if not gen.schedule.is_full else "default", "teacher"))
        if not gen.schedule.is_full:
            cases.append(Case("full depth", "teacher", schedule=full))
        return cases
    for n in student_steps:
        cases.append(Case(f"{n} steps" + (" + schedule" if not gen.schedule.is_full else ""), "pingpong", n))
        if not gen.schedule.is_full:
            cases.append(Case(f"{n} steps, full depth", "pingpong", n, schedule=full))
    return cases


@contextmanager
def counting(gen: MusicGenerator):
    """Count network evaluations (rows through the DiT) and rows through its blocks."""
    counts = {"evals": 0, "rows": 0, "block_rows": 0}
    net = gen.denoiser.net

    def on_net(module, args):
        counts["evals"] += 1
        counts["rows"] += args[0].shape[0]

    def on_block(module, args):
        counts["block_rows"] += args[0].shape[0]

    handles = [net.register_forward_pre_hook(on_net)] + [b.register_forward_pre_hook(on_block) for b in net.blocks]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(gen: MusicGenerator, case: Case, *, prompt: Prompt = PROMPT, repeats: int = 5, warmup: int = 1) -> dict:
    """Median stage times (seconds) of generating one clip for ``prompt``, and the counted NFE."""
    device = gen.runtime.device
    noise = gen.initial_noise([prompt])
    times: dict[str, list[float]] = {"text_s": [], "sampling_s": [], "decode_s": []}
    counts = {}
    for i in range(warmup + repeats):
        with counting(gen) as counts:
            _sync(device)
            t0 = time.perf_counter()
            cond = gen.condition([prompt])
            _sync(device)
            t1 = time.perf_counter()
            x = gen.sample_from(noise, cond, steps=case.steps, sampler=case.sampler, schedule=case.schedule)
            _sync(device)
            t2 = time.perf_counter()
            gen.decode(x)
            _sync(device)
            t3 = time.perf_counter()
        if i >= warmup:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(value)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["total_s"] = out["text_s"] + out["sampling_s"] + out["decode_s"]
    out["nfe"] = counts["evals"]
    depth = gen.export.cfg.model.depth
    out["block_fraction"] = counts["block_rows"] / (counts["rows"] * depth) if counts["rows"] else 0.0
    return out


def hardware() -> dict:
    """Where the numbers were measured."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def benchmark(teacher: str, students: list[str], *, repeats: int = 5, warmup: int = 1,
              teacher_steps: tuple[int, ...] = (4, 8), student_steps: tuple[int, ...] = (1, 2, 4),
              seconds: float | None = None, progress=print) -> dict:
    """Latency of the teacher (``teacher``: export/step/run folder) and each student, in one run.

    Returns the latency.json document: hardware, clip_seconds, repeats, and entries with model,
    role, method, case, sampler, steps, nfe, block_fraction, text_s, sampling_s, decode_s,
    total_s, rtf (clip seconds generated per second), sampling_speedup and total_speedup (vs the
    teacher's default sampler)."""
    prompt = Prompt(PROMPT.text, PROMPT.bpm, seconds, PROMPT.seed)
    entries = []
    clip_seconds = None
    for path, role in [(teacher, "teacher"), *((s, "generator") for s in students)]:
        gen = MusicGenerator(path, role=role)
        clip_seconds = gen.frames_for(seconds) * gen.export.cfg.codec.hop_length / gen.sample_rate
        method = method_of(gen.export.cfg, role).name
        for case in cases_for(gen, teacher_steps if role == "teacher" else (), student_steps):
            result = measure(gen, case, prompt=prompt, repeats=repeats, warmup=warmup)
            entry = {"model": str(path), "role": role, "method": method, "case": case.label, "sampler": case.sampler,
                     "steps": sampler_steps(gen.export.cfg, case.sampler, case.steps), **result,
                     "rtf": clip_seconds / result["total_s"]}
            entries.append(entry)
            if progress:
                progress(f"{method:10s} {case.label:24s} nfe={entry['nfe']:4d} sampling {1000 * entry['sampling_s']:9.1f} ms"
                         f"  total {1000 * entry['total_s']:9.1f} ms")
    base = entries[0]
    for e in entries:
        e["sampling_speedup"] = base["sampling_s"] / e["sampling_s"]
        e["total_speedup"] = base["total_s"] / e["total_s"]
    return {"hardware": hardware(), "clip_seconds": clip_seconds, "repeats": repeats, "warmup": warmup,
            "baseline": {"model": base["model"], "case": base["case"]}, "entries": entries}
