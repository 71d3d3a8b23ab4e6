"""The distillation pieces one at a time: DMD gradient and surrogate, GAN losses, the
discriminator head, role isolation in the Presto-S turns, the two-time-scale rule, the NaN
guard's skip, the config sections and the student's model config per method."""

from __future__ import annotations

import copy

import pytest
import torch

from presto_ray.config import ConfigError, DiTConfig, load_config
from presto_ray.distill.dmd import dmd_gradient, dmd_loss
from presto_ray.distill.gan import discriminator_gan_loss, generator_gan_loss
from presto_ray.distill.guidance import GuidanceModel
from presto_ray.distill.methods import make_update, student_model_config
from presto_ray.distill.presto_s import PrestoS
from presto_ray.distill.roles import Roles, TorchRole
from presto_ray.edm import EDMPrecond, GaussianMixtureDenoiser
from presto_ray.edm.noise import KarrasContinuous, LogNormal
from presto_ray.models.disc_head import DiscriminatorHead
from presto_ray.models.mlp import MLPNet


def test_dmd_gradient_is_normalised_per_sample_and_the_surrogate_descends_along_it():
    x_hat = torch.tensor([[1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    m_real = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # second sample: zero normaliser
    m_fake = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    g = dmd_gradient(x_hat, m_real, m_fake)
    # sample 0: (m_fake - m_real) / mean|x_hat - m_real| = [2, 1] / 1.5
    assert torch.allclose(g[0], torch.tensor([2.0, 1.0]) / 1.5)
    assert torch.equal(g[1], torch.zeros(2))  # 1/0 -> nan_to_num -> 0
    loss = dmd_loss(x_hat, g)
    loss.backward()
    assert torch.allclose(x_hat.grad, g / g.numel())  # d/dx 0.5 mean((x - sg(x - g))^2) = g / numel
    # a gradient step moves x_hat toward the teacher's denoising and away from the fake score's
    moved = x_hat.detach() - 0.5 * g
    assert (moved[0] - m_real[0]).norm() < (x_hat[0].detach() - m_real[0]).norm()


def test_gan_losses_at_known_logits():
    ones, zeros = torch.ones(2, 3), torch.zeros(2, 3)
    assert generator_gan_loss(ones, "lsgan") == 0 and generator_gan_loss(zeros, "lsgan") == 1
    assert discriminator_gan_loss(ones, zeros, "lsgan") == 0 and discriminator_gan_loss(zeros, ones, "lsgan") == 2
    big = torch.full((2, 3), 20.0)
    assert generator_gan_loss(big, "nonsaturating") < 1e-6
    assert discriminator_gan_loss(big, -big, "nonsaturating") < 1e-6
    assert torch.isclose(generator_gan_loss(zeros, "nonsaturating"), torch.log(torch.tensor(2.0)))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_gan_loss(zeros, "hinge")


def test_discriminator_head_gives_one_logit_per_strided_frame():
    head = DiscriminatorHead(in_dim=16, width=12)
    assert head(torch.randn(3, 10, 16)).shape == (3, 5)
    assert head(torch.randn(3, 7, 16)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        head(torch.randn(3, 16))


@pytest.mark.parametrize("kind", ["mlp", "dit"])
def test_logits_read_the_fake_score_state_at_the_disc_block_without_the_rest_of_the_backbone(kind):
    from test_dit import make_inputs, make_model

    torch.manual_seed(0)
    if kind == "dit":  # width 64, depth 6, with a text condition
        net, (x, _, cond), width = make_model(), make_inputs(batch=3, frames=32), 64
    else:
        net, x, cond, width = MLPNet(2, 32, 3), torch.randn(5, 2), None, 32
    fake = EDMPrecond(net, 0.5)
    guidance = GuidanceModel(fake, DiscriminatorHead(width, 8), disc_block=1)
    sigma = torch.linspace(0.1, 3.0, x.shape[0])
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(net.blocks)]
    try:
        logits = guidance(x, sigma, cond, mode="logits")
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == [0, 1]
    _, hidden = fake(x, sigma, cond, return_hidden=[1])
    torch.testing.assert_close(logits, guidance.head(hidden[1]), atol=1e-6, rtol=1e-6)
    logits.sum().backward()
    assert all(p.grad is None for p in net.blocks[2].parameters())  # later blocks: from the fake-score loss


def _toy(ttur=2, nu=0.5):
    torch.manual_seed(0)
    mix = GaussianMixtureDenoiser(torch.tensor([0.6, 0.4]), torch.tensor([[-0.5, 0.0], [0.5, 0.2]]),
                                  torch.tensor([0.1, 0.1]))
    gen = EDMPrecond(MLPNet(2, 32, 3), 0.5)
    fake = GuidanceModel(copy.deepcopy(gen), DiscriminatorHead(32, 8), disc_block=1)
    roles = Roles(generator=TorchRole.adamw("generator", gen, 1e-2), teacher=mix,
                  guidance=TorchRole.adamw("guidance", fake, 1e-2))
    update = PrestoS(p_gen=KarrasContinuous(0.002, 80, 7), p_dmd=LogNormal(-1.2, 1.2), p_dsm=LogNormal(-1.2, 1.2),
                     p_gan=LogNormal(-1.2, 1.2), sigma_data=0.5, w_real=1.0, nu1=nu, nu2=nu, ttur=ttur)
    x0, _ = mix.sample(64, torch.Generator().manual_seed(1))
    return roles, update, x0


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_each_turn_reaches_only_its_own_role():
    roles, update, x0 = _toy()
    g = torch.Generator().manual_seed(0)
    x_in, sigma = update.generator_input(roles, x0, None, g)
    x_hat = roles.generator(x_in, sigma, None)
    roles.guidance.optimizer.zero_grad(set_to_none=True)
    # generator turn with the optimiser step disabled, to look at where gradients landed
    roles.generator.step = lambda: None
    update.generator_turn(roles, x_hat, None, g, lambda role, loss: True)
    assert all(p.grad is None for p in roles.guidance.module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in roles.generator.module.parameters())
    roles.generator.module.zero_grad(set_to_none=True)
    roles.guidance.step = lambda: None
    update.guidance_turn(roles, x0, x_hat, None, g, lambda role, loss: True)
    assert all(p.grad is None for p in roles.generator.module.parameters())
    head_grads = [p.grad for p in roles.guidance.module.head.parameters()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in head_grads)  # nu2 * L_D reaches the head


def test_two_time_scale_rule_updates_the_generator_every_ttur_iterations():
    roles, update, x0 = _toy(ttur=3)
    g = torch.Generator().manual_seed(0)
    changed = []
    for it in range(6):
        gen_before, guid_before = _params(roles.generator.module), _params(roles.guidance.module)
        metrics = update.step(roles, x0, None, it, generator=g)
        changed.append((_changed(gen_before, roles.generator.module), _changed(guid_before, roles.guidance.module)))
        assert ("loss_dm" in metrics) == (it % 3 == 0)
    assert changed == [(True, True), (False, True), (False, True)] * 2


def test_a_refused_loss_updates_nothing_and_is_reported():
    roles, update, x0 = _toy(ttur=1)
    gen_before, guid_before = _params(roles.generator.module), _params(roles.guidance.module)
    metrics = update.step(roles, x0, None, 0, generator=torch.Generator().manual_seed(0),
                          guard=lambda role, loss: False)
    assert not _changed(gen_before, roles.generator.module) and not _changed(guid_before, roles.guidance.module)
    assert metrics["skipped_generator"] == 1 and metrics["skipped_guidance"] == 1


def test_distill_config_sections_validate_and_name_the_key():
    cfg = load_config("tiny", ["distill.generator.lr=1e-4", "distill.guidance.zero_stage=3",
                               "distill.budget_schedule.edges=[0.5, 5.0]", "distill.budget_schedule.budgets=[6, 4, 2]"])
    gen_train = cfg.distill.generator.apply_to(cfg.train)
    assert gen_train.lr == 1e-4 and gen_train.zero_stage == cfg.train.zero_stage
    assert cfg.distill.guidance.apply_to(cfg.train).zero_stage == 3
    with pytest.raises(ConfigError, match="distill.nu3"):
        load_config("tiny", ["distill.nu3=1"])
    with pytest.raises(ConfigError, match="len\\(edges\\) = len\\(budgets\\) - 1"):
        load_config("tiny", ["distill.budget_schedule.edges=[0.5]", "distill.budget_schedule.budgets=[6, 4, 2]"])
    with pytest.raises(ConfigError, match="distill.method"):
        load_config("tiny", ["distill.method=dmd3"])
    with pytest.raises(ConfigError, match="ttur"):
        load_config("tiny", ["distill.ttur=0"])


@pytest.mark.parametrize("method, drop_mode, budget_embedding", [
    ("presto-s", "presto", False), ("dmd2", "presto", False), ("cd", "presto", False),
    ("presto-l", "presto", True), ("ase", "ase", False)])
def test_student_model_config_per_method(method, drop_mode, budget_embedding):
    cfg = load_config("tiny", [f"distill.method={method}", "distill.keep_last=2"])
    teacher = DiTConfig(**cfg.model.model_dump())
    student = student_model_config(teacher, cfg)
    assert (student.drop_mode, student.budget_embedding) == (drop_mode, budget_embedding)
    assert student.depth == teacher.depth and student.width == teacher.width
    if method == "presto-l":
        assert student.keep_last == 2


def test_presto_ls_takes_the_presto_l_network():
    cfg = load_config("tiny", ["distill.method=presto-ls"])
    with pytest.raises(ValueError, match="distill.init"):
        student_model_config(cfg.model, cfg)
    init = cfg.model.model_copy(update={"budget_embedding": True})
    assert student_model_config(cfg.model, cfg, init) == init


def test_backward_simulation_feeds_the_generator_its_own_samples_at_the_discrete_levels():
    roles, update, x0 = _toy()
    update.backward_simulation = True
    update.sim_sigmas = [80.0, 2.0, 0.3]
    x_in, sigma = update.generator_input(roles, x0, None, torch.Generator().manual_seed(0))
    assert x_in.shape == x0.shape and {round(s, 4) for s in sigma.tolist()} <= {80.0, 2.0, 0.3}
    # at the first level the input is pure noise; later levels are renoised generator outputs
    assert x_in[sigma == 80.0].std() > 40
    assert 0.1 < x_in[(sigma - 0.3).abs() < 1e-4].std() < 1.5
    # and the real batch does not enter: shifting it leaves the inputs unchanged
    again, _ = update.generator_input(roles, x0 + 10.0, None, torch.Generator().manual_seed(0))
    assert torch.equal(again, x_in)
    update.backward_simulation = False
    plain, _ = update.generator_input(roles, x0 + 10.0, None, torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, update.generator_input(roles, x0, None, torch.Generator().manual_seed(0))[0])


def test_dmd2_says_which_presto_s_keys_it_ignores(caplog):
    quiet = load_config("tiny", ["distill.method=dmd2"])
    with caplog.at_level("WARNING", logger="presto_ray.distill"):
        update = make_update(quiet)
    assert update.gan_loss == "nonsaturating" and not caplog.records
    loud = load_config("tiny", ["distill.method=dmd2", "distill.p_dmd.kind=inference"])
    with caplog.at_level("WARNING", logger="presto_ray.distill"):
        update = make_update(loud)
    assert update.gan_loss == "nonsaturating" and update.p_dmd is update.p_gen  # still DMD2 as published
    (record,) = caplog.records
    assert "distill.p_dmd" in record.message and "distill.p_gen" not in record.message
