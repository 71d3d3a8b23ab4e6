"""The quickstart end to end at a reduced size: music21 corpus -> teacher -> presto-l, presto-s,
presto-ls -> evaluation -> one latency run -> metrics.json, latency.json, report.html and audio; a
second call skips every stage, a call after losing one evaluation redoes only what depends on it,
and adding the baselines to a finished quickstart runs only their stages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from presto_ray.cli import main
from presto_ray.config import load_config
from presto_ray.eval.targets import check
from presto_ray.quickstart import BASELINES, METHODS, Plan, quickstart
from presto_ray.quickstart.runs import distill_config, finished_step
from presto_ray.quickstart.results import ENTRY_KEYS, case_label
from presto_ray.train.export import load_export

pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")

SMALL = Plan(items=32, split_fractions=(0.6, 0.4, 0.0), teacher_steps=12,
             distill_steps={m: 3 for m in METHODS + BASELINES}, eval_samples=8, eval_batch=8, teacher_extra_steps=(2,),
             student_extra_steps=(1,), sampler_steps=(2, 3), sampler_cfg_scales=(1.0, 4.0), sampler_search_samples=6,
             curve_points=2, latency_repeats=1, latency_warmup=0, report_clips=2)
LABELS = ["teacher default", "teacher 2 steps", "presto-l schedule", "presto-s 4 steps", "presto-s 1 steps",
          "presto-ls 4 steps + schedule", "teacher schedule (undistilled)", "teacher 4 steps ping-pong (undistilled)",
          "teacher 4 steps ping-pong + CFG (undistilled)", "teacher 4 steps ping-pong + schedule (undistilled)"]
NAMES = ["teacher", "teacher-2-steps", "presto-l", "presto-s", "presto-s-1-steps", "presto-ls", "control-presto-l",
         "control-presto-s", "control-presto-s-cfg", "control-presto-ls"]
CONTROL_OF = {"control-presto-l": "presto-l", "control-presto-s": "presto-s", "control-presto-s-cfg": "presto-s",
              "control-presto-ls": "presto-ls"}


def small_config():
    return load_config("tiny", ["train.batch_size=8", "train.eval_batch=8", "train.eval_every=6", "train.log_every=3",
                                "train.checkpoint_every=6", "train.warmup_steps=2", "sampler.steps=4", "distill.ttur=2"])


def _snapshot(out) -> dict:
    """Bytes and modification times of every output a finished quickstart keeps."""
    files = [out / "metrics.json", out / "latency.json", out / "report.html", *sorted((out / "audio").rglob("*.wav")),
             *sorted((out / "eval").rglob("*")), *sorted((out / "runs").rglob("export.json"))]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files if f.is_file()}


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """One reduced quickstart without baselines, run from scratch: (out folder, summary)."""
    env = pytest.MonkeyPatch()
    env.setenv("PRESTO_CACHE", str(tmp_path_factory.mktemp("cache")))  # reference embeddings: this module's own
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    yield out, quickstart(small_config(), out, plan=SMALL)
    env.undo()


def _check_audio(folder, names: list[str]) -> None:
    assert sorted(p.name for p in folder.glob("*.wav")) == names, folder
    for wav in folder.glob("*.wav"):
        audio, rate = sf.read(str(wav))
        assert rate == 16000 and audio.shape == (128 * 512,) and np.isfinite(audio).all()
        assert np.sqrt(np.mean(audio ** 2)) > 1e-3, wav  # not silent


def _check_entries(out, labels: list[str], names: list[str]) -> list[dict]:
    """metrics.json: one entry per model and case, every stable key, finite numbers with intervals
    around them, joined with latency.json (controls are not timed); returns the entries."""
    doc = json.loads((out / "metrics.json").read_text())
    entries = doc["entries"]
    assert [e["label"] for e in entries] == labels and [e["name"] for e in entries] == names
    for e in entries:
        assert tuple(e) == ENTRY_KEYS, e["label"]
        assert e["control_of"] == CONTROL_OF.get(e["name"]), e["label"]
        timed = ("nfe", "block_fraction", "text_s", "sampling_s", "decode_s", "total_s", "sampling_speedup",
                 "total_speedup")
        numbers = ["train_steps", "steps", "n_samples", "kad", "mmd", "precision", "density", "recall", "coverage",
                   "tempo_err_bpm", "key_acc", "instrument_acc", "loudness_db_median", "loudness_outside_share",
                   "full_scale_share", "clips_at_full_scale"] + ([] if e["control_of"] else list(timed))
        for key in numbers:
            assert isinstance(e[key], (int, float)) and math.isfinite(e[key]), (e["label"], key, e[key])
        if e["control_of"]:
            assert all(e[k] is None for k in timed), e["label"]
        for key in ("kad", "mmd", "precision", "density", "recall", "coverage"):
            low, high = e[f"{key}_ci"]
            assert low <= high, (e["label"], key)
        assert e["n_samples"] == SMALL.eval_samples and e["fad"] is None and e["fad_note"].startswith("n too small")
        assert 0 <= e["coverage"] <= 1
        assert 0 <= e["loudness_outside_share"] <= 1 and 0 <= e["clips_at_full_scale"] <= e["n_samples"]
    assert doc["samples"] == SMALL.eval_samples and doc["floor"]["n"] == SMALL.eval_samples
    assert doc["floor"]["kad_ci"][0] <= doc["floor"]["kad"] <= doc["floor"]["kad_ci"][1]
    latency = json.loads((out / "latency.json").read_text())
    assert {e["method"] for e in latency["entries"]} == {e["method"] for e in entries}
    assert {e["label"] for e in entries if not e["control_of"]} <= {f"{e['method']} {e['case']}" for e in latency["entries"]}
    return entries


@pytest.mark.timeout(900)
def test_quickstart_writes_every_output_and_continues_where_it_stopped(finished, capsys):
    out, first = finished
    stage_names = (["prepare", "train-teacher", "teacher-sampler"] + [f"distill {m}" for m in METHODS]
                   + [f"evaluate {n}" for n in NAMES] + ["curve presto-s", "benchmark", "metrics", "results", "audio",
                                                         "report"])
    assert list(first["stage_seconds"]) == stage_names and first["skipped"] == []

    # data and runs: every model trained to the plan's steps; layer students under the plan's schedule
    assert first["train_rows"] >= 8 and first["valid_rows"] >= 8
    assert finished_step(out / "runs" / "teacher-tiny") == 12
    # the teacher's default sampler was chosen by the search and stored in its export
    search = json.loads((out / "eval" / "teacher-sampler" / "search.json").read_text())
    chosen = search["trials"][search["chosen"]]
    teacher_sampler = load_export(out / "runs" / "teacher-tiny").cfg.sampler
    assert len(search["trials"]) == 4 and (teacher_sampler.steps, teacher_sampler.cfg_scale) == (chosen["steps"],
                                                                                               chosen["cfg_scale"])
    for method in METHODS:
        exported = load_export(out / "runs" / method)
        assert exported.step == 3 and exported.cfg.distill.method == method
        assert sorted(p.name for p in (out / "runs" / method).glob("step_*")) == ["step_00000002", "step_00000003"]
        schedule = exported.cfg.distill.budget_schedule
        assert (schedule.edges, schedule.budgets) == (([], []) if method == "presto-s" else ([1.0], [6, 3]))
    assert load_export(out / "runs" / "presto-ls").cfg.distill.init == str(out / "runs" / "presto-l")

    entries = _check_entries(out, LABELS, NAMES)
    by_label = {e["label"]: e for e in entries}
    assert by_label["teacher default"]["sampling_speedup"] == 1.0
    assert by_label["teacher default"]["steps"] == chosen["steps"]
    assert by_label["teacher default"]["cfg_scale"] == chosen["cfg_scale"]
    for label in LABELS[-3:]:
        assert by_label[label]["sampler"] == "pingpong" and by_label[label]["steps"] == 4
    assert by_label["teacher 4 steps ping-pong + CFG (undistilled)"]["cfg_scale"] == 4.0  # distill.w_real
    # guidance rescale: the teacher's sampler's (tiny: 1), the CFG control's that of the real score
    # its student was distilled with (distill.cfg_rescale, default 0)
    rescale = {name: json.loads((out / "eval" / name / "metrics.json").read_text())["cfg_rescale"]
               for name in ("teacher", "control-presto-s-cfg", "control-presto-s")}
    assert rescale == {"teacher": 1.0, "control-presto-s-cfg": 0.0, "control-presto-s": None}
    assert by_label["teacher 2 steps"]["nfe"] <= by_label["teacher default"]["nfe"]
    assert by_label["presto-s 4 steps"]["nfe"] == 4 and by_label["presto-s 4 steps"]["block_fraction"] == 1.0
    for label in ("presto-l schedule", "presto-ls 4 steps + schedule"):
        assert by_label[label]["block_fraction"] < 1.0, label  # the schedule drops blocks at high noise
    assert [e["train_steps"] for e in entries] == [12, 12, 3, 3, 3, 3, 12, 12, 12, 12]
    assert by_label["presto-s 1 steps"]["nfe"] == 1 and by_label["presto-s 1 steps"]["steps"] == 1
    latency = json.loads((out / "latency.json").read_text())
    assert latency["entries"][0]["case"] == "default" and latency["hardware"]["cpu_count"] >= 1
    # KAD against generator updates: one point per checkpoint (curve_points 2: steps 2 and 3 at the
    # plan's ttur 1, 2 and 3 updates), the last one the presto-s row itself (reused, not evaluated again)
    first_point, point = json.loads((out / "metrics.json").read_text())["curves"]["presto-s"]
    assert [(p["step"], p["generator_updates"]) for p in (first_point, point)] == [(2, 2), (3, 3)]
    assert point["kad"] == by_label["presto-s 4 steps"]["kad"] and point["kad_ci"] == by_label["presto-s 4 steps"]["kad_ci"]
    assert sorted(p.name for p in (out / "eval" / "presto-s-updates").iterdir()) == ["curve.json", "step_00000002"]

    # audio: the evaluation clips, the report's copies and the reference; 16 kHz, 4.1 s, not silent
    for name in NAMES:
        assert len(list((out / "eval" / name / "audio").glob("*.wav"))) == SMALL.eval_samples
    folders = [out / "audio" / n for n in ["reference", *NAMES]]
    assert first["audio"] == [str(f) for f in folders]
    clips = sorted(p.name for p in (out / "eval" / "teacher" / "audio").glob("*.wav"))[:SMALL.report_clips]
    for folder in folders:
        _check_audio(folder, clips)

    # report.html: every model in the tables, one curve per run, one player per clip
    html = (out / "report.html").read_text()
    for label in LABELS:
        assert f"<td>{label}</td>" in html, label
    for name in ["reference", *NAMES]:
        assert f"<h2>Audio: {name}</h2>" in html
    assert html.count("<audio controls") == len(folders) * SMALL.report_clips
    # a spectrogram strip beside each folder's players; each model's loudness line (not the reference's)
    assert html.count('<img class="strip"') == len(folders) and html.count('<p class="loudness">') == len(NAMES)
    assert len(re.findall(r'alt="training curves of ', html)) == 1 + len(METHODS)
    assert 'alt="KAD against generator updates"' in html

    # results.md: a row per model with the paper's columns, the targets checked on these entries
    results = (out / "results.md").read_text()
    rows = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith(("| model", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows[:len(LABELS) + 1]] == LABELS + ["data vs data (noise floor)"]
    verdicts = check(json.loads((out / "metrics.json").read_text()))
    for v in verdicts:
        assert f"| {v.target.name} |" in results
        assert v.status in ("met", "missed", "not resolved", "not measured", "vacuous")
    assert {v.status for v in verdicts if "dmd2" in v.target.name or "ase" in v.target.name} == {"not measured"}
    assert main(["report", "--metrics", str(out / "metrics.json"), "--out", str(out / "r.html"),
                 "--results-md", str(out / "again.md"), "--title", "presto_ray results (tiny)",
                 "--made-by", "presto-ray quickstart"]) == 0
    assert (out / "again.md").read_text() == results
    (out / "r.html").unlink()
    (out / "again.md").unlink()

    # a second call finds every output and does nothing, and says so
    before = _snapshot(out)
    capsys.readouterr()
    second = quickstart(small_config(), out, plan=SMALL)
    assert second["skipped"] == stage_names and set(second["stage_seconds"].values()) == {0.0}
    assert _snapshot(out) == before
    printed = capsys.readouterr().out.splitlines()
    stage_lines = printed[printed.index("quickstart stages") + 1:][:len(stage_names)]
    assert [line.split()[-1] for line in stage_lines] == ["skipped"] * len(stage_names)
    table = {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in printed) if cells[0] in LABELS}
    assert sorted(table) == sorted(LABELS)
    assert table["presto-s 4 steps"][1:3] == ["3", "4"]  # trained steps, sampling steps, then KAD [interval] ...
    kad_cell = table["presto-s 4 steps"][3]
    assert float(kad_cell.split()[0]) == pytest.approx(by_label["presto-s 4 steps"]["kad"], abs=0.01)
    assert kad_cell.endswith("]") and table["presto-s 4 steps"][4] == "n too small"
    student = by_label["presto-s 4 steps"]
    assert table["presto-s 4 steps"][-6:-4] == [f"{student['loudness_outside_share']:.0%}",
                                                str(student["clips_at_full_scale"])]  # loud out, full-scale clips

    # an evaluation lost: only it and what is built from it are redone, with the same numbers
    (out / "eval" / "presto-s" / "metrics.json").unlink()
    third = quickstart(small_config(), out, plan=SMALL)
    assert [s for s in stage_names if s not in third["skipped"]] == ["evaluate presto-s", "metrics", "results", "audio",
                                                                     "report"]
    assert [e["kad"] for e in _check_entries(out, LABELS, NAMES)] == [e["kad"] for e in entries]


@pytest.mark.slow  # ~70 s: kept out of the default suite's 20 minutes; CI runs it when time allows
@pytest.mark.timeout(900)
def test_with_baselines_a_finished_quickstart_adds_only_the_baselines(finished):
    out = finished[0]
    summary = quickstart(small_config(), out, plan=SMALL, with_baselines=True)
    ran = [s for s in summary["stage_seconds"] if s not in summary["skipped"]]
    assert ran == ([f"distill {m}" for m in BASELINES] + [f"evaluate {m}" for m in BASELINES]
                   + ["curve dmd2", "curve cd", "benchmark", "metrics", "results", "audio", "report"])
    curves = json.loads((out / "metrics.json").read_text())["curves"]
    assert sorted(curves) == ["cd", "dmd2", "presto-s"]
    assert [p["generator_updates"] for p in curves["dmd2"]] == [2, 3]  # ttur 1 (the plan's), as cd
    assert [p["generator_updates"] for p in curves["cd"]] == [2, 3]  # one update per iteration
    for method in BASELINES:
        exported = load_export(out / "runs" / method)
        assert exported.step == 3 and exported.cfg.distill.method == method
        assert exported.cfg.distill.budget_schedule.budgets == ([6, 3] if method == "ase" else [])
    labels = LABELS[:6] + ["dmd2 4 steps", "ase schedule", "cd 4 steps"] + LABELS[6:]
    results = (out / "results.md").read_text()
    assert all(f"| {label} |" in results for label in labels)
    baseline_targets = [v for v in check(json.loads((out / "metrics.json").read_text()))
                        if "dmd2" in v.target.name or " cd " in v.target.name or "ase" in v.target.name]
    assert len(baseline_targets) == 3 and all(v.status != "not measured" for v in baseline_targets)  # measured now
    entries = _check_entries(out, labels, NAMES[:6] + list(BASELINES) + NAMES[6:])
    assert {e["label"]: e for e in entries}["ase schedule"]["block_fraction"] < 1.0
    html = (out / "report.html").read_text()
    for label in labels[6:9]:
        assert f"<td>{label}</td>" in html, label
    for name in BASELINES:
        assert f"<h2>Audio: {name}</h2>" in html
        _check_audio(out / "audio" / name, sorted(p.name for p in (out / "audio" / "reference").glob("*.wav")))
    assert len(re.findall(r'alt="training curves of ', html)) == 1 + len(METHODS) + len(BASELINES)


def test_the_plans_are_sized_to_resolve_what_they_compare():
    from presto_ray.quickstart.plan import REFERENCE

    for plan, cfg, updates in ((Plan(), load_config("tiny"), 300), (REFERENCE, load_config("small"), 2000)):
        for m in ("presto-s", "dmd2"):  # a generator update every ttur iterations
            assert plan.steps_for(m) // plan.ttur.get(m, cfg.distill.ttur) >= updates, (m, plan)
        clip_s = cfg.model.latent_frames * cfg.codec.hop_length / cfg.codec.sample_rate
        clips = plan.hours * 3600 / clip_s
        assert clips >= 2 * plan.eval_samples  # a floor sample and a reference, each >= the generated set
    assert Plan().eval_samples >= 256 and REFERENCE.eval_samples >= 1024
    assert all(REFERENCE.steps_for(m) >= 2000 for m in ("presto-l", "ase", "cd"))
    assert REFERENCE.eval_samples * 2 >= 2 * 200  # two 3-s musicnn vectors per 8.2-s clip: FAD is reported


def test_plan_budget_schedule_and_case_labels():
    cfg = load_config("tiny")
    assert Plan().budget_schedule(cfg.model) == {"edges": [1.0], "budgets": [6, 3]}
    assert Plan(budget_edges=(0.5, 5.0), budget_fractions=(1.0, 0.6, 0.1)).budget_schedule(cfg.model) == \
        {"edges": [0.5, 5.0], "budgets": [6, 4, 1]}
    with pytest.raises(ValueError, match="one more entry"):
        Plan(budget_fractions=(1.0,)).budget_schedule(cfg.model)
    runs = Path("/runs")
    configs = {m: distill_config(cfg, Plan(), m, runs, runs / "teacher").distill for m in (*METHODS, *BASELINES)}
    assert configs["presto-l"].min_budget == 3  # trains the budgets its schedule [6, 3] samples with
    assert all(configs[m].min_budget is None for m in configs if m != "presto-l")
    assert [configs[m].budget_schedule.budgets for m in ("presto-l", "presto-ls", "ase")] == [[6, 3]] * 3
    assert configs["presto-ls"].init == "/runs/presto-l" and configs["presto-s"].budget_schedule.budgets == []
    assert configs["cd"].generator.lr == cfg.distill.generator.lr == 1e-4  # the config's, by default
    assert [configs[m].ttur for m in ("presto-s", "presto-ls", "dmd2")] == [1, 1, 1]  # presto-s: 300 updates in 300
    assert configs["cd"].ttur == cfg.distill.ttur == 5
    assert distill_config(cfg, Plan(), "presto-s", runs, runs / "teacher").train.checkpoint_every == 100  # 3 points
    assert Plan().steps_for("presto-s") // Plan().ttur["presto-s"] >= 300
    fast = distill_config(cfg, Plan(distill_lr=3e-4), "presto-s", runs, runs / "teacher").distill
    assert fast.generator.lr == fast.guidance.lr == 3e-4 and fast.generator.zero_stage == cfg.distill.generator.zero_stage
    with pytest.raises(ValueError, match="no distill_steps for 'cd'"):
        Plan(distill_steps={"presto-s": 3}).steps_for("cd")
    scheduled = load_config("tiny", ["distill.method=presto-ls", "distill.budget_schedule.edges=[1.0]",
                                     "distill.budget_schedule.budgets=[6,3]"])
    assert case_label("teacher", cfg, None) == "default" and case_label("teacher", cfg, 8) == "8 steps"
    assert case_label("presto-ls", scheduled, None) == "4 steps + schedule"
    assert case_label("presto-s", load_config("tiny", ["distill.student_steps=2"]), None) == "2 steps"
    assert case_label("presto-l", load_config("tiny", ["distill.method=presto-l"]), None) == "default"


def test_a_teacher_named_like_a_student_is_refused(tmp_path):
    with pytest.raises(ValueError, match="run.name 'presto-s'"):
        quickstart(load_config("tiny", ["run.name=presto-s"]), tmp_path, plan=SMALL)
