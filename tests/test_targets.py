"""The paper's targets checked on a side-by-side results document with intervals: met or missed
only when the 95% intervals are apart, "not resolved" when they overlap (docs/results.md)."""

from __future__ import annotations

import json

import pytest

from presto_ray.eval.targets import CONTROLS, check, paper_targets, results_markdown

S_CONTROL = CONTROLS["presto-s"][0].format(n=4)
S_CONTROL_CFG = CONTROLS["presto-s"][1].format(n=4)
LS_CONTROL = CONTROLS["presto-ls"][0].format(n=4)
L_CONTROL = CONTROLS["presto-l"][0].format(n=4)


def entry(method: str, case: str, kad: float | None = None, half: float = 1.0, **values) -> dict:
    """An entry with KAD ``kad`` and the interval kad +- ``half``."""
    base = {"label": f"{method} {case}", "method": method, "case": case, "train_steps": 100, "steps": 4,
            "kad": kad, "kad_ci": None if kad is None else [kad - half, kad + half], "mmd": None, "fad": None,
            "fad_note": "n too small: FAD needs >= 2 x 200 feature vectors each side, has 256 and 272",
            "recall": None, "coverage": None, "tempo_err_bpm": None, "instrument_acc": None, "sampling_s": None,
            "total_s": None, "sampling_speedup": None, "total_speedup": None}
    return {**base, **values}


def document(**presto_s) -> dict:
    """Teacher KAD 10 +- 1 (recall / coverage 0.5 [0.45, 0.55]); its controls 20, 18, 30, 16; teacher
    at 4 steps 40; Presto-LS 25x / 12x faster at KAD 9; dmd2 13, cd 14; Presto-L 12 vs ase 15;
    Presto-S as given (default KAD 5, recall / coverage 0.6 [0.55, 0.65])."""
    s = {"kad": 5.0, "recall": 0.6, "recall_ci": [0.55, 0.65], "coverage": 0.6, "coverage_ci": [0.55, 0.65],
         **presto_s}
    return {"data": "valid", "embedding": "musicnn", "reference": "valid+train: 528 clips through the codec",
            "samples": 256, "floor": {"kad": 0.1, "kad_ci": [-0.4, 0.6], "n": 256},
            "hardware": {"cpu_count": 2, "torch": "2.11.0"}, "entries": [
                entry("teacher", "default", 10.0, recall=0.5, recall_ci=[0.45, 0.55], coverage=0.5,
                      coverage_ci=[0.45, 0.55], sampling_speedup=1.0, total_speedup=1.0),
                entry("teacher", "4 steps", 40.0, sampling_speedup=10.0, total_speedup=5.0),
                entry("teacher", S_CONTROL, 20.0, control_of="presto-s"),
                entry("teacher", S_CONTROL_CFG, 18.0, control_of="presto-s"),
                entry("teacher", LS_CONTROL, 30.0, control_of="presto-ls"),
                entry("teacher", L_CONTROL, 16.0, control_of="presto-l"),
                entry("presto-s", "4 steps", **{k: v for k, v in s.items() if k != "kad"}, kad=s["kad"]),
                entry("presto-ls", "4 steps + schedule", 7.0, sampling_speedup=25.0, total_speedup=12.0),
                entry("dmd2", "4 steps", 13.0), entry("cd", "4 steps", 14.0),
                entry("presto-l", "schedule", 12.0), entry("ase", "schedule", 15.0),
            ]}


def test_every_target_met_on_a_document_whose_intervals_are_apart():
    verdicts = check(document())
    assert len(verdicts) == len(paper_targets()) == 14
    assert [v.status for v in verdicts] == ["met"] * 14
    v = {v.target.name: v for v in verdicts}["Presto-S 4 steps: KAD <= teacher at its best sampler"]
    assert (v.value, v.reference, v.value_ci, v.reference_ci) == (5.0, 10.0, (4.0, 6.0), (9.0, 11.0))


@pytest.mark.parametrize("change, status", [
    ({"kad": 8.5}, "not resolved"),   # [7.5, 9.5] overlaps the teacher's [9, 11]
    ({"kad": 10.0}, "not resolved"),  # a tie
    ({"kad": 12.5}, "missed"),        # [11.5, 13.5] clear of [9, 11] on the wrong side
    ({"kad": 7.9}, "met"),            # [6.9, 8.9] just clear
])
def test_a_quality_claim_is_decided_by_intervals(change, status):
    verdicts = {v.target.name: v for v in check(document(**change))}
    assert verdicts["Presto-S 4 steps: KAD <= teacher at its best sampler"].status == status


def test_bounded_diversity_claims_use_the_interval_ends():
    # recall >= 0.8 x teacher: met when the lower end clears 0.8 x the teacher's upper end (0.44)
    name = "Presto-S 4 steps: recall >= 0.8x teacher"
    status = lambda **r: {v.target.name: v.status for v in check(document(**r))}[name]  # noqa: E731
    assert status(recall=0.5, recall_ci=[0.45, 0.55]) == "met"
    assert status(recall=0.4, recall_ci=[0.35, 0.45]) == "not resolved"  # 0.45 > 0.36 but 0.35 < 0.44
    assert status(recall=0.3, recall_ci=[0.25, 0.35]) == "missed"  # 0.35 < 0.8 x 0.45
    # without an interval the value stands for itself (as latency does)
    assert status(recall=0.5, recall_ci=None) == "met"


def test_the_undistilled_control_decides_whether_training_helped():
    doc = document(kad=19.5)  # as good as its control, no better: training did not show
    status = {v.target.name: v.status for v in check(doc)}
    assert status[f"Presto-S 4 steps: KAD < its control ({S_CONTROL})"] == "not resolved"
    assert status[f"Presto-S 4 steps: KAD < its control ({S_CONTROL_CFG})"] == "not resolved"
    assert status["Presto-S 4 steps: KAD <= teacher at its best sampler"] == "missed"


def test_missing_or_nan_entries_are_not_measured_never_met():
    doc = document()
    doc["entries"] = [e for e in doc["entries"] if e["method"] not in ("dmd2", "ase") and e.get("case") != LS_CONTROL]
    next(e for e in doc["entries"] if e["method"] == "presto-ls")["total_speedup"] = float("nan")
    status = {v.target.name: v.status for v in check(doc)}
    assert status["Presto-S 4 steps: KAD < dmd2 4 steps"] == "not measured"
    assert status["Presto-L: KAD < ase at the same budget schedule"] == "not measured"
    assert status["Presto-LS 4 steps: end to end >= 10x faster than teacher"] == "not measured"
    assert status[f"Presto-LS 4 steps: KAD < its control ({LS_CONTROL})"] == "not measured"
    assert status["Presto-S 4 steps: KAD < cd 4 steps"] == "met"


def test_a_floor_on_a_teacher_value_of_zero_is_vacuous_not_met():
    doc = document(recall=0.0, recall_ci=[0.0, 0.0])
    doc["entries"][0].update(recall=0.0, recall_ci=[0.0, 0.0])  # the teacher's recall
    verdicts = {v.target.name: v for v in check(doc)}
    v = verdicts["Presto-S 4 steps: recall >= 0.8x teacher"]
    assert (v.status, v.met, v.value, v.reference) == ("vacuous", None, 0.0, 0.0)
    assert verdicts["Presto-S 4 steps: coverage >= 0.8x teacher"].status == "met"
    md = results_markdown(doc, title="t", command="c", date="d")
    assert "| Presto-S 4 steps: recall >= 0.8x teacher | 0 [0, 0] | 0 [0, 0] | **vacuous** |" in md
    assert "vacuous: the teacher's value is 0" in md
    assert "vacuous" not in results_markdown(document(), title="t", command="c", date="d")


def test_results_markdown_has_every_row_the_floor_and_every_target():
    md = results_markdown(document(kad=30.0), title="Reference experiment", command="presto-ray quickstart",
                          date="2026-12-06")
    lines = md.splitlines()
    assert lines[0] == "# Reference experiment" and "Command: `presto-ray quickstart`" in md
    assert "Hardware: cpu_count 2, torch 2.11.0. Date: 2026-12-06." in md
    assert "Reference: valid+train: 528 clips through the codec." in md and "Clips per model: 256." in md
    labels = [e["label"] for e in document()["entries"]]
    assert [line.split(" | ")[0][2:] for line in lines if line.startswith("| ") and " | 100 | " in line] == labels
    assert "| presto-s 4 steps | 100 | 4 | 30.00 [29.00, 31.00] | - | n too small |" in md
    assert "| data vs data (noise floor) | - | - | 0.10 [-0.40, 0.60] |" in md
    assert "| Presto-S 4 steps: KAD <= teacher at its best sampler | 30 [29, 31] | 10 [9, 11] | **missed** |" in md
    statuses = ("**met**", "**missed**", "**not measured**", "**not resolved**")
    assert sum(md.count(s) for s in statuses) == 14


def test_report_cli_writes_results_md_and_refuses_other_documents(tmp_path):
    from presto_ray.cli import main

    (tmp_path / "metrics.json").write_text(json.dumps(document()))
    assert main(["report", "--metrics", str(tmp_path / "metrics.json"), "--out", str(tmp_path / "r.html"),
                 "--results-md", str(tmp_path / "results.md"), "--title", "T", "--made-by", "presto-ray quickstart x"]) == 0
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# T\n") and "Command: `presto-ray quickstart x`" in md and md.count("**met**") == 14
    html = (tmp_path / "r.html").read_text()
    assert "<td>data vs data (noise floor)</td>" in html and "<td>[4, 6]</td>" in html
    (tmp_path / "eval.json").write_text(json.dumps({"kad": 1.0}))  # an evaluate metrics.json, not a quickstart's
    assert main(["report", "--metrics", str(tmp_path / "eval.json"), "--out", str(tmp_path / "r2.html"),
                 "--results-md", str(tmp_path / "bad.md")]) == 2
    assert not (tmp_path / "bad.md").exists()
