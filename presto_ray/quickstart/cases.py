"""The quickstart's evaluations (one per table row: each model, the teacher at other steps, each
student's undistilled control) and the audio it keeps for listening."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from presto_ray.data import storage
from presto_ray.distill.methods import PRESTO_S, method_for
from presto_ray.eval.evaluate import Sampling
from presto_ray.eval.targets import CONTROLS
from presto_ray.quickstart.plan import Plan
from presto_ray.quickstart.results import case_label


@dataclass(frozen=True)
class EvalCase:
    """One row of the quickstart's table: ``name`` (its folder under eval/), ``run`` (the teacher
    run's name or a method: whose export), ``case`` (how the table names the sampling: the
    benchmark's case label where it is timed), ``sampling``, and ``control_of`` (the student whose
    undistilled control this row is: the teacher's weights sampled as that student is)."""

    name: str
    run: str
    case: str
    sampling: Sampling = Sampling()
    control_of: str | None = None


def eval_cases(plan: Plan, methods: tuple[str, ...], exported: dict) -> list[EvalCase]:
    """The evaluations of a quickstart: the teacher at its (chosen) default and at the plan's extra
    steps, each method's student, presto-s at the plan's extra steps, and the undistilled control
    of each Presto student (:data:`~presto_ray.eval.targets.CONTROLS`). ``exported``: loaded
    exports by run name (teacher and each method)."""
    cases = [EvalCase("teacher", "teacher", "default", Sampling(role="teacher"))]
    cases += [EvalCase(f"teacher-{n}-steps", "teacher", f"{n} steps", Sampling(role="teacher", steps=n))
              for n in plan.teacher_extra_steps]
    for m in methods:
        mcfg = exported[m].cfg
        cases.append(EvalCase(m, m, case_label(m, mcfg, None)))
        if method_for(m) is PRESTO_S:
            cases += [EvalCase(f"{m}-{n}-steps", m, case_label(m, mcfg, n), Sampling(steps=n))
                      for n in plan.student_extra_steps]
    for m in methods:
        if m not in CONTROLS:
            continue
        mcfg, method = exported[m].cfg, method_for(m)
        steps, schedule = mcfg.distill.student_steps, method.budget_schedule(mcfg)
        as_json = None if schedule.is_full else schedule.to_json()
        if not method.few_step:  # the student's own Heun sampler (steps, CFG, churn) under its schedule
            own = mcfg.sampler
            first = Sampling(role="teacher", sampler="teacher", steps=own.steps, cfg_scale=own.cfg_scale,
                             s_churn=own.s_churn, schedule=as_json)
        else:
            first = Sampling(role="teacher", sampler="pingpong", steps=steps, schedule=as_json)
        controls = [("", CONTROLS[m][0], first)]
        if CONTROLS[m][1]:  # also with the guidance (scale and rescale) the student was distilled with
            controls.append(("-cfg", CONTROLS[m][1], Sampling(role="teacher", sampler="pingpong", steps=steps,
                                                              cfg_scale=mcfg.distill.w_real,
                                                              cfg_rescale=mcfg.distill.cfg_rescale, schedule=as_json)))
        cases += [EvalCase(f"control-{m}{suffix}", "teacher", label.format(n=steps), sampling, control_of=m)
                  for suffix, label, sampling in controls]
    return cases


def write_json(path: Path, doc: dict) -> None:
    storage.write_bytes_atomic(str(path), json.dumps(doc, indent=2).encode())


def wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.wav") if not p.name.endswith(".part.wav"))


def write_reference_clips(valid: str, names: list[str], folder: Path, codec_cfg) -> None:
    """The first held-out latents decoded by the codec ("real audio through the codec"), under the
    file names the evaluations gave the same prompts."""
    import numpy as np
    import torch

    from presto_ray.eval.evaluate import held_out_rows
    from presto_ray.generate import write_wav
    from presto_ray.models.codec import load_codec

    codec = load_codec(codec_cfg)
    rows = held_out_rows(valid, len(names))
    latents = torch.from_numpy(np.stack([np.asarray(r["latent"], np.float32) for r in rows]))
    for name, wav in zip(names, codec.decode(latents).cpu().numpy()):
        write_wav(folder / name, wav, codec.sample_rate)


def collect_audio(evals: Path, names: list[str], audio: Path, clips: int, valid: str, codec_cfg) -> list[Path]:
    """DIR/audio/<name>/: the first ``clips`` evaluation clips of each model, and
    DIR/audio/reference/ with the real audio for the same prompts; returns the folders."""
    folders = [audio / "reference"] + [audio / n for n in names]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for name in names:
        for wav in wavs(evals / name / "audio")[:clips]:
            shutil.copyfile(wav, audio / name / wav.name)
    write_reference_clips(valid, [w.name for w in wavs(audio / names[0])], audio / "reference", codec_cfg)
    return folders
