"""`ray job submit` against a real Ray head on 127.0.0.1 with its job server and token
authentication: jobs/distill.py trains and checkpoints into storage, a resubmission with the same run
name resumes from that checkpoint, and a bad config key fails the job with the key in its logs.

The head is private to this module: its own temp dir, free ports, a token generated into a
temporary home, and teardown that stops only its own processes (never `ray stop`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from presto_ray.config import load_config
from presto_ray.data.stats import LatentStats
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.train.export import write_export

REPO = Path(__file__).resolve().parents[1]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the venv's interpreter runs the CLI and the head
# variables of the caller's environment that would point the head or the CLI at another cluster or token
CALLER_RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                   "RAY_AUTH_TOKEN_PATH", "RAY_NAMESPACE", "RAY_JOB_CONFIG_JSON_ENV_VAR")
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port")
# tiny Presto-S: 16 synthesised melodies, batch 4 on one worker, one guidance update per generator update
DISTILL_ARGS = ["--config", "tiny", "--method", "presto-s", "data.num_examples=16", "train.batch_size=4",
                "train.eval_batch=4", "train.log_every=1", "distill.ttur=1"]


@dataclass
class Head:
    url: str  # the job server, http://127.0.0.1:<dashboard port>
    env: dict  # what the CLI needs to reach it: token auth on, token file, no other cluster's address


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_with(marker: str) -> list[int]:
    """Pids whose environment holds ``marker`` (every process of our head inherits it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                pass
    return pids


def _wait_until_up(proc: subprocess.Popen, log: Path, url: str, token: str, deadline_s: float = 180) -> None:
    """Until `ray start --block` has reported the runtime started and the job server answers."""
    deadline = time.monotonic() + deadline_s
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if "Ray runtime started" in log.read_text():
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not come up in {deadline_s} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen, marker: str) -> None:
    """Stop our head: SIGTERM to `ray start --block` (it shuts its children down), then SIGKILL
    whatever of ours is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with the job server, token authentication and free ports."""
    base = {k: v for k, v in os.environ.items() if k not in CALLER_RAY_VARS}
    home = tmp_path_factory.mktemp("ray-home")
    # `ray get-auth-token --generate` writes ~/.ray/auth_token: generate it into a temporary home
    subprocess.run([*RAY, "get-auth-token", "--generate"], env={**base, "HOME": str(home)}, check=True,
                   capture_output=True, timeout=120)
    token_file = home / ".ray" / "auth_token"
    assert token_file.is_file() and token_file.read_text().strip()
    env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           # a single-node cluster bound to loopback (Ray otherwise resolves 127.0.0.1 to the host's address)
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    ports = dict(zip(HEAD_PORTS, _free_ports(len(HEAD_PORTS))))
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    # a short private temp dir: Ray's unix sockets live in it and their paths are length-limited
    temp_dir = Path(tempfile.mkdtemp(prefix="presto-rayjob-", dir="/tmp"))
    head_env = {**env,
                # the job's `python` is the venv's: the entrypoint runs through a shell with the head's PATH
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                # Ray's state API in workers then finds this head, not another cluster on the machine
                "RAY_API_SERVER_ADDRESS": url,
                # on SIGTERM shut down at once instead of draining the node for up to 30 s
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = temp_dir / "head.log"
    cmd = [*RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", f"--temp-dir={temp_dir}", "--num-cpus=4",
           "--object-store-memory=200000000", "--min-worker-port=0", "--max-worker-port=0",
           "--disable-usage-stats", *[f"--{name}={port}" for name, port in ports.items()]]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, cwd=temp_dir,
                                start_new_session=True)
    try:
        _wait_until_up(proc, log, url, token_file.read_text().strip())
        yield Head(url=url, env=env)
    finally:
        _stop(proc, str(token_file))
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _processes_with(str(token_file)), "processes of the test's Ray head are still running"


def _ray(head: Head, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*RAY, *args], env=env or head.env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _submit(head: Head, submission_id: str, *entrypoint: str) -> tuple[str, str]:
    """`ray job submit --working-dir .` from the repository root, which tails the job's logs until it
    ends; returns (final status as the CLI reports it, its output)."""
    out = _ray(head, "job", "submit", "--address", head.url, "--submission-id", submission_id,
               "--working-dir", ".", "--", *entrypoint)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # without the CLI's colours
    found = re.search(rf"Job '{submission_id}' (succeeded|failed|stopped)", text)
    assert found, text[-6000:]
    final = found.group(1).upper()
    assert (out.returncode == 0) == (final == "SUCCEEDED"), (out.returncode, final)
    return final, text


@pytest.fixture(scope="module")
def teacher_export(tmp_path_factory) -> Path:
    """An untrained tiny teacher written as an export folder (distillation only needs its shape)."""
    cfg = load_config("tiny")
    torch.manual_seed(0)
    stats = LatentStats(mean=torch.zeros(cfg.model.latent_channels), std=torch.ones(cfg.model.latent_channels),
                        sigma_data=cfg.edm.sigma_data)
    folder = tmp_path_factory.mktemp("teacher") / "export"
    write_export(folder, {"teacher": EDMPrecond(DiT1D(cfg.model), cfg.edm.sigma_data).state_dict()}, cfg, stats, 1)
    return folder


def _meta(step_dir: Path) -> dict:
    return json.loads((step_dir / "meta.json").read_text())


@pytest.mark.timeout(300)
def test_head_refuses_a_submission_without_the_token(ray_head, tmp_path):
    no_token = {k: v for k, v in ray_head.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    out = _ray(ray_head, "job", "submit", "--address", ray_head.url, "--no-wait", "--", "true", env=no_token,
               timeout=120)
    assert out.returncode != 0
    assert "authentication token" in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_job_runs_the_venv_python_on_the_uploaded_working_dir(ray_head):
    probe = ("import json, os, sys, presto_ray; print('PROBE', json.dumps({'prefix': sys.prefix, "
             "'package': presto_ray.__file__, 'cwd': os.getcwd(), 'files': sorted(os.listdir('.')), "
             "'address': os.environ.get('RAY_ADDRESS')}))")
    status, logs = _submit(ray_head, "probe", "python", "-c", probe)
    assert status == "SUCCEEDED", logs
    found = re.search(r"^PROBE (\{.*\})$", logs, re.M)
    assert found, logs
    seen = json.loads(found.group(1))
    assert seen["prefix"] == sys.prefix  # the venv the head was started from
    cwd = Path(seen["cwd"])
    assert cwd != REPO and cwd.name.startswith("_ray_pkg_")  # a copy unpacked by Ray, not the checkout
    assert Path(seen["package"]).is_relative_to(cwd)  # the uploaded code is what runs
    # .gitignore and Ray's default excludes keep the environment, git data and outputs out of the upload
    assert {"presto_ray", "jobs", "configs"} <= set(seen["files"])
    assert not {".venv", ".git", "runs", "quickstart", ".pytest_cache"} & set(seen["files"])
    assert seen["address"] and seen["address"].startswith("127.0.0.1:")  # Ray points the driver at its head


@pytest.mark.slow  # ~100 s: kept out of the default suite's 20 minutes; CI runs it when time allows
@pytest.mark.timeout(900)
def test_distill_job_checkpoints_and_resumes_when_resubmitted(ray_head, teacher_export, tmp_path):
    storage = tmp_path / "runs"
    common = ["python", "jobs/distill.py", *DISTILL_ARGS, "--teacher", str(teacher_export), "--run-name", "R",
              "--storage-path", str(storage)]
    status, logs = _submit(ray_head, "distill-1", *common, "train.steps=2", "train.eval_every=2",
                           "train.checkpoint_every=2")
    assert status == "SUCCEEDED", logs[-6000:]
    assert "joined Ray cluster at 127.0.0.1:" in logs  # the driver used the cluster it was submitted to
    run = storage / "R"
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000002"]
    first = _meta(run / "step_00000002")
    assert first["step"] == 2 and "resumed_from" not in first
    assert first["config"]["distill"]["method"] == "presto-s"
    assert json.loads((run / "step_00000002" / "export" / "export.json").read_text())["roles"]["generator"]

    # the same command with more steps continues the run from its checkpoint
    status, logs = _submit(ray_head, "distill-2", *common, "train.steps=3", "train.eval_every=3",
                           "train.checkpoint_every=3")
    assert status == "SUCCEEDED", logs[-6000:]
    assert sorted(p.name for p in run.glob("step_*")) == ["step_00000002", "step_00000003"]
    resumed = _meta(run / "step_00000003")
    assert resumed["step"] == 3
    assert resumed["resumed_from"] == 2
    assert resumed["resumed_weights_sha256"] == first["weights_sha256"]
    assert resumed["weights_sha256"] != first["weights_sha256"]  # and it trained on
    assert (run / "step_00000003" / "export" / "export.json").is_file()


@pytest.mark.timeout(300)
def test_unknown_config_key_fails_the_job_and_names_the_key(ray_head, teacher_export, tmp_path):
    status, logs = _submit(ray_head, "distill-bad-key", "python", "jobs/distill.py", *DISTILL_ARGS,
                           "--teacher", str(teacher_export), "--run-name", "bad", "--storage-path",
                           str(tmp_path / "runs"), "train.stepz=3")
    assert status == "FAILED", logs
    assert "unknown config key 'train.stepz'" in logs
    assert not (tmp_path / "runs" / "bad").exists()


def test_relative_paths_are_refused_inside_a_job(monkeypatch, tmp_path, capsys):
    """Inside a job the working dir is Ray's temporary copy: a relative run folder or output folder
    would vanish with it, so the CLI refuses them there (and only there) before doing any work."""
    from presto_ray.cli import main

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.chdir(tmp_path)
    assert main(["train-teacher", "--config", "tiny", "--run-name", "r"]) == 2  # preset storage_path: runs
    assert "run.storage_path='runs' is relative" in capsys.readouterr().err
    assert main(["prepare", "--config", "tiny", "--out", "data/tiny"]) == 2
    assert "--out='data/tiny' is relative" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "/x", "--data", "/y", "--out", "eval"]) == 2
    assert "--out='eval' is relative" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written
