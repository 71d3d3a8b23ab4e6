"""The paper's targets checked on a side-by-side results document (docs/results.md, issue #7)."""

from __future__ import annotations

import pytest

from presto_ray.eval.targets import check, paper_targets, results_markdown


def entry(method: str, case: str, **values) -> dict:
    base = {"label": f"{method} {case}", "method": method, "case": case, "train_steps": 100, "steps": 4,
            "fad": None, "fad_inf": None, "mmd": None, "recall": None, "coverage": None, "tempo_err_bpm": None,
            "instrument_acc": None, "sampling_s": None, "total_s": None, "sampling_speedup": None,
            "total_speedup": None}
    return {**base, **values}


def document(**presto_s) -> dict:
    """Teacher FAD 10 / recall 0.5 / coverage 0.5; teacher at 4 steps FAD 40; Presto-LS 25x / 12x
    faster at FAD 12.5; dmd2 FAD 11, cd FAD 13; Presto-L 20 vs ase 21; Presto-S as given."""
    return {"data": "valid (40 clips)", "embedding": "musicnn", "hardware": {"cpu_count": 2, "torch": "2.11.0"}, "entries": [
        entry("teacher", "default", fad=10.0, recall=0.5, coverage=0.5, sampling_speedup=1.0, total_speedup=1.0),
        entry("teacher", "4 steps", fad=40.0, sampling_speedup=10.0, total_speedup=5.0),
        entry("presto-s", "4 steps", **{"fad": 11.0, "recall": 0.45, "coverage": 0.6, **presto_s}),
        entry("presto-ls", "4 steps + schedule", fad=12.5, sampling_speedup=25.0, total_speedup=12.0),
        entry("dmd2", "4 steps", fad=11.5), entry("cd", "4 steps", fad=13.0),
        entry("presto-l", "schedule", fad=20.0), entry("ase", "schedule", fad=21.0),
    ]}


def test_every_target_met_on_a_document_that_meets_them():
    verdicts = check(document())
    assert len(verdicts) == len(paper_targets()) == 10
    assert [v.status for v in verdicts] == ["met"] * 10
    by_name = {v.target.name: v for v in verdicts}
    v = by_name["Presto-S 4 steps: FAD <= 1.2x teacher (default sampler)"]
    assert (v.value, v.reference) == (11.0, 10.0)


@pytest.mark.parametrize("change, missed", [
    ({"fad": 12.01}, {"Presto-S 4 steps: FAD <= 1.2x teacher (default sampler)", "Presto-S 4 steps: FAD < dmd2 4 steps"}),
    ({"fad": 12.0}, {"Presto-S 4 steps: FAD < dmd2 4 steps"}),  # exactly 1.2x is within the bound
    ({"fad": 11.5}, {"Presto-S 4 steps: FAD < dmd2 4 steps"}),  # a tie with dmd2 is not "better"
    ({"recall": 0.39}, {"Presto-S 4 steps: recall >= 0.8x teacher"}),
    ({"coverage": 0.3}, {"Presto-S 4 steps: coverage >= 0.8x teacher"}),
])
def test_each_bound_is_checked(change, missed):
    got = {v.target.name for v in check(document(**change)) if v.status == "missed"}
    assert got == missed


def test_missing_or_nan_entries_are_not_measured_never_met():
    doc = document()
    doc["entries"] = [e for e in doc["entries"] if e["method"] not in ("dmd2", "ase")]
    doc["entries"][3]["total_speedup"] = float("nan")  # presto-ls
    status = {v.target.name: v.status for v in check(doc)}
    assert status["Presto-S 4 steps: FAD < dmd2 4 steps"] == "not measured"
    assert status["Presto-L: FAD < ase at the same budget schedule"] == "not measured"
    assert status["Presto-LS 4 steps: end to end >= 10x faster than teacher"] == "not measured"
    assert status["Presto-S 4 steps: FAD < cd 4 steps"] == "met"


def test_a_floor_on_a_teacher_value_of_zero_is_vacuous_not_met():
    doc = document(recall=0.0)
    doc["entries"][0]["recall"] = 0.0  # the teacher's recall
    verdicts = {v.target.name: v for v in check(doc)}
    v = verdicts["Presto-S 4 steps: recall >= 0.8x teacher"]
    assert (v.status, v.met, v.value, v.reference) == ("vacuous", None, 0.0, 0.0)
    assert verdicts["Presto-S 4 steps: coverage >= 0.8x teacher"].status == "met"
    md = results_markdown(doc, title="t", command="c", date="d")
    assert "| Presto-S 4 steps: recall >= 0.8x teacher | 0 | 0 | **vacuous** |" in md
    assert "vacuous: the teacher's value is 0" in md
    assert "vacuous" not in results_markdown(document(), title="t", command="c", date="d")


def test_results_markdown_has_every_row_and_target():
    md = results_markdown(document(fad=30.0), title="Reference experiment", command="presto-ray quickstart",
                          date="2026-12-06")
    lines = md.splitlines()
    assert lines[0] == "# Reference experiment" and "Command: `presto-ray quickstart`" in md
    assert "Hardware: cpu_count 2, torch 2.11.0. Date: 2026-12-06." in md
    labels = [e["label"] for e in document()["entries"]]
    assert [line.split(" | ")[0][2:] for line in lines if line.startswith("| ") and " | 100 | " in line] == labels
    assert "| presto-s 4 steps | 100 | 4 | 30.00 |" in md
    assert "| Presto-S 4 steps: FAD <= 1.2x teacher (default sampler) | 30 | 10 | **missed** |" in md
    assert md.count("**met**") + md.count("**missed**") + md.count("**not measured**") == 10


def test_report_cli_writes_results_md_and_refuses_other_documents(tmp_path):
    import json

    from presto_ray.cli import main

    (tmp_path / "metrics.json").write_text(json.dumps(document()))
    assert main(["report", "--metrics", str(tmp_path / "metrics.json"), "--out", str(tmp_path / "r.html"),
                 "--results-md", str(tmp_path / "results.md"), "--title", "T", "--made-by", "presto-ray quickstart x"]) == 0
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# T\n") and "Command: `presto-ray quickstart x`" in md and md.count("**met**") == 10
    (tmp_path / "eval.json").write_text(json.dumps({"fad": 1.0}))  # an evaluate metrics.json, not a quickstart's
    assert main(["report", "--metrics", str(tmp_path / "eval.json"), "--out", str(tmp_path / "r2.html"),
                 "--results-md", str(tmp_path / "bad.md")]) == 2
    assert not (tmp_path / "bad.md").exists()
