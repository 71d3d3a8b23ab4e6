"""Export folders (safetensors + config + statistics, checksummed) and generation from them,
through the library and the CLI. A small random-weight DiT stands in for a trained one here; the
trained path is covered in test_train_teacher.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from presto_ray.config import load_config
from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.train.export import ExportError, copy_export, find_export, load_export, write_export


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", ["model.depth=2", "sampler.steps=3", "codec.griffin_lim_iters=4"])


def _weights(cfg, seed=0):
    torch.manual_seed(seed)
    model = EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.state_dict()


def _stats(cfg):
    c = cfg.model.latent_channels
    return LatentStats(mean=torch.full((c,), -4.0), std=torch.full((c,), 2.0), sigma_data=cfg.edm.sigma_data)


def _run_with_steps(tmp_path, cfg, steps=(10, 20)):
    run = tmp_path / "run"
    for s in steps:
        write_export(run / f"step_{s:08d}" / "export", {"teacher": _weights(cfg, s)}, cfg, _stats(cfg), s)
    return run


def test_export_round_trip_and_resolution(tmp_path, cfg):
    run = _run_with_steps(tmp_path, cfg)
    exported = load_export(run)  # a run folder resolves to its newest step
    assert exported.step == 20 and exported.cfg == cfg
    torch.testing.assert_close(exported.stats.mean, _stats(cfg).mean)
    for k, v in _weights(cfg, 20).items():
        torch.testing.assert_close(exported.state_dict("teacher")[k], v)
    assert load_export(run / "step_00000010").step == 10
    assert find_export(run / "step_00000010" / "export") == run / "step_00000010" / "export"


def test_incomplete_newest_step_is_skipped_and_corruption_refused(tmp_path, cfg):
    run = _run_with_steps(tmp_path, cfg)
    (run / "step_00000030" / "export").mkdir(parents=True)  # a copy cut short: no export.json
    assert load_export(run).step == 20
    weights = run / "step_00000020" / "export" / "teacher.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert load_export(run).step == 10  # a run folder falls back to the newest intact checkpoint
    with pytest.raises(ExportError, match="teacher.safetensors: checksum"):
        load_export(run / "step_00000020").state_dict("teacher")
    with pytest.raises(ExportError, match="no role 'generator'"):
        load_export(run / "step_00000010").state_dict("generator")
    with pytest.raises(ExportError, match="no export.json"):
        find_export(tmp_path / "nowhere")


def test_copy_export_verifies_then_copies(tmp_path, cfg):
    run = _run_with_steps(tmp_path, cfg)
    dest = tmp_path / "shipped"
    copy_export(str(run), str(dest))
    assert json.loads((dest / "export.json").read_text())["step"] == 20
    assert load_export(dest).state_dict("teacher").keys() == _weights(cfg).keys()


def test_generate_library_is_seeded_and_sized(tmp_path, cfg):
    from presto_ray.generate import MusicGenerator, Prompt

    gen = MusicGenerator(str(_run_with_steps(tmp_path, cfg)))
    prompts = [Prompt("a pure sine melody at 70 BPM", bpm=70, seed=5), Prompt("bright sawtooth, 140 BPM", seed=6),
               Prompt("a pure sine melody at 70 BPM", bpm=70, seed=5, seconds=2.0)]
    a, b, short = gen.generate(prompts, progress=False)
    hop = cfg.codec.hop_length
    assert a.shape == (cfg.model.latent_frames * hop,)
    assert short.shape == (gen.frames_for(2.0) * hop,) and gen.frames_for(2.0) % cfg.model.patch == 0
    x1 = gen.sample_latents([prompts[0]])
    x2 = gen.sample_latents([prompts[0]])
    torch.testing.assert_close(x1, x2)  # same seed, same sample
    assert not torch.allclose(x1, gen.sample_latents([prompts[1]]))
    assert not torch.allclose(x1, gen.sample_latents([prompts[0]], cfg_scale=1.0))  # guidance matters
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        gen.generate([Prompt("  ")])


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "presto_ray", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_generate_writes_wavs(tmp_path, cfg):
    run = _run_with_steps(tmp_path, cfg)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a hollow square-wave tune", "bpm": 120, "seed": 1}\n'
                       '{"prompt": "soft flute-like melody", "seconds": 1.5}\n')
    out = tmp_path / "wav"
    res = _cli("generate", "--checkpoint", str(run), "--prompt", "a low pure sine melody", "--bpm", "70",
               "--prompts-file", str(prompts), "--out", str(out), "--steps", "2")
    assert res.returncode == 0, res.stderr
    files = sorted(out.glob("*.wav"))
    assert len(files) == 3 and [str(f) for f in files] == res.stdout.split()
    audio, rate = sf.read(files[0])
    assert rate == cfg.codec.sample_rate and audio.shape == (cfg.model.latent_frames * cfg.codec.hop_length,)
    assert np.isfinite(audio).all()


def test_cli_help_and_errors(tmp_path):
    res = _cli("--help")
    assert res.returncode == 0
    for command in ["prepare", "train-teacher", "distill", "evaluate", "benchmark", "report", "generate", "validate",
                    "export", "sweep", "quickstart"]:
        assert command in res.stdout
    res = _cli("sweep")  # a sweep kind is required
    assert res.returncode == 2 and "layer-drop" in res.stderr and "loss-weights" in res.stderr
    res = _cli("sweep", "layer-drop", "--checkpoint", "x", "--data", "y", "--out", "z", "--space", str(tmp_path / "no.yaml"))
    assert res.returncode == 2 and "no.yaml" in res.stderr
    res = _cli("distill", "--config", "tiny")  # refused before Ray starts
    assert res.returncode == 2 and "distill.teacher" in res.stderr
    res = _cli("distill", "--method", "presto-l", "--teacher", str(tmp_path / "no-teacher"))
    assert res.returncode == 2 and str(tmp_path / "no-teacher") in res.stderr
    res = _cli("train-teacher", "--config", "tiny", "model.depht=3")
    assert res.returncode == 2 and "unknown config key 'model.depht'" in res.stderr
    res = _cli("train-teacher", "--run-name", "x", "train.lr=fast")  # overrides after options too
    assert res.returncode == 2 and "config key 'train.lr'" in res.stderr
    res = _cli("generate", "--checkpoint", "x", "--bogus")
    assert res.returncode == 2 and "unrecognized arguments: --bogus" in res.stderr
    res = _cli("generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x")
    assert res.returncode == 2 and str(tmp_path / "missing") in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"bpm": 3}\n')
    res = _cli("generate", "--checkpoint", str(tmp_path), "--prompts-file", str(bad))
    assert res.returncode == 2 and f"{bad}:2" in res.stderr


def test_step_counts_are_checked_not_defaulted(tmp_path, cfg):
    from presto_ray.eval.evaluate import Sampling
    from presto_ray.generate import MusicGenerator, Prompt, sampler_steps

    assert sampler_steps(cfg, "teacher", None) == cfg.sampler.steps == 3
    assert sampler_steps(cfg, "pingpong", None) == cfg.distill.student_steps
    assert sampler_steps(cfg, "teacher", 5) == 5
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {bad!r}"):
            sampler_steps(cfg, "teacher", bad)
    gen = MusicGenerator(str(_run_with_steps(tmp_path, cfg)))
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        gen.sample_latents([Prompt("a pure sine melody")], steps=0)  # never the default's 3 steps
    with pytest.raises(ValueError, match="got 0"):
        Sampling(steps=0).resolved(gen.export)
    assert Sampling(steps=None).resolved(gen.export)["steps"] == 3


def test_cli_refuses_bad_counts_and_empty_prompts_before_any_model_loads(tmp_path, capsys):
    from presto_ray.cli import main

    missing = str(tmp_path / "no-checkpoint")  # a model load would fail naming this path
    for argv, option in [(["generate", "--checkpoint", missing, "--prompt", "x", "--steps", "0"], "--steps"),
                         (["generate", "--checkpoint", missing, "--prompt", "x", "--batch-size", "-1"], "--batch-size"),
                         (["benchmark", "--teacher", missing, "--teacher-steps", "4,0"], "--teacher-steps"),
                         (["benchmark", "--teacher", missing, "--warmup", "-1"], "--warmup"),
                         (["prepare", "--out", missing, "--items", "0"], "--items")]:
        with pytest.raises(SystemExit) as err:
            main(argv)
        stderr = capsys.readouterr().err
        assert err.value.code == 2 and f"argument {option}: must be >= " in stderr and missing not in stderr
    for prompt in ("", "   "):
        assert main(["generate", "--checkpoint", missing, "--prompt", "a flute", "--prompt", prompt]) == 2
        stderr = capsys.readouterr().err
        assert stderr.strip().splitlines() == ["presto-ray generate: error: prompt 1 is empty"]


def test_decode_clamps_to_the_data_range_and_counts(tmp_path, cfg):
    """Raw latent values beyond the data's per-channel range (recorded by prepare, carried by the
    export) are clamped before the codec and counted; an export without a range decodes as it is."""
    from presto_ray.generate import MusicGenerator

    c, t = cfg.model.latent_channels, cfg.model.latent_frames
    data = torch.randn(6, c, t, generator=torch.Generator().manual_seed(0)) * 2 - 4
    stats = LatentStats.from_latents(data, cfg.edm.sigma_data)
    torch.testing.assert_close(stats.low, data.amin((0, 2)))
    torch.testing.assert_close(stats.high, data.amax((0, 2)))
    back = LatentStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    torch.testing.assert_close(back.high, stats.high)
    write_export(tmp_path / "ranged", {"teacher": _weights(cfg)}, cfg, stats, 1)
    gen = MusicGenerator(str(tmp_path / "ranged"))
    torch.testing.assert_close(gen.export.stats.low, stats.low)
    x = stats.normalise(data[:2]) * 0.9  # inside the range (towards the channel means)
    x[0, 3, :5] += 50.0  # five values far above channel 3's largest
    x[1, 7, 10] -= 50.0  # one far below channel 7's smallest
    wav = gen.decode(x)
    assert (gen.out_of_range_values, gen.decoded_values) == (6, 2 * c * t)
    assert gen.out_of_range_share == pytest.approx(6 / (2 * c * t))
    clamped = torch.minimum(torch.maximum(stats.denormalise(x), stats.low.view(1, -1, 1)), stats.high.view(1, -1, 1))
    np.testing.assert_array_equal(wav, gen.codec.decode(clamped).numpy())
    plain = MusicGenerator(str(_run_with_steps(tmp_path, cfg)))  # statistics without a range
    assert plain.export.stats.low is None
    np.testing.assert_array_equal(plain.decode(x), gen.codec.decode(plain.export.stats.denormalise(x)).numpy())
    assert plain.out_of_range_values == 0 and plain.out_of_range_share is None
