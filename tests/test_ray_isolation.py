"""A training run shares the machine with other Ray instances, and a killed run leaves nothing.

The run under test is the CLI (`presto-ray train-teacher`, tiny, 2 workers) in a process of its own,
starting its own local cluster as a user's run does. Other Ray instances are started and stopped
beside it in separate processes: ``ray.init()`` with the default dashboard (the instance that once
made Ray Train's placement-group cleaner read the run's controller as dead), ``ray.init()`` without
a dashboard and a ``ray start --head --block`` node. Every Ray instance here has a temp dir of its
own (RAY_TMPDIR), which is also how the test finds and stops only the processes it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

STEPS = 600
STARTED = "Started training worker group of size 2"


def _short_dir(prefix: str) -> Path:
    """A short temp dir under /tmp: Ray's socket paths under a pytest tmp_path exceed the 107-byte limit."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _env(ray_tmp: Path) -> dict:
    """This process's environment without any Ray address (the test session's own cluster pins one)
    and with a Ray temp dir of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = str(ray_tmp)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    return env


def _processes_of(ray_tmp: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``ray_tmp`` (a Ray instance's GCS, raylet, agents, workers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(ray_tmp) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _wait_gone(ray_tmp: Path, timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for every process of ``ray_tmp`` to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    while (left := _processes_of(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def _kill_all(ray_tmp: Path) -> None:
    for proc in _processes_of(ray_tmp):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _train(root: Path, ray_tmp: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "presto_ray", "train-teacher", "--config", "tiny", "data.num_examples=64",
           "train.batch_size=8", "train.num_workers=2", f"train.steps={STEPS}", "train.checkpoint_every=300",
           "train.log_every=100", "--storage-path", str(root / "runs"), "--run-name", "iso"]
    return subprocess.Popen(cmd, cwd=root, env=_env(ray_tmp), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before '{text}':\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"no '{text}' in the run's log after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _ray_init(ray_tmp: Path, hold_s: float, dashboard: bool) -> subprocess.CompletedProcess:
    """A driver that starts its own local Ray instance (default settings, or without a dashboard),
    holds it ``hold_s`` seconds and shuts it down."""
    kw = "" if dashboard else "include_dashboard=False"
    code = f"import ray, time; ray.init({kw}); print('UP', flush=True); time.sleep({hold_s}); ray.shutdown()"
    return subprocess.run([sys.executable, "-c", code], env=_env(ray_tmp), capture_output=True, text=True,
                          timeout=300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start_head(ray_tmp: Path, hold_s: float) -> str:
    """``ray start --head --block`` (default dashboard settings) held ``hold_s`` s, then stopped by a
    SIGTERM to its own process (never ``ray stop``, which stops every Ray instance of the user)."""
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={_free_port()}",
                             f"--temp-dir={ray_tmp}", "--num-cpus=1"], env=_env(ray_tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    time.sleep(hold_s)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert alive, f"`ray start --head --block` exited early:\n{out[-2000:]}"
    return out


def test_training_survives_other_ray_instances_starting_and_stopping():
    root = _short_dir("iso-run-")
    run_tmp, others = root / "ray", [_short_dir("iso-other-") for _ in range(3)]
    log = root / "train.log"
    run = _train(root, run_tmp, log)
    try:
        _wait_for(log, STARTED, run, timeout=400)
        with_dashboard = _ray_init(others[0], hold_s=45, dashboard=True)
        assert with_dashboard.returncode == 0 and "UP" in with_dashboard.stdout, with_dashboard.stderr[-2000:]
        assert run.poll() is None, "the run ended before the other instances were all started: raise STEPS"
        without = _ray_init(others[1], hold_s=10, dashboard=False)
        assert without.returncode == 0 and "UP" in without.stdout, without.stderr[-2000:]
        _ray_start_head(others[2], hold_s=30)
        assert run.poll() is None, "the run ended before the other instances were all started: raise STEPS"
        rc = run.wait(timeout=900)
        text = log.read_text(errors="replace")
        assert rc == 0, f"the run failed beside other Ray instances:\n{text[-4000:]}"
        assert not re.search(r"health check failed|placement group was removed", text), text[-4000:]
        assert text.count(STARTED) == 1, "the worker group was restarted"
        assert (root / "runs" / "iso" / f"step_{STEPS:08d}" / "export" / "export.json").is_file()
        for other in others:  # every instance stopped cleanly: nothing of theirs is left
            assert not _wait_gone(other, 60), f"processes of {other} are still alive"
        assert not _wait_gone(run_tmp, 60), "processes of the finished run are still alive"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for tmp in (run_tmp, *others):
            _kill_all(tmp)


def test_a_killed_run_leaves_no_process_and_resumes_to_its_step():
    root = _short_dir("iso-kill-")
    first_tmp, second_tmp = root / "ray1", root / "ray2"
    log = root / "first.log"
    run = _train(root, first_tmp, log)
    try:
        _wait_for(log, "step_00000300", run, timeout=600)  # the first checkpoint is written
        os.kill(run.pid, signal.SIGKILL)  # kill -9 of the driver, as a user would
        run.wait(timeout=60)
        left = _wait_gone(first_tmp, 90)
        assert not left, f"{len(left)} processes of the killed run still alive 90 s later: " + ", ".join(
            " ".join(p.cmdline()[:3]) for p in left if p.is_running())
        resumed = _train(root, second_tmp, root / "second.log")
        rc = resumed.wait(timeout=900)
        text = (root / "second.log").read_text(errors="replace")
        assert rc == 0, text[-4000:]
        last = root / "runs" / "iso" / f"step_{STEPS:08d}"
        assert (last / "export" / "export.json").is_file()
        # the record rank 0 writes into the checkpoint (workers' log lines reach the driver's
        # stdout through Ray's log monitor, which may drop or merge them under load)
        meta = json.loads((last / "meta.json").read_text())
        assert meta.get("resumed_from") == 300, f"the run did not resume from step 300: {meta.get('resumed_from')}"
        assert not _wait_gone(second_tmp, 60), "processes of the resumed run are still alive"
    finally:
        for tmp in (first_tmp, second_tmp):
            _kill_all(tmp)
