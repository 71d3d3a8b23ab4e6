"""The local cluster ``ensure_ray`` starts: its worker processes run the log set-up hook."""

from __future__ import annotations

import json
import subprocess
import sys

from presto_ray.train.cluster import QUIET_WORKER_LOGGERS

PROBE = """
import json, logging, ray
from presto_ray.train.cluster import QUIET_WORKER_LOGGERS, ensure_ray

@ray.remote(num_cpus=0)
def levels():
    return {name: logging.getLogger(name).getEffectiveLevel() for name in QUIET_WORKER_LOGGERS}

ensure_ray(num_cpus=1)
print(json.dumps(ray.get(levels.remote())))
ray.shutdown()
"""


def test_local_cluster_workers_quiet_the_per_epoch_and_state_api_loggers():
    # a fresh process: the test session's own cluster was started by conftest, not ensure_ray
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    levels = json.loads(done.stdout.strip().splitlines()[-1])
    assert levels == QUIET_WORKER_LOGGERS
    assert all(level >= 30 for level in levels.values())  # WARNING or above: the INFO spam is gone
