"""Stage bookkeeping for the quickstart: run a stage unless its output exists, time it, print it."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger("presto_ray.quickstart")


class Stages:
    """Runs named stages in order. ``seconds`` holds each stage's wall time (0.0 when skipped);
    ``skipped`` the names of stages whose output already existed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    @property
    def ran(self) -> list[str]:
        return [name for name in self.seconds if name not in self.skipped]

    def run(self, name: str, done: bool, fn: Callable[[], object]) -> None:
        """Call ``fn`` unless ``done`` (its output exists); record the time either way."""
        if name in self.seconds:
            raise ValueError(f"stage '{name}' ran twice")
        if done:
            self.seconds[name] = 0.0
            self.skipped.append(name)
            log.info("quickstart: %s: skipped (its output exists)", name)
            return
        t0 = time.perf_counter()
        log.info("quickstart: %s ...", name)
        fn()
        self.seconds[name] = time.perf_counter() - t0
        log.info("quickstart: %s: %.1f s", name, self.seconds[name])

    def lines(self) -> list[str]:
        width = max((len(n) for n in self.seconds), default=0)
        return [f"  {name:<{width}}  " + ("skipped" if name in self.skipped else f"{secs:7.1f} s")
                for name, secs in self.seconds.items()]
