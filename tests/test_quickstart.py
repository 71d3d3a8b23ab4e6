"""The main job on the embedded default, at a reduced size, through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf


@pytest.mark.timeout(600)
def test_quickstart_runs_end_to_end_and_skips_finished_stages(tmp_path):
    out = tmp_path / "qs"
    args = [sys.executable, "-m", "presto_ray", "quickstart", "--out", str(out), "train.steps=20",
            "prepare.items=24", "prepare.split_fractions=[0.9,0.1,0.0]", "train.batch_size=8", "train.eval_every=10", "train.checkpoint_every=10"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=540)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_checkpoint"].endswith("step_00000020")
    assert summary["train_rows"] >= 16  # rendered music21 clips in the train split
    assert (out / "data" / "train" / "manifest.json").is_file()
    assert 0 < summary["final_eval_loss"] < 1.5
    assert len(summary["audio"]) == 3
    for wav in summary["audio"]:
        audio, rate = sf.read(wav)
        assert rate == 16000 and len(audio) == 128 * 512 and abs(audio).max() > 0
    assert "quickstart stages" in first.stdout

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    stages = json.loads((out / "summary.json").read_text())["stage_seconds"]
    assert stages["prepare_s"] < 1.0 and stages["train_teacher_s"] < 1.0 and stages["generate_s"] < 1.0
