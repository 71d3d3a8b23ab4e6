"""The quickstart's results: the per-model metrics.json files of ``evaluate`` and the latency.json of
``benchmark`` folded into one metrics.json (one entry per model and case), and the final table.

Every entry has the keys of :data:`ENTRY_KEYS`; a value a stage did not produce is null. ``label``
is "<method> <case>" with the case named as ``benchmark`` names it, so report.html can put each
model on its latency-vs-FAD plot.
"""

from __future__ import annotations

import logging

from presto_ray.config import PrestoConfig
from presto_ray.distill.methods import method_for
from presto_ray.eval.loudness import LOUDNESS_KEYS
from presto_ray.eval.targets import entry_cells, floor_entry

log = logging.getLogger("presto_ray.quickstart")

DISTRIBUTION_KEYS = ("kad", "mmd", "fad", "precision", "density", "recall", "coverage")
"""Distribution metrics: each comes with ``<name>_ci`` (fad also with ``fad_note``)."""
QUALITY_KEYS = (*(k for name in DISTRIBUTION_KEYS for k in (name, f"{name}_ci")), "fad_note", "tempo_err_bpm",
                "tempo_err_octave_bpm", "key_acc", "instrument_acc", *LOUDNESS_KEYS, "latent_out_of_range_share")
LATENCY_KEYS = ("nfe", "block_fraction", "text_s", "sampling_s", "decode_s", "total_s", "sampling_speedup",
                "total_speedup")
ENTRY_KEYS = ("label", "name", "method", "case", "model", "control_of", "train_steps", "sampler", "steps",
              "cfg_scale", "n_samples", *QUALITY_KEYS, *LATENCY_KEYS)


def case_label(method: str, cfg: PrestoConfig, steps: int | None) -> str:
    """How ``presto_ray.eval.latency.cases_for`` names sampling a model of ``method`` (exported
    with ``cfg``) at ``steps`` (None: its default) under its own budget schedule."""
    sampled = method_for(method)
    if not sampled.distilled:
        return "default" if steps is None else f"{steps} steps"
    scheduled = not sampled.budget_schedule(cfg).is_full
    if not sampled.few_step:
        return "schedule" if scheduled else "default"
    return f"{cfg.distill.student_steps if steps is None else steps} steps" + (" + schedule" if scheduled else "")


def combine(evaluations: list[dict], latency: dict, curves: dict[str, list[dict]] | None = None) -> dict:
    """evaluations: dicts with name, case, train_steps, control_of and metrics (an evaluate()
    result); latency: a benchmark() document; curves: method -> points of
    :func:`presto_ray.eval.updates.update_curve`. Returns the quickstart's metrics.json document:
    data, embedding, reference (what the models were scored against), samples (clips per model),
    floor (the noise floor: kad, kad_ci, n, and loudness_outside_share: the floor sample's share
    of clips outside the reference's 1-99% loudness range), hardware, entries and curves. Entries
    carry the audio checks of :data:`~presto_ray.eval.loudness.LOUDNESS_KEYS`. Controls are not
    timed (they cost what their student costs); their latency fields are null."""
    timed = {(e["model"], e["case"]): e for e in latency["entries"]}
    entries = []
    for ev in evaluations:
        m = ev["metrics"]
        entry = {"label": f"{m['method']} {ev['case']}", "name": ev["name"], "method": m["method"], "case": ev["case"],
                 "model": m["model"], "control_of": ev.get("control_of"), "train_steps": ev["train_steps"],
                 "sampler": m["sampler"], "steps": m["steps"], "cfg_scale": m.get("cfg_scale"),
                 "n_samples": m["n_samples"], **{k: m.get(k) for k in QUALITY_KEYS}}
        lat = timed.get((m["model"], ev["case"]))
        if lat is None and not ev.get("control_of"):
            log.warning("latency.json has no case '%s' for %s", ev["case"], m["model"])
        entry.update({k: None if lat is None else lat[k] for k in LATENCY_KEYS})
        entries.append(entry)
    first = evaluations[0]["metrics"] if evaluations else {}
    return {"data": first.get("data"), "embedding": first.get("embedding"), "reference": first.get("reference"),
            "samples": first.get("n_samples"),
            "floor": {"kad": first.get("floor_kad"), "kad_ci": first.get("floor_kad_ci"), "n": first.get("n_floor"),
                      "loudness_outside_share": first.get("floor_loudness_outside_share")},
            "hardware": latency.get("hardware"), "entries": entries, "curves": curves or {}}


COLUMNS = [("label", "model", "{}"), ("train_steps", "trained", "{}"), ("steps", "steps", "{}"),
           ("kad", "KAD [95% CI]", "{:.2f}"), ("fad", "FAD", "{:.2f}"), ("recall", "recall", "{:.2f}"),
           ("coverage", "coverage", "{:.2f}"), ("tempo_err_bpm", "tempo err", "{:.1f}"),
           ("loudness_outside_share", "loud out", "{:.0%}"), ("clips_at_full_scale", "full-scale clips", "{}"),
           ("sampling_s", "sampling ms", "{:.1f}"), ("total_s", "total ms", "{:.1f}"),
           ("sampling_speedup", "speed-up", "x{:.1f}"), ("total_speedup", "end-to-end", "x{:.1f}")]


def table(doc: dict) -> str:
    """The final table of a metrics.json document as aligned text: model, training steps, sampling
    steps, KAD with its 95% interval, FAD ("n too small" below the sample-size rule), recall,
    coverage, tempo error (BPM), "loud out" (the share of clips outside the reference's 1-99%
    loudness range), "full-scale clips" (clips with any sample at full scale), batch-1 latency
    (sampling and end to end) and speed-ups over the teacher's default sampler; the noise floor last."""
    floor = floor_entry(doc)
    rows = [[title for _, title, _ in COLUMNS]] + [entry_cells(e, COLUMNS)
                                                  for e in doc["entries"] + ([floor] if floor else [])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
