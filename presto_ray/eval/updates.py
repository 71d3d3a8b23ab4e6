"""The primary metric against generator updates: every kept checkpoint of a distill run evaluated
on the same prompts, seeds and reference, so that saturation (or a student still moving) is
visible, and few-step methods are compared at equal generator updates (issue #18).

A method with :attr:`~presto_ray.distill.methods.Method.ttur` (presto-s, presto-ls, dmd2) updates its
generator on every ``ttur``-th iteration (iterations 0, ttur, 2 ttur, ...); the others on every one.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from presto_ray.data import storage
from presto_ray.distill.methods import method_for
from presto_ray.eval.evaluate import evaluate
from presto_ray.train.export import STEP_DIR, Exported, ExportError, load_export

log = logging.getLogger("presto_ray.updates")

def generator_updates(method: str, ttur: int, step: int) -> int:
    """Generator updates made in the first ``step`` iterations of a ``method`` run."""
    return math.ceil(step / ttur) if method_for(method).ttur else step


def checkpoint_exports(run_dir: Path) -> list[Exported]:
    """The export of every complete checkpoint of a run, oldest first."""
    out = []
    for folder in sorted(p for p in Path(run_dir).iterdir() if STEP_DIR.match(p.name)):
        try:
            out.append(load_export(folder / "export"))
        except ExportError:
            log.warning("%s: incomplete checkpoint, left out of the curve", folder)
    return out


def _point(exported: Exported, metrics: dict) -> dict:
    d, step = exported.cfg.distill, exported.step
    return {"step": step, "generator_updates": generator_updates(d.method, d.ttur, step),
            **{k: metrics.get(k) for k in ("kad", "kad_ci", "recall", "recall_ci", "coverage", "coverage_ci")}}


def update_curve(run_dir: str | Path, data_uri: str, out_dir: str | Path, *, n: int, reference: list[str] | None = None,
                 batch_size: int = 32, seed: int = 0, known: list[Path] = ()) -> dict:
    """Evaluate each checkpoint of the distill run at ``run_dir`` (one ``evaluate`` each, into
    ``out_dir/step_XXXXXXXX/``; an evaluation already there, or among the metrics.json files
    ``known`` (e.g. the run's own row), for the same export and ``n`` is reused) and write
    ``out_dir/curve.json``: method and points (step, generator_updates, kad, kad_ci, recall,
    coverage and their intervals), oldest first. Returns that document."""
    run_dir, out = Path(run_dir), Path(out_dir)
    exports = checkpoint_exports(run_dir)
    if not exports:
        raise ExportError(f"{run_dir}: no complete checkpoint to evaluate")
    method = exports[-1].cfg.distill.method
    points = []
    for exported in exports:
        folder, export = out / f"step_{exported.step:08d}", str(exported.folder)
        candidates = [storage.read_json_record(folder / "metrics.json")] + [storage.read_json_record(p) for p in known]
        done = next((c for c in candidates if c.get("model") == export and c.get("n_samples") == n
                     and c.get("seed", seed) == seed), {})
        if not done:
            done = evaluate(export, data_uri, folder, n=n, reference=reference, batch_size=batch_size, seed=seed,
                            write_audio=False)
        points.append(_point(exported, done))
        log.info("%s step %d (%d generator updates): KAD %.3g", method, exported.step,
                 points[-1]["generator_updates"], points[-1]["kad"])
    doc = {"method": method, "run": str(run_dir), "n": n, "points": points}
    storage.write_bytes_atomic(str(out / "curve.json"), json.dumps(doc, indent=2).encode())
    return doc


def curve_is_current(run_dir: str | Path, out_dir: str | Path, n: int) -> bool:
    """Whether ``out_dir/curve.json`` covers every checkpoint of the run at ``n`` clips."""
    doc = storage.read_json_record(Path(out_dir) / "curve.json")
    return doc.get("n") == n and [p["step"] for p in doc.get("points", [])] == [
        e.step for e in checkpoint_exports(Path(run_dir))]


def updates_figure(curves: dict[str, list[dict]], controls: dict[str, dict] | None = None):
    """KAD (with its 95% interval) against generator updates, one line per method; ``controls``
    (label -> {kad, kad_ci}) drawn as horizontal bands: a curve that stays inside its control's
    band has learned nothing measurable. A matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, points in curves.items():
        xs = [p["generator_updates"] for p in points]
        ys = [p["kad"] for p in points]
        err = [[p["kad"] - p["kad_ci"][0] for p in points], [p["kad_ci"][1] - p["kad"] for p in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=3, label=method)
    for i, (label, c) in enumerate((controls or {}).items()):
        lo, hi = c.get("kad_ci") or (c["kad"], c["kad"])
        ax.axhspan(lo, hi, color=f"C{len(curves) + i}", alpha=0.15, label=label)
    ax.set_xlabel("generator updates")
    ax.set_ylabel("KAD x1000 (lower is better)")
    ax.set_title("quality against generator updates (95% intervals)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig
