"""The paper's claims as checks on one side-by-side results document, and the markdown table of
``docs/results.md``.

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


@dataclass(frozen=True)
class Target:
    """One claim: ``name`` (what it says), ``entry`` / ``other`` ((method, case) pairs), the
    ``metric`` compared, and ``bound``: the entry's value must be <= bound * other's value
    (``lower=True``) or >= bound * other's value (``lower=False``); ``strict`` for "better than"
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
    """A target checked: the two values (None when not measured) and ``met`` (None when not measured,
    or when ``vacuous``: a floor of ``bound x 0`` that any value meets, e.g. recall kept at 0.8x a
    teacher whose recall is 0; such a target says nothing and is never counted as met)."""

    target: Target
    value: float | None
    reference: float | None
    met: bool | None
    vacuous: bool = False

    @property
    def status(self) -> str:
        if self.vacuous:
            return "vacuous"
        return {True: "met", False: "missed", None: "not measured"}[self.met]


def paper_targets(steps: int = 4) -> list[Target]:
    """The claims issue #7 checks (Presto! at ``steps`` sampling steps): Presto-S near the teacher's
    default sampler and better than the teacher at the same steps; diversity kept; Presto-LS much
    faster at little cost; Presto-S ahead of dmd2 and cd, Presto-L ahead of ase."""
    s, ls = ("presto-s", f"{steps} steps"), ("presto-ls", f"{steps} steps + schedule")
    return [
        Target(f"Presto-S {steps} steps: FAD <= 1.2x teacher (default sampler)", s, "fad", TEACHER_DEFAULT,
               1.2, True),
        Target(f"Presto-S {steps} steps: FAD < teacher at {steps} steps", s, "fad", ("teacher", f"{steps} steps"),
               1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: recall >= 0.8x teacher", s, "recall", TEACHER_DEFAULT, 0.8, False),
        Target(f"Presto-S {steps} steps: coverage >= 0.8x teacher", s, "coverage", TEACHER_DEFAULT, 0.8, False),
        Target(f"Presto-LS {steps} steps: sampling >= 20x faster than teacher", ls, "sampling_speedup",
               TEACHER_DEFAULT, 20.0, False),
        Target(f"Presto-LS {steps} steps: end to end >= 10x faster than teacher", ls, "total_speedup",
               TEACHER_DEFAULT, 10.0, False),
        Target(f"Presto-LS {steps} steps: FAD <= 1.3x teacher", ls, "fad", TEACHER_DEFAULT, 1.3, True),
        Target(f"Presto-S {steps} steps: FAD < dmd2 {steps} steps", s, "fad", ("dmd2", f"{steps} steps"),
               1.0, True, strict=True),
        Target(f"Presto-S {steps} steps: FAD < cd {steps} steps", s, "fad", ("cd", f"{steps} steps"),
               1.0, True, strict=True),
        Target("Presto-L: FAD < ase at the same budget schedule", ("presto-l", "schedule"), "fad",
               ("ase", "schedule"), 1.0, True, strict=True),
    ]


def _value(entries: dict[tuple[str, str], dict], key: tuple[str, str], metric: str) -> float | None:
    entry = entries.get(key)
    value = None if entry is None else entry.get(metric)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def check(doc: dict, targets: list[Target] | None = None) -> list[Verdict]:
    """Each target checked on ``doc``'s entries. Speed-ups are already ratios to the teacher's
    default sampler, so their reference value is 1 (the teacher's own entry)."""
    entries = {(e["method"], e["case"]): e for e in doc["entries"]}
    verdicts = []
    for t in targets if targets is not None else paper_targets():
        value = _value(entries, t.entry, t.metric)
        reference = _value(entries, t.other, t.metric)
        if value is None or reference is None:
            verdicts.append(Verdict(t, value, reference, None))
            continue
        bound = t.bound * reference
        if not t.lower and not t.strict and bound == 0 and value >= 0:
            verdicts.append(Verdict(t, value, reference, None, vacuous=True))
            continue
        if t.lower:
            met = value < bound if t.strict else value <= bound
        else:
            met = value > bound if t.strict else value >= bound
        verdicts.append(Verdict(t, value, reference, met))
    return verdicts


RESULT_COLUMNS = [("label", "model", "{}"), ("train_steps", "trained", "{}"), ("steps", "steps", "{}"),
                  ("fad", "FAD", "{:.2f}"), ("fad_inf", "FAD-inf", "{:.2f}"), ("mmd", "MMD", "{:.1f}"),
                  ("recall", "recall", "{:.2f}"), ("coverage", "coverage", "{:.2f}"),
                  ("tempo_err_bpm", "tempo err (BPM)", "{:.1f}"), ("instrument_acc", "instrument acc", "{:.2f}"),
                  ("sampling_s", "sampling ms", "{:.1f}"), ("total_s", "end-to-end ms", "{:.1f}"),
                  ("sampling_speedup", "speed-up", "x{:.1f}"), ("total_speedup", "end-to-end speed-up", "x{:.1f}")]


def format_cell(key: str, fmt: str, value) -> str:
    """A table cell: ``fmt`` applied to ``value`` (seconds ``*_s`` shown as ms), "-" when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(1000 * value if key.endswith("_s") else value)


def results_markdown(doc: dict, *, title: str, command: str, date: str) -> str:
    """``docs/results.md``: how the numbers were made (command, ``doc["hardware"]``, date), one row
    per model and case with the paper's columns, and each target with its two values and status."""
    hw = doc.get("hardware")
    hardware = ", ".join(f"{k} {v}" for k, v in hw.items()) if isinstance(hw, dict) else str(hw)
    lines = [f"# {title}", "", f"Command: `{command}`", "", f"Hardware: {hardware}. Date: {date}.",
             f"Data: {doc.get('data')}. Embedding: {doc.get('embedding')}.", "",
             "| " + " | ".join(t for _, t, _ in RESULT_COLUMNS) + " |",
             "| " + " | ".join("---" for _ in RESULT_COLUMNS) + " |"]
    for e in doc["entries"]:
        lines.append("| " + " | ".join(format_cell(k, f, e.get(k)) for k, _, f in RESULT_COLUMNS) + " |")
    lines += ["", "## Targets", "", "| target | measured | reference | status |", "| --- | --- | --- | --- |"]
    verdicts = check(doc)
    for v in verdicts:
        fmt = (lambda x: "-" if x is None else f"{x:.3g}")
        lines.append(f"| {v.target.name} | {fmt(v.value)} | {fmt(v.reference)} | **{v.status}** |")
    if any(v.vacuous for v in verdicts):
        lines += ["", "vacuous: the teacher's value is 0, so the floor (a multiple of 0) holds for any value "
                      "and the target says nothing about this run."]
    return "\n".join(lines) + "\n"
