"""presto-ray benchmark: stage latencies for a teacher and its students in one run, with the
network evaluations and the share of DiT blocks counted by hooks."""

from __future__ import annotations

import json

import pytest
import torch

from presto_ray.cli import main
from presto_ray.config import load_config
from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMPrecond
from presto_ray.eval.latency import benchmark
from presto_ray.models.dit import DiT1D
from presto_ray.train.export import write_export


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    stats = LatentStats(mean=torch.zeros(32), std=torch.ones(32), sigma_data=0.5)
    base = ["sampler.steps=8", "model.latent_frames=64"]
    torch.manual_seed(0)
    teacher_cfg = load_config("tiny", base)
    write_export(root / "teacher", {"teacher": EDMPrecond(DiT1D(teacher_cfg.model), 0.5).state_dict()},
                 teacher_cfg, stats, 1)
    ps_cfg = load_config("tiny", [*base, "distill.method=presto-s"])
    write_export(root / "presto-s", {"generator": EDMPrecond(DiT1D(ps_cfg.model), 0.5).state_dict()}, ps_cfg, stats, 1)
    pl_cfg = load_config("tiny", [*base, "distill.method=presto-l", "model.budget_embedding=true",
                                  "distill.budget_schedule.edges=[1.0]", "distill.budget_schedule.budgets=[6,3]"])
    write_export(root / "presto-l", {"generator": EDMPrecond(DiT1D(pl_cfg.model), 0.5).state_dict()}, pl_cfg, stats, 1)
    return root


def test_benchmark_counts_evaluations_and_blocks_per_case(exports):
    doc = benchmark(str(exports / "teacher"), [str(exports / "presto-s"), str(exports / "presto-l")],
                    repeats=1, warmup=0, teacher_steps=(4,), student_steps=(1, 4), progress=None)
    by = {(e["method"], e["case"]): e for e in doc["entries"]}
    assert set(by) == {("teacher", "default"), ("teacher", "4 steps"), ("presto-s", "1 steps"),
                       ("presto-s", "4 steps"), ("presto-l", "schedule"), ("presto-l", "full depth")}
    # Heun with N steps makes 2N - 1 evaluations, each a conditional and an unconditional pass (CFG)
    assert by["teacher", "default"]["nfe"] == 2 * (2 * 8 - 1)
    assert by["teacher", "4 steps"]["nfe"] == 2 * (2 * 4 - 1)
    # ping-pong: one evaluation per step, no CFG
    assert by["presto-s", "1 steps"]["nfe"] == 1 and by["presto-s", "4 steps"]["nfe"] == 4
    # the layer student under its schedule runs 3 of 6 blocks below sigma 1 and all 6 above
    sched, full = by["presto-l", "schedule"], by["presto-l", "full depth"]
    assert full["block_fraction"] == 1.0 and sched["nfe"] == full["nfe"] == by["teacher", "default"]["nfe"]
    assert 0.5 < sched["block_fraction"] < 1.0
    for e in doc["entries"]:
        assert min(e["text_s"], e["sampling_s"], e["decode_s"]) > 0
        assert e["total_s"] == pytest.approx(e["text_s"] + e["sampling_s"] + e["decode_s"])
        assert e["sampling_speedup"] == pytest.approx(by["teacher", "default"]["sampling_s"] / e["sampling_s"])
    assert by["teacher", "default"]["sampling_speedup"] == 1.0
    assert doc["clip_seconds"] == pytest.approx(64 * 512 / 16000)
    assert {"platform", "cpu_count", "torch_threads"} <= set(doc["hardware"])


def test_cli_benchmark_writes_latency_json(exports, tmp_path):
    out = tmp_path / "latency.json"
    code = main(["benchmark", "--teacher", str(exports / "teacher"), "--student", str(exports / "presto-s"),
                 "--repeats", "1", "--warmup", "0", "--teacher-steps", "", "--student-steps", "2", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert [(e["method"], e["case"], e["nfe"]) for e in doc["entries"]] == [("teacher", "default", 30),
                                                                          ("presto-s", "2 steps", 2)]


def test_report_folds_latency_metrics_curves_and_audio_into_one_html(exports, tmp_path):
    import re

    import numpy as np
    import soundfile as sf

    latency = tmp_path / "latency.json"
    assert main(["benchmark", "--teacher", str(exports / "teacher"), "--student", str(exports / "presto-s"),
                 "--repeats", "1", "--warmup", "0", "--teacher-steps", "", "--student-steps", "1,4",
                 "--out", str(latency)]) == 0
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"entries": [{"method": "teacher", "case": "default", "fad": 2.5, "recall": 0.7},
                                               {"method": "presto-s", "case": "4 steps", "fad": 2.9, "recall": 0.6}]}))
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(2):
        sf.write(str(audio / f"{i:03d}_clip.wav"), 0.1 * np.sin(np.arange(16000) * 0.05 * (i + 1)), 16000)
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    writer = SummaryWriter(str(run / "tensorboard"))
    for step in range(1, 6):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.close()
    out = tmp_path / "report.html"
    assert main(["report", "--latency", str(latency), "--metrics", str(metrics), "--audio", str(audio),
                 "--run", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("<tr>") == 1 + 3 + 1 + 2  # latency header + 3 cases, quality header + 2 models
    # plot, curves, and one spectrogram strip for the audio folder (both clips side by side)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 1 + 1 + 1
    assert 'alt="mel spectrograms of audio"' in page
    assert 'alt="training curves of run"' in page
    assert len(re.findall(r'<audio [^>]*src="data:audio/wav;base64,', page)) == 2
    assert ">2.9<" in page and "presto-s" in page
    assert main(["report", "--latency", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
