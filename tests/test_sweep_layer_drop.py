"""presto-ray sweep layer-drop: monotone schedule candidates, the Pareto front and choice rule, the
space file, and one real sweep (Ray Tune trials generating, embedding and timing) on a tiny
Presto-L export whose chosen schedule ``generate`` then samples under."""

from __future__ import annotations

import collections
import csv
import itertools
import json
import math
import random

import pytest
import torch
import yaml

from presto_ray.config import load_config
from presto_ray.data.stats import LatentStats
from presto_ray.distill.budget import BudgetSchedule
from presto_ray.edm import EDMPrecond
from presto_ray.models.dit import DiT1D
from presto_ray.sweep.layer_drop import (LayerDropSpace, choose_schedule, edges_for_bins, is_monotone, load_space,
                                         make_candidates, monotone_budgets, sample_monotone_budgets)
from presto_ray.sweep.pareto import cheapest_qualifying, dominates, pareto_front
from presto_ray.train.export import load_export, write_export

# ------------------------------------------------------------------------------ pareto


def test_pareto_front_of_constructed_points():
    points = [(1, 5.0), (2, 3.0), (3, 3.5), (4, 1.0), (2, 3.0), (5, 1.0), (float("nan"), 0.0), (6, 0.5)]
    # (3, 3.5) is dominated by (2, 3); (5, 1) by (4, 1); the duplicate (2, 3) stays; NaN never counts
    assert pareto_front(points) == [0, 1, 4, 3, 7]
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [0]
    assert dominates((1, 2), (1, 3)) and not dominates((1, 3), (1, 3)) and not dominates((0, 4), (1, 3))
    with pytest.raises(ValueError, match="point 1"):
        pareto_front([(1, 2), (1, 2, 3)])


def test_pareto_front_agrees_with_the_definition_on_random_points():
    rng = random.Random(0)
    points = [(rng.randint(0, 12), rng.randint(0, 12) / 4) for _ in range(60)]
    front = set(pareto_front(points))
    for i, p in enumerate(points):
        dominated = any(dominates(q, p) for q in points)
        assert (i in front) == (not dominated), (i, p)
    costs = [points[i][0] for i in pareto_front(points)]
    assert costs == sorted(costs)


def test_choose_schedule_takes_the_cheapest_front_point_not_resolved_worse_than_full_depth():
    # KAD with intervals; full depth (10 blocks) 2.0 [1.8, 2.2] is dominated by (9, 1.95);
    # the front by cost: (5, 2.5), (7, 2.08), (9, 1.95)
    def row(blocks, kad, low, high):
        return {"blocks_per_sample": blocks, "kad": kad, "kad_ci": [low, high]}

    rows = [row(10, 2.0, 1.8, 2.2), row(7, 2.08, 1.9, 2.3), row(5, 2.5, 2.3, 2.7), row(9, 1.95, 1.7, 2.1),
            row(8, 2.3, 2.25, 2.4)]
    front, chosen = choose_schedule(rows, 0.0)
    assert front == [2, 1, 3]
    assert chosen == 1  # (5 blocks) is resolved worse: 2.3 > 2.2; (7 blocks) overlaps
    assert choose_schedule(rows, 0.1)[1] == 2  # a tolerance of 0.1 lets 2.3 <= 2.3 in
    rows[1]["kad_ci"] = [2.21, 2.3]
    assert choose_schedule(rows, 0.0)[1] == 3  # only the point that dominates full depth is left
    # equal cost: the better KAD
    assert choose_schedule([row(4, 1.0, 0.8, 1.2), row(4, 0.9, 0.7, 1.1), row(2, 1.5, 1.3, 1.7)], 0.0)[1] == 1
    # no front point qualifies (a skewed interval): full depth is kept
    assert cheapest_qualifying([(10, 2.0), (9, 1.9)], [True, False], 0) == 0
    with pytest.raises(ValueError, match="flags"):
        cheapest_qualifying([(10, 2.0)], [True, False], 0)


# ------------------------------------------------------------------------------ candidates


def test_monotone_budgets_are_every_non_increasing_sequence():
    allowed, bins = [2, 4, 5, 6], 3
    seqs = monotone_budgets(allowed, bins)
    brute = {s for s in itertools.product(allowed, repeat=bins) if all(b <= a for a, b in zip(s, s[1:]))}
    assert len(seqs) == len(set(seqs)) == len(brute) == math.comb(len(allowed) + bins - 1, bins) == 20
    assert set(seqs) == brute


def test_random_monotone_budgets_are_distinct_monotone_and_seeded():
    allowed = list(range(1, 29))  # a paper-size model: C(37, 10) ~ 3.5e8 sequences, never listed
    draws = sample_monotone_budgets(allowed, 10, 40, seed=3)
    assert len(draws) == len(set(draws)) == 40
    assert all(is_monotone(list(s)) and len(s) == 10 and set(s) <= set(allowed) for s in draws)
    assert draws == sample_monotone_budgets(allowed, 10, 40, seed=3) != sample_monotone_budgets(allowed, 10, 40, seed=4)
    # one draw per seed is uniform over the C(4, 2) = 6 sequences of a small space
    counts = collections.Counter(sample_monotone_budgets([2, 4, 6], 2, 1, seed=k)[0] for k in range(1200))
    assert set(counts) == set(monotone_budgets([2, 4, 6], 2)) and all(140 < c < 260 for c in counts.values())
    # asking for more than exist gives all of them, less the excluded one
    small = sample_monotone_budgets([3, 6], 2, 10, seed=0, exclude={(6, 6)})
    assert sorted(small) == [(3, 3), (6, 3)]


def test_edges_split_the_sampler_levels_into_equal_bins():
    levels = [0.002, 0.01, 0.1, 1.0, 10.0, 80.0]
    edges = edges_for_bins(levels, 3)
    assert edges == pytest.approx([math.sqrt(0.01 * 0.1), math.sqrt(1.0 * 10.0)])
    schedule = BudgetSchedule(edges, [6, 5, 4])
    assert [schedule.budget_at(s) for s in levels] == [6, 6, 5, 5, 4, 4]
    assert edges_for_bins(levels, 1) == []
    with pytest.raises(ValueError, match="bins=7"):
        edges_for_bins(levels, 7)


def test_candidates_start_at_full_depth_and_are_all_monotone():
    space = LayerDropSpace(edges=[0.5, 5.0], budgets=[2, 4, 6],
                           schedules=[{"edges": [1.0], "budgets": [6, 3]}, {"edges": [2.0], "budgets": [6, 6]}])
    cands = make_candidates(space, depth=6, lowest=1, levels=[])
    assert cands[0].label == "full depth" and cands[0].schedule.is_full
    searched = [c for c in cands[1:] if not c.label.startswith("fixed")]
    assert len(searched) == math.comb(3 + 3 - 1, 3) - 1  # every monotone triple but (6, 6, 6) = full depth
    assert all(c.schedule.edges == [0.5, 5.0] and is_monotone(c.schedule.budgets) for c in searched)
    # the second fixed schedule is full depth again: dropped as a duplicate
    assert [c.label for c in cands if c.label.startswith("fixed")] == ["fixed 0: 6-3"]
    with pytest.raises(ValueError, match=r"budgets \[2\] are outside \[3, depth=6\]"):
        make_candidates(space, depth=6, lowest=3, levels=[])
    random_space = LayerDropSpace(bins=2, search="random", num_trials=4, seed=1)
    cands = make_candidates(random_space, depth=6, lowest=1, levels=[0.002, 0.3, 4.0, 80.0])
    assert len(cands) == 5 and all(is_monotone(c.schedule.budgets) for c in cands)
    assert cands[1].schedule.edges == pytest.approx([math.sqrt(0.3 * 4.0)])


# ------------------------------------------------------------------------------ the space file


def test_space_file_refuses_unknown_keys_and_increasing_schedules(tmp_path):
    shipped = load_space("tuning/layer_drop.yaml")  # the file in the repository is valid
    assert shipped.search == "random" and shipped.num_trials and shipped.prompts >= 2
    bad = tmp_path / "space.yaml"
    bad.write_text("bins: 2\nlatency: {repeat: 3}\n")
    with pytest.raises(ValueError, match=rf"{bad}: unknown key 'latency.repeat'"):
        load_space(bad)
    bad.write_text("bins: 2\nprompt: 8\n")
    with pytest.raises(ValueError, match="unknown key 'prompt'"):
        load_space(bad)
    bad.write_text("schedules:\n  - {edges: [1.0], budgets: [3, 6]}\n")
    with pytest.raises(ValueError, match=r"schedules\[0\]: budgets \[3, 6\] increase with sigma"):
        load_space(bad)
    bad.write_text("schedules:\n  - {edges: [0.0, 1.0], budgets: [6, 4, 3]}\n")
    with pytest.raises(ValueError, match=r"schedules\[0\]: budget schedule edges must be positive"):
        load_space(bad)
    bad.write_text("search: random\n")
    with pytest.raises(ValueError, match="num_trials is needed by search: random"):
        load_space(bad)
    bad.write_text("edges: [1.0]\nbins: 2\n")
    with pytest.raises(ValueError, match="either edges or bins"):
        load_space(bad)


# ------------------------------------------------------------------------------ a real sweep


@pytest.fixture(scope="module")
def presto_l_export(tmp_path_factory):
    """An untrained budget-conditioned Presto-L generator (tiny DiT, 6 blocks, 4 Heun steps by
    default). Its zero-initialised output and modulation layers get small random weights, so that
    the blocks run (and hence the schedule) change what it generates."""
    from lively import lively_export

    cfg = load_config("tiny", ["sampler.steps=4", "distill.method=presto-l", "model.budget_embedding=true"])
    return lively_export(tmp_path_factory.mktemp("presto-l") / "export", cfg, "generator", seed=0, step=7)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory, ray_cluster):
    from test_reader import make_rows, write  # shard helpers: latent [32, 128], captions, bpm

    folder = tmp_path_factory.mktemp("valid") / "valid"
    rows = make_rows(8)
    for i, r in enumerate(rows):
        r["caption"] = f"a piece for piano, in {'C major' if i % 2 else 'A minor'}, 4/4, {int(r['bpm'])} BPM"
    write(str(folder), rows)
    return folder


def _blocks_per_sample(gen, prompts) -> float:
    from presto_ray.eval.latency import counting

    with counting(gen) as counts:
        gen.sample_latents(prompts)
    return counts["block_rows"] / len(prompts)


def test_sweep_writes_the_front_and_an_export_that_generate_samples_under(presto_l_export, held_out, tmp_path,
                                                                        monkeypatch, ray_cluster):
    pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")
    from presto_ray.generate import MusicGenerator, Prompt
    from presto_ray.sweep.layer_drop import layer_drop_sweep

    monkeypatch.setenv("PRESTO_CACHE", str(tmp_path / "cache"))
    ray = ray_cluster
    cpus_before = ray.available_resources().get("CPU")
    space = LayerDropSpace(edges=[1.0], budgets=[3, 6], prompts=4, steps=2, batch_size=4,
                           latency={"repeats": 1, "warmup": 0}, max_concurrent_trials=2,
                           choose={"max_kad_increase": 1e6})
    out = tmp_path / "sweep"
    doc = layer_drop_sweep(str(presto_l_export), str(held_out), space, str(out), progress=False)

    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert [t["label"] for t in trials] == ["full depth", "6-3", "3-3"]  # one row per trial
    assert [json.loads(t["budgets"]) for t in trials] == [[], [6, 3], [3, 3]]
    # 2 Heun steps: sigma_max (above the edge), then sigma_min twice (the Heun correction and the
    # last Euler step); CFG doubles each: 6 passes of 6 blocks, or 3 blocks above sigma = 1
    blocks = [float(t["blocks_per_sample"]) for t in trials]
    assert blocks == [36.0, 2 * 3 + 4 * 6, 6 * 3]
    assert [float(t["evals_per_sample"]) for t in trials] == [6.0] * 3
    for t in trials:
        low, high = json.loads(t["kad_ci"])
        assert math.isfinite(float(t["kad"])) and low < high and float(t["sampling_s"]) > 0
        assert 0.0 <= float(t["key_acc"]) <= 1.0 and math.isfinite(float(t["tempo_err_bpm"]))

    points = [(float(t["blocks_per_sample"]), float(t["kad"])) for t in trials]
    front = [i for i, t in enumerate(trials) if t["on_front"] == "True"]
    assert front == sorted(doc["front"]) and 2 in front  # the cheapest schedule is always on the front
    for i in front:
        assert not any(dominates(p, points[i]) for p in points)
    for i in set(range(3)) - set(front):
        assert any(dominates(points[j], points[i]) for j in front)
    with open(out / "pareto.csv") as f:
        assert [r["label"] for r in csv.DictReader(f)] == [trials[i]["label"] for i in doc["front"]]
    # a 100x tolerance lets the cheapest front point through
    assert [t["chosen"] for t in trials] == ["False", "False", "True"] and doc["chosen"] == 2
    assert "**3-3**" in (out / "pareto.md").read_text()
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    exported = load_export(out / "export")
    saved = exported.cfg.distill.budget_schedule
    assert saved.edges == [1.0] and saved.budgets == [3, 3]
    assert exported.cfg.sampler.steps == 2 and exported.step == 7
    original = load_export(presto_l_export)
    for name, tensor in exported.state_dict("generator").items():  # digests verify; weights unchanged
        assert torch.equal(tensor, original.state_dict("generator")[name])

    # generate from out/export: its default schedule and steps are the chosen ones
    prompts = [Prompt("a piece for piano, in C major, 4/4, 90 BPM", 90.0, None, 5)]
    chosen = MusicGenerator(str(out / "export"))
    assert chosen.schedule.budgets == [3, 3] and _blocks_per_sample(chosen, prompts) == 18.0
    explicit = MusicGenerator(str(presto_l_export), budget_schedule=BudgetSchedule([1.0], [3, 3]))
    latents = chosen.sample_latents(prompts)
    assert torch.equal(latents, explicit.sample_latents(prompts, steps=2))
    assert not torch.allclose(latents, explicit.sample_latents(prompts, steps=2, schedule=BudgetSchedule([], [])))

    # rerunning the same sweep resumes the Tune experiment: no trial runs again (same timings)
    again = layer_drop_sweep(str(presto_l_export), str(held_out), space, str(out), progress=False)
    assert [r["sampling_s"] for r in again["trials"]] == [r["sampling_s"] for r in doc["trials"]]
    assert len(list((out / "tune").iterdir())) == 1

    # the trials gave their resources back
    import time

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU") != cpus_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU") == cpus_before


def test_sweep_refuses_a_model_without_layer_dropping(tmp_path, held_out, ray_cluster):
    from presto_ray.sweep.layer_drop import layer_drop_sweep

    cfg = load_config("tiny", ["distill.method=presto-s"])
    folder = tmp_path / "presto-s"
    write_export(folder, {"generator": EDMPrecond(DiT1D(cfg.model), 0.5).state_dict()}, cfg,
                 LatentStats(mean=torch.zeros(32), std=torch.ones(32), sigma_data=0.5), 1)
    with pytest.raises(ValueError, match="needs a layer-dropping student .* holds a presto-s model"):
        layer_drop_sweep(str(folder), str(held_out), LayerDropSpace(prompts=2), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "trials.csv").exists()


def test_sweep_to_object_storage(presto_l_export, held_out, tmp_path, monkeypatch, s3_endpoint, ray_cluster):
    """--out s3://...: the tables, Tune's experiment and the export land in the bucket, and the
    export loads from there with the chosen schedule."""
    pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")
    from presto_ray.data import storage
    from presto_ray.generate import MusicGenerator
    from presto_ray.cli import main

    monkeypatch.setenv("PRESTO_CACHE", str(tmp_path / "cache"))
    space = LayerDropSpace(edges=[1.0], budgets=[4, 6], prompts=2, steps=2, latency={"repeats": 1, "warmup": 0},
                           choose={"max_kad_increase": 1e6})
    out = "s3://presto/sweeps/layer-drop"
    space_file = tmp_path / "space.yaml"  # through the CLI, as users run it
    space_file.write_text(yaml.safe_dump(space.model_dump(mode="json", exclude_unset=True)))
    assert main(["sweep", "layer-drop", "--checkpoint", str(presto_l_export), "--data", str(held_out),
                 "--space", str(space_file), "--out", out]) == 0
    doc = json.loads(storage.read_bytes(f"{out}/sweep.json"))
    assert [r["label"] for r in doc["trials"]] == ["full depth", "6-4", "4-4"] and doc["chosen"] == 2
    rows = list(csv.DictReader(storage.read_bytes(f"{out}/trials.csv").decode().splitlines()))
    assert [r["label"] for r in rows] == ["full depth", "6-4", "4-4"]
    names = {"trials.csv", "pareto.csv", "pareto.md", "pareto.png", "sweep.json", "export", "tune"}
    assert names <= set(storage.list_dir(out))
    assert storage.list_dir(doc["tune"])  # Tune's experiment state is in the bucket
    gen = MusicGenerator(doc["export"])  # fetched and checksum-verified
    assert gen.schedule.budgets == [4, 4] and gen.export.cfg.sampler.steps == 2
