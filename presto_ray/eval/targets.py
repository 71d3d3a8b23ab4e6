"""The paper's claims as checks on one side-by-side results document, and the markdown table of
``docs/results.md``. A claim about quality is decided by intervals: met or missed only when the
95% intervals are apart, "not resolved" otherwise (METHOD.md section 6).

Input: a quickstart-style metrics.json document (``presto_ray.quickstart.results.combine``): a list
of entries, each with ``method``, ``case`` (as ``benchmark`` names it: "default", "4 steps",
"4 steps + schedule", "schedule"), the quality metrics of ``evaluate`` and the latency figures of
``benchmark`` measured in the same run. Each target compares entries of that one document, so every
ratio is measured side by side. A target whose entries are missing is "not measured", never met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TEACHER_DEFAULT = ("teacher", "default")

CONTROLS = {
    "presto-s": ("{n} steps ping-pong (undistilled)", "{n} steps ping-pong + CFG (undistilled)"),
    "presto-ls": ("{n} steps ping-pong + schedule (undistilled)", None),
    "presto-l": ("schedule (undistilled)", None),
}
"""Each Presto student's undistilled controls, as case labels of teacher entries: the teacher's
weights under the student's sampler, steps and budget schedule (presto-s also with the CFG scale it
was distilled with, ``distill.w_real``); ``n``: the student's steps."""


@dataclass(frozen=True)
class Target:
    """One claim: ``name`` (what it says), ``entry`` / ``other`` ((method, case) pairs), the
    ``metric`` compared, and ``bound``: the entry's value must be <= bound x other's value
    (``lower=True``) or >= bound x other's value (``lower=False``); ``strict`` for "better than"
    (< or >: a tie is not enough)."""

    name: str
    entry: tuple[str, str]
    metric: str
    other: tuple[str, str]
    bound: float
    lower: bool
    strict: bool = False


@dataclass(frozen=True)
class Verdict:
    """A target checked: the two values and their 95% intervals (None when not measured or, for
    intervals, when the metric has none, as latency) and ``met``: True when the entry's interval
    clears ``bound`` x the other's interval in the claimed direction, False when it clears it in
    the other direction, None when the intervals overlap (``resolved`` False: "not resolved"), when
    not measured, or when ``vacuous`` (a floor of ``bound x 0`` that any value meets, e.g. recall
    kept at 0.8x a teacher whose recall is 0; never counted as met)."""

    target: Target
    value: float | None
    reference: float | None
    met: bool | None
    vacuous: bool = False
    value_ci: tuple[float, float] | None = None
    reference_ci: tuple[float, float] | None = None
    resolved: bool = True

    @property
    def status(self) -> str:
        if self.vacuous:
            return "vacuous"
        if self.value is not None and self.reference is not None and not self.resolved:
            return "not resolved"
        return {True: "met", False: "missed", None: "not measured"}[self.met]


def paper_targets(steps: int = 4) -> list[Target]:
    """The paper's claims at ``steps`` sampling steps, on KAD (the primary metric, lower is better)
    where they are about quality: Presto-S better than its undistilled controls, than the teacher
    at the same steps, and not worse than the teacher at its best; diversity kept; Presto-LS much
    faster, better than its control and not worse than the teacher; Presto-L better than its
    control; Presto-S ahead of dmd2 and cd, Presto-L ahead of ase."""
    s, ls, pl = ("presto-s", f"{steps} steps"), ("presto-ls", f"{steps} steps + schedule"), ("presto-l", "schedule")
    control = {m: ("teacher", c[0].format(n=steps)) for m, c in CONTROLS.items()}
    return [
        Target(f"Presto-S {steps} steps: KAD < its control ({control['presto-s'][1]})", s, "kad",
               control["presto-s"], 1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: KAD < its control ({CONTROLS['presto-s'][1].format(n=steps)})", s, "kad",
               ("teacher", CONTROLS["presto-s"][1].format(n=steps)), 1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: KAD <= teacher at its best sampler", s, "kad", TEACHER_DEFAULT, 1.0, True),
        Target(f"Presto-S {steps} steps: KAD < teacher at {steps} steps", s, "kad", ("teacher", f"{steps} steps"),
               1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: recall >= 0.8x teacher", s, "recall", TEACHER_DEFAULT, 0.8, False),
        Target(f"Presto-S {steps} steps: coverage >= 0.8x teacher", s, "coverage", TEACHER_DEFAULT, 0.8, False),
        Target(f"Presto-LS {steps} steps: sampling >= 20x faster than teacher", ls, "sampling_speedup",
               TEACHER_DEFAULT, 20.0, False),
        Target(f"Presto-LS {steps} steps: end to end >= 10x faster than teacher", ls, "total_speedup",
               TEACHER_DEFAULT, 10.0, False),
        Target(f"Presto-LS {steps} steps: KAD < its control ({control['presto-ls'][1]})", ls, "kad",
               control["presto-ls"], 1.0, True, strict=True),
        Target(f"Presto-LS {steps} steps: KAD <= teacher at its best sampler", ls, "kad", TEACHER_DEFAULT, 1.0, True),
        Target(f"Presto-L: KAD < its control ({control['presto-l'][1]})", pl, "kad", control["presto-l"], 1.0, True,
               strict=True),
        Target(f"Presto-S {steps} steps: KAD < dmd2 {steps} steps", s, "kad", ("dmd2", f"{steps} steps"),
               1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: KAD < cd {steps} steps", s, "kad", ("cd", f"{steps} steps"),
               1.0, True, strict=True),
        Target("Presto-L: KAD < ase at the same budget schedule", pl, "kad", ("ase", "schedule"), 1.0, True,
               strict=True),
    ]


def _value(entries: dict[tuple[str, str], dict], key: tuple[str, str], metric: str) -> float | None:
    entry = entries.get(key)
    value = None if entry is None else entry.get(metric)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _interval(entries: dict[tuple[str, str], dict], key: tuple[str, str], metric: str) -> tuple[float, float] | None:
    ci = (entries.get(key) or {}).get(f"{metric}_ci")
    if not ci or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in ci):
        return None
    return float(ci[0]), float(ci[1])


def _clears(a: float, b: float, strict: bool) -> bool:
    """a below b (strictly with ``strict``)."""
    return a < b if strict else a <= b


def check(doc: dict, targets: list[Target] | None = None) -> list[Verdict]:
    """Each target checked on ``doc``'s entries. An entry's interval ``<metric>_ci`` stands for its
    value where there is one (a point otherwise: latency). For a "lower" target the entry is met
    when its interval's top is below ``bound`` x the other's bottom, missed when its bottom is above
    ``bound`` x the other's top, and not resolved in between (mirrored for "higher"). Speed-ups are
    ratios to the teacher's default sampler already, so their reference value is 1."""
    entries = {(e["method"], e["case"]): e for e in doc["entries"]}
    verdicts = []
    for t in targets if targets is not None else paper_targets():
        value, reference = _value(entries, t.entry, t.metric), _value(entries, t.other, t.metric)
        if value is None or reference is None:
            verdicts.append(Verdict(t, value, reference, None))
            continue
        v_ci, r_ci = _interval(entries, t.entry, t.metric), _interval(entries, t.other, t.metric)
        (v_lo, v_hi), (r_lo, r_hi) = v_ci or (value, value), r_ci or (reference, reference)
        kept = dict(value_ci=v_ci, reference_ci=r_ci)
        if not t.lower and not t.strict and t.bound * r_hi == 0 and v_lo >= 0:
            verdicts.append(Verdict(t, value, reference, None, vacuous=True, **kept))
            continue
        if t.lower:
            met, missed = _clears(v_hi, t.bound * r_lo, t.strict), _clears(t.bound * r_hi, v_lo, not t.strict)
        else:
            met, missed = _clears(t.bound * r_hi, v_lo, t.strict), _clears(v_hi, t.bound * r_lo, not t.strict)
        verdicts.append(Verdict(t, value, reference, True if met else False if missed else None,
                                resolved=met or missed, **kept))
    return verdicts


RESULT_COLUMNS = [("label", "model", "{}"), ("train_steps", "trained", "{}"), ("steps", "steps", "{}"),
                  ("kad", "KAD [95% CI]", "{:.2f}"), ("mmd", "MMD", "{:.1f}"), ("fad", "FAD", "{:.2f}"),
                  ("recall", "recall", "{:.2f}"), ("coverage", "coverage", "{:.2f}"),
                  ("tempo_err_bpm", "tempo err (BPM)", "{:.1f}"), ("instrument_acc", "instrument acc", "{:.2f}"),
                  ("sampling_s", "sampling ms", "{:.1f}"), ("total_s", "end-to-end ms", "{:.1f}"),
                  ("sampling_speedup", "speed-up", "x{:.1f}"), ("total_speedup", "end-to-end speed-up", "x{:.1f}")]
WITH_INTERVAL = ("kad",)
"""Columns shown with their 95% interval (the others keep theirs in metrics.json)."""
FLOOR_LABEL = "data vs data (noise floor)"


def format_cell(key: str, fmt: str, value, interval=None, note: str | None = None) -> str:
    """A table cell: ``fmt`` applied to ``value`` (seconds ``*_s`` shown as ms) and, when given,
    to its ``interval`` as " [low, high]"; "n too small" when the value was refused for its sample
    size (``note`` says so), "-" when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n too small" if note and note.startswith("n too small") else "-"
    scale = 1000 if key.endswith("_s") else 1
    text = fmt.format(scale * value)
    if interval is not None and len(interval) == 2 and all(isinstance(x, (int, float)) for x in interval):
        text += f" [{fmt.format(scale * interval[0])}, {fmt.format(scale * interval[1])}]"
    return text


def entry_cells(entry: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    """The cells of one results entry (intervals on :data:`WITH_INTERVAL` columns)."""
    return [format_cell(k, f, entry.get(k), entry.get(f"{k}_ci") if k in WITH_INTERVAL else None,
                        entry.get(f"{k}_note")) for k, _, f in columns]


def floor_entry(doc: dict) -> dict | None:
    """The noise-floor row (the floor sample of the reference against the reference) of a results
    document, as an entry: label, kad, kad_ci, n_samples, loudness_outside_share."""
    floor = doc.get("floor")
    if not floor:
        return None
    return {"label": FLOOR_LABEL, "kad": floor.get("kad"), "kad_ci": floor.get("kad_ci"), "n_samples": floor.get("n"),
            "loudness_outside_share": floor.get("loudness_outside_share")}


def results_markdown(doc: dict, *, title: str, command: str, date: str) -> str:
    """``docs/results.md``: how the numbers were made (command, ``doc["hardware"]``, date, sample
    sizes and reference), one row per model and case with the paper's columns, the noise floor,
    and each target with its two values, their intervals and its status."""
    hw = doc.get("hardware")
    hardware = ", ".join(f"{k} {v}" for k, v in hw.items()) if isinstance(hw, dict) else str(hw)
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Hardware: {hardware}. Date: {date}.",
             f"Data: {doc.get('data')}. Embedding: {doc.get('embedding')}."]
    if doc.get("reference"):
        lines.append(f"Reference: {doc['reference']}.")
    if doc.get("samples"):
        lines.append(f"Clips per model: {doc['samples']}.")
    lines += ["Intervals: 95% percentile bootstrap over generated and reference clips. A target is met or missed "
              "only when the intervals are apart; otherwise it is not resolved at this sample size.", "",
              "| " + " | ".join(t for _, t, _ in RESULT_COLUMNS) + " |",
              "| " + " | ".join("---" for _ in RESULT_COLUMNS) + " |"]
    floor = floor_entry(doc)
    for e in doc["entries"] + ([floor] if floor else []):
        lines.append("| " + " | ".join(entry_cells(e, RESULT_COLUMNS)) + " |")
    lines += ["", "## Targets", "", "| target | measured | reference | status |", "| --- | --- | --- | --- |"]
    verdicts = check(doc)

    def fmt(x, ci) -> str:
        return "-" if x is None else f"{x:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")

    for v in verdicts:
        lines.append(f"| {v.target.name} | {fmt(v.value, v.value_ci)} | {fmt(v.reference, v.reference_ci)} | "
                     f"**{v.status}** |")
    if any(v.vacuous for v in verdicts):
        lines += ["", "vacuous: the teacher's value is 0, so the floor (a multiple of 0) holds for any value "
                      "and the target says nothing about this run."]
    return "\n".join(lines) + "\n"
