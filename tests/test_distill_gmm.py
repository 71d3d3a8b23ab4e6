"""Distillation correctness on an analytic teacher (one process, no Ray, CPU).

Two 2-D Gaussian mixtures (tests/gmm_harness.py): "three" (weights 0.5 / 0.3 / 0.2) and "ring" (8
equal components on a circle). The teacher is the exact denoiser; generator and fake score start as
a copy of the teacher (a small EDMPrecond(MLPNet) fitted to noised data samples). Each method is
trained once per mixture (cached for the module) and its few-step ping-pong samples are compared
with fresh data:

- distance: squared MMD (RBF kernel mix, n = 2000) to fresh data, against two references: the
  initial generator's distance at the same step count, and the distance between two independent
  data samples of the same size (the noise floor, ~0.002);
- mode coverage: each sample is assigned to its most responsible component at sigma = 0.002; the
  fractions must match the weights.

Presto-S matches the generator's output distribution *pooled over p_gen* to the data (the fake
score models that pooled distribution). In 2-D the split of that match across noise levels is not
identified: errors of different levels cancel in the pool. Measured on "three" (3 seeds): the
levels sigma >= 10 leave the components pulled toward the data mean, the levels 0.05-0.5 push them
outward by about as much (component-mean offsets up to 0.05-0.1 at single levels), and the pooled
output's offsets stay below 0.01 with its MMD^2 at 3-4x the floor. The 4-step sampler's last real
level (sigma = 0.47) carries such an offset, so 4-step sampling is held to a looser bound than 1
step, the pooled distribution is asserted separately, and the targets of issue #18 (4 steps within
5x the floor and no worse than 1 step) are a strict xfail. (Offline check, not the method: a fake
score that also sees the generator's level cut the single-level offsets 2-4x and brought 4 steps to
the 1-step distance on both mixtures, 3 seeds; the rest of the gap to the floor is the 1-step
precision.) A single-level DMD / DMD2 generator and consistency distillation do not have this
freedom. The ring's Presto-S run is marked slow.

Issue #18 follow-up (x floor under this kernel; docs/results.md, "The analytic floor"):
- Not the kernel: with one RBF at the data's median pairwise distance (KAD's choice, ~1.0 here) the
  ring's 4-step sample is further from the floor, not nearer (65x against 45x; 1 step 3.8x): its
  component weights are off by up to 0.07 of 0.125, which a broad kernel weighs most; the test's
  kernel keeps its fine bandwidths because they see the components' width and position.
- The precision is set by the copy: the fake score starts from it and the teacher is exact, so its
  fitting error is a DMD gradient a perfect generator would still get (mean |g| 0.37 with the
  800-step copy, 0.95 for sigma 0.05-0.2; 0.13 with a 3000-step copy). On the ring the 3000-step
  copy (with the fake score's lr 1e-3) gave 1 / 4 steps / pooled 11-20 / 10-18 / 4-7x over seeds
  0-2 (from 20 / 45 / 10x at seed 0): 4 steps below 1 step in each, none within 5x.
- But on "three" the same accurate copy collapses the sampled levels onto the heaviest component
  (1 and 4 steps ~470x, the 0.47 level 360x) while the pooled output stays at 7x: the level-blind
  fake score lets the other levels compensate in the pool. So the issue's targets stay a strict
  xfail here, and the settings stay those measured over 3 seeds above.
"""

from __future__ import annotations

import pytest
import torch

import gmm_harness as H
import presto_ray.distill.presto_s as presto_s_module

STEPS = (1, 2, 4)
LEVELS = (80.0, 9.7232, 0.46998)  # the 4-step sampler's levels above sigma_min
PRESTO_S = H.PrestoSRun()  # 3000 iterations, batch 256, lr 5e-4 / 2e-4, ttur 5, nu 0.01, p_gen = inference
# Presto-S acceptance factors per mixture (the flipped-sign run must fail the "three" ones), set from
# 3 seeds of the test's configuration with margin.
# Measured over seeds 0-2 (run and copy seed), x floor: "three" 1 step 16-34x, 4 steps 14-35x, pooled
# 2.3-4.1x, fraction errors up to 0.076 (1 step) / 0.055 (4 steps); "ring" 1 step 20-27x, 4 steps
# 29-46x, pooled 10.4-10.8x, fraction errors up to 0.039 / 0.070.
LIMITS = {
    "three": {"copy_error": 0.02, "one_vs_init": 0.04, "one_vs_data": 45.0, "four_vs_init": 0.35,
              "four_vs_data": 60.0, "pooled_vs_data": 10.0, "one_tol": 0.1, "four_tol": 0.08},
    "ring": {"copy_error": 0.05, "one_vs_init": 0.03, "one_vs_data": 40.0, "four_vs_init": 0.4,
             "four_vs_data": 80.0, "pooled_vs_data": 20.0, "one_tol": 0.06, "four_tol": 0.1},
}
# Issue #18's targets for 4-step Presto-S (not met: see test_presto_s_four_step_issue_targets)
TARGET_VS_DATA, TARGET_FOUR_VS_ONE = 5.0, 1.0
MIXTURES = ["three", pytest.param("ring", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is as fast and is deterministic; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_CACHE: dict = {}


def _setup(name: str) -> dict:
    """Mixture, teacher copy, noise floor and the copy's own distances, once per mixture."""
    key = ("setup", name)
    if key not in _CACHE:
        mix = H.MIXTURES[name]()
        base, copy_error = H.pretrain_copy(mix)
        initial = {s: H.evaluate(mix, base, s) for s in STEPS}
        spread = float(H.pingpong_samples(base, 1).std(0).mean())
        _CACHE[key] = {"name": name, "mix": mix, "base": base, "copy_error": copy_error,
                       "data": H.data_vs_data(mix), "initial": initial, "initial_spread": spread}
    return _CACHE[key]


def _presto_s(name: str) -> dict:
    """Presto-S (PRESTO_S) on one mixture, evaluated at STEPS, pooled over p_gen and per level."""
    key = ("presto-s", name)
    if key not in _CACHE:
        st = _setup(name)
        update = H.presto_s_update(PRESTO_S)
        out = H.train_distribution_matching(st["mix"], st["base"], update, PRESTO_S)
        gen = out["generator"]
        out["eval"] = {s: H.evaluate(st["mix"], gen, s) for s in STEPS}
        out["pooled"] = H.pooled_output_mmd(st["mix"], gen, update.p_gen)
        out["levels"] = {s: H.level_mmd(st["mix"], gen, s) for s in LEVELS}
        _CACHE[key] = out
    return _CACHE[key]


@pytest.fixture(scope="module")
def setup():
    """The "three" mixture (flipped sign, dmd2 and cd run on it only)."""
    return _setup("three")


@pytest.fixture(scope="module")
def presto_s_flipped(setup):
    """The same Presto-S training (same hyper-parameters and seeds) with the DMD gradient's sign
    flipped."""
    orig = presto_s_module.dmd_gradient
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(presto_s_module, "dmd_gradient", lambda *a, **k: -orig(*a, **k))
        out = H.train_distribution_matching(setup["mix"], setup["base"], H.presto_s_update(PRESTO_S), PRESTO_S)
    out["eval"] = {s: H.evaluate(setup["mix"], out["generator"], s) for s in STEPS}
    return out


@pytest.fixture(scope="module")
def dmd2(setup):
    """DMD2 as published, 1-step student (generator level {80}), through PrestoS.from_config."""
    run = H.PrestoSRun(iterations=2000, ttur=3)
    update = H.dmd2_update(run, student_steps=1)
    out = H.train_distribution_matching(setup["mix"], setup["base"], update, run)
    out["update"] = update
    out["eval"] = {1: H.evaluate(setup["mix"], out["generator"], 1)}
    return out


@pytest.fixture(scope="module")
def cd(setup):
    out = H.train_cd(setup["mix"], setup["base"], H.CDRun())
    out["eval"] = {s: H.evaluate(setup["mix"], out["generator"], s) for s in (1, 4)}
    return out


def _report(name, result, setup):
    print(f"\n{name}: " + ", ".join(f"{s}-step mmd {e['mmd']:.4f} fractions {[round(f, 3) for f in e['fractions']]}"
                                     for s, e in result["eval"].items())
          + f" | data-vs-data {setup['data']:.4f} | initial "
          + ", ".join(f"{s}-step {e['mmd']:.4f}" for s, e in setup["initial"].items())
          + f" | {result['seconds']:.1f}s")


def _fractions_close(fractions, weights, tol):
    return max(abs(f - float(w)) for f, w in zip(fractions, weights)) < tol


def _accepted(ev, setup, steps, vs_init, vs_data, tol):
    return (ev["finite"] and ev["mmd"] < vs_init * setup["initial"][steps]["mmd"]
            and ev["mmd"] < vs_data * setup["data"] and _fractions_close(ev["fractions"], setup["mix"].weights, tol))


@pytest.mark.parametrize("name", ["three", "ring"])
def test_setup_references(name):
    """The teacher copy approximates the exact denoiser; its 1-step output is far from the data (the
    denoiser at sigma_max returns about the data mean: one blob, per-axis std well below the data's
    0.5), the noise floor is small."""
    st = _setup(name)
    assert st["copy_error"] < LIMITS[name]["copy_error"]
    assert st["data"] < 0.005
    assert st["initial"][1]["mmd"] > 1.0
    assert st["initial"][1]["mmd"] > 300 * st["data"]
    assert st["initial_spread"] < 0.1  # one blob
    if name == "three":  # the blob is nearest the heaviest component (the ring's centre is ambiguous)
        assert max(st["initial"][1]["fractions"]) > 0.9
    assert st["initial"][4]["mmd"] > 0.2


@pytest.mark.parametrize("name", MIXTURES)
def test_presto_s_one_step_matches_mixture(name):
    st, out, lim = _setup(name), _presto_s(name), LIMITS[name]
    _report(f"presto-s ({name})", out, st)
    ev = out["eval"][1]
    assert ev["finite"]
    assert ev["mmd"] < lim["one_vs_init"] * st["initial"][1]["mmd"]
    assert ev["mmd"] < lim["one_vs_data"] * st["data"]
    assert _fractions_close(ev["fractions"], st["mix"].weights, lim["one_tol"]), ev["fractions"]
    assert min(ev["fractions"]) > 0.75 * float(st["mix"].weights.min())  # the lightest component is not starved


@pytest.mark.parametrize("name", MIXTURES)
def test_presto_s_four_step_matches_mixture(name):
    st, out, lim = _setup(name), _presto_s(name), LIMITS[name]
    ev = out["eval"][4]
    assert ev["finite"]
    assert ev["mmd"] < lim["four_vs_init"] * st["initial"][4]["mmd"]
    assert ev["mmd"] < lim["four_vs_data"] * st["data"]
    assert _fractions_close(ev["fractions"], st["mix"].weights, lim["four_tol"]), ev["fractions"]


@pytest.mark.parametrize("objective", ["v", "rectified_flow"])
def test_a_v_or_flow_teacher_is_the_edm_teacher_where_presto_s_reads_it(objective):
    """The exact mixture denoiser written as a v-prediction or rectified-flow network and wrapped by
    its preconditioner gives the EDM teacher's x0 at every noise level Presto-S draws (float32, the
    harness's precision), so the distillation below sees the same real score."""
    mix = H.mixture()
    g = torch.Generator().manual_seed(0)
    sigma = H.KarrasContinuous(H.SIGMA_MIN, H.SIGMA_MAX, H.RHO).sample(4096, generator=g)
    x0, _ = mix.sample(4096, g)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        got, want = H.exact_teacher(mix, objective)(x, sigma, None), mix(x, sigma)
    assert (got - want).abs().max() < 1e-5, float((got - want).abs().max())  # measured 4e-7


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["v", "rectified_flow"])
def test_presto_s_from_a_v_or_flow_teacher_reaches_the_edm_paths_accuracy(objective):
    """Presto-S (same settings and seeds) with the teacher given as a v-prediction or a
    rectified-flow network passes the bars the EDM path passes on "three", at 1 and 4 steps."""
    st, edm, lim = _setup("three"), _presto_s("three"), LIMITS["three"]
    out = H.train_distribution_matching(st["mix"], st["base"], H.presto_s_update(PRESTO_S), PRESTO_S,
                                        teacher=H.exact_teacher(st["mix"], objective))
    out["eval"] = {s: H.evaluate(st["mix"], out["generator"], s) for s in (1, 4)}
    _report(f"presto-s ({objective} teacher)", out, st)
    _report("presto-s (edm teacher)", edm, st)
    assert _accepted(out["eval"][1], st, 1, lim["one_vs_init"], lim["one_vs_data"], lim["one_tol"])
    assert _accepted(out["eval"][4], st, 4, lim["four_vs_init"], lim["four_vs_data"], lim["four_tol"])


@pytest.mark.parametrize("name", MIXTURES)
def test_presto_s_pooled_output_matches_data(name):
    """What distribution matching optimises: G's outputs on noised data pooled over p_gen. It is
    matched more closely than any single level the sampler uses."""
    st, out, lim = _setup(name), _presto_s(name), LIMITS[name]
    print(f"\npresto-s ({name}) pooled output mmd {out['pooled']:.4f}; per level "
          + ", ".join(f"{s:g}: {v:.4f}" for s, v in out["levels"].items()) + f"; floor {st['data']:.4f}")
    assert out["pooled"] < lim["pooled_vs_data"] * st["data"]
    assert out["pooled"] < min(out["levels"].values())


@pytest.mark.xfail(strict=True, reason="issue #18: the pooled objective leaves the split across levels free in 2-D "
                   "(the level 0.47 keeps a component offset; an accurate copy collapses the sampled levels of "
                   "'three'); the 1-step precision is bounded by the copy's fit (see the module docstring)")
@pytest.mark.parametrize("name", MIXTURES)
def test_presto_s_four_step_issue_targets(name):
    """Issue #18's targets: 4-step MMD^2 within 5x the floor and no worse than 1 step."""
    st, out = _setup(name), _presto_s(name)
    one, four = out["eval"][1]["mmd"], out["eval"][4]["mmd"]
    assert four <= TARGET_VS_DATA * st["data"] and four <= TARGET_FOUR_VS_ONE * one, (one, four, st["data"])


@pytest.mark.parametrize("name", MIXTURES)
def test_presto_s_training_diagnostics(name):
    """The fake score tracks the generator (its denoising loss is finite and O(1)) and the
    discriminator sits near the least-squares equilibrium instead of winning outright."""
    m = _presto_s(name)["metrics"]
    assert 0 < m["loss_fake"] < 2.0
    assert 0.3 < m["loss_disc"] < 0.6  # 0.5 = both logits at 0.5; a winning D goes to 0


def test_flipped_dmd_sign_fails(presto_s_flipped, setup):
    presto_s, lim = _presto_s("three"), LIMITS["three"]
    _report("presto-s with -dmd_gradient", presto_s_flipped, setup)
    one, four = presto_s_flipped["eval"][1], presto_s_flipped["eval"][4]
    assert not _accepted(one, setup, 1, lim["one_vs_init"], lim["one_vs_data"], lim["one_tol"])
    assert not _accepted(four, setup, 4, lim["four_vs_init"], lim["four_vs_data"], lim["four_tol"])
    # much worse than the correct run, and no better than the untrained copy
    assert one["mmd"] > 20 * presto_s["eval"][1]["mmd"]
    assert four["mmd"] > 10 * presto_s["eval"][4]["mmd"]
    assert one["mmd"] > 0.5 * setup["initial"][1]["mmd"]
    assert four["mmd"] > setup["initial"][4]["mmd"]


def test_dmd2_baseline_learns(dmd2, setup):
    update = dmd2["update"]
    assert update.gan_loss == "nonsaturating" and update.gen_sigmas == [80.0]
    _report("dmd2", dmd2, setup)
    ev = dmd2["eval"][1]
    assert ev["finite"]
    assert ev["mmd"] < 0.03 * setup["initial"][1]["mmd"]
    assert ev["mmd"] < 30 * setup["data"]
    assert _fractions_close(ev["fractions"], setup["mix"].weights, 0.07), ev["fractions"]


def test_consistency_distillation_learns(cd, setup):
    _report("cd", cd, setup)
    one, four = cd["eval"][1], cd["eval"][4]
    assert one["finite"] and four["finite"]
    assert one["mmd"] < 0.01 * setup["initial"][1]["mmd"]
    assert one["mmd"] < 10 * setup["data"]
    assert four["mmd"] < 0.25 * setup["initial"][4]["mmd"]
    assert four["mmd"] < 30 * setup["data"]
    for ev in (one, four):
        assert _fractions_close(ev["fractions"], setup["mix"].weights, 0.05), ev["fractions"]
