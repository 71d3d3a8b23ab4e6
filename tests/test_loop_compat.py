"""Checkpoints written before the one-loop change (issue #15) resume to the same weights.

tests/fixtures/loop_compat/runs holds a teacher run and a Presto-S run of a very small DiT as they
were at step 2, written by the two worker loops that train/loop.py replaced, and the weight digests
those loops reached when resumed to step 4 (expected.json; tests/fixtures/loop_compat/make.py
writes them). Today's loop resumes the same folders on the same data and must reach the same
digests: the same arithmetic, random draws and checkpoint layout.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "loop_compat"


def _maker():
    spec = importlib.util.spec_from_file_location("loop_compat_make", FIXTURES / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta(step_dir: Path) -> dict:
    return json.loads((step_dir / "meta.json").read_text())


@pytest.fixture(scope="module")
def old_runs(ray_cluster, tmp_path_factory):
    """(storage folder holding copies of the fixture runs, expected digests, the small data)."""
    make = _maker()
    expected = json.loads((FIXTURES / "runs" / "expected.json").read_text())
    storage = tmp_path_factory.mktemp("old-runs")
    for run in ("teacher", "student"):
        shutil.copytree(FIXTURES / "runs" / run, storage / run)
    # the student's checkpoint names its teacher by absolute path: point it at the copy
    moved = str(storage / "teacher" / "step_00000002" / "export")
    for path in (storage / "student" / "step_00000002" / "meta.json", storage / "student" / "config.yaml"):
        path.write_text(path.read_text().replace(expected["teacher_export"], moved))
    ds, stats = make.data(make.config(storage, "teacher", 4))
    return make, storage, expected, moved, ds, stats


@pytest.mark.timeout(600)
def test_a_teacher_checkpoint_from_before_resumes_to_the_same_weights(old_runs):
    from presto_ray.train.teacher import train_teacher

    make, storage, expected, _, ds, stats = old_runs
    train_teacher(make.config(storage, "teacher", 4), dataset=ds, stats=stats)
    meta = _meta(storage / "teacher" / "step_00000004")
    assert meta["resumed_from"] == 2
    assert meta["resumed_weights_sha256"] == _meta(storage / "teacher" / "step_00000002")["weights_sha256"]
    assert meta["weights_sha256"] == expected["teacher"]


@pytest.mark.timeout(600)
def test_a_presto_s_checkpoint_from_before_resumes_to_the_same_weights(old_runs):
    from presto_ray.train.distill import distill

    make, storage, expected, moved, ds, _ = old_runs
    student = ["distill.method=presto-s", f"distill.teacher={moved}", "distill.ttur=2"]
    distill(make.config(storage, "student", 4, student), dataset=ds)
    meta = _meta(storage / "student" / "step_00000004")
    assert meta["resumed_from"] == 2
    assert meta["weights_sha256"] == expected["presto-s"]
