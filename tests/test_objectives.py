"""Teacher objectives (METHOD.md section 7): an exact Gaussian-mixture denoiser written as the network a
v-prediction or rectified-flow model would be, wrapped by its preconditioner, is the EDM denoiser
again, and the samplers give the same samples through every wrapping."""

from __future__ import annotations

import math

from functools import partial

import gmm_harness as H
import pytest
import torch

from presto_ray.edm import EDMPrecond, GaussianMixtureDenoiser, karras_sigmas, sample_pingpong, sample_teacher
from presto_ray.models.objectives import OBJECTIVES, RectifiedFlowPrecond, VPrecond, make_precond

MIXTURE = GaussianMixtureDenoiser(torch.tensor([0.5, 0.3, 0.2]),
                                  torch.tensor([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.8], [0.2, 1.2, -1.0]]),
                                  torch.tensor([0.3, 0.5, 0.2]))


ExactV = partial(H.ExactV, MIXTURE)
ExactFlow = partial(H.ExactFlow, MIXTURE)


def _points(sigmas: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x = x0 + sigma n [len(sigmas), 3] float64 with x0 drawn from the mixture."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = MIXTURE.sample(len(sigmas), g, dtype=torch.float64)
    return x0 + sigmas[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("objective, net, sigma_hi", [("v", ExactV(), 500.0), ("rectified_flow", ExactFlow(), None)])
def test_wrapped_exact_network_is_the_exact_denoiser(objective, net, sigma_hi):
    teacher = make_precond(objective, net, 1.0)
    sigma_hi = sigma_hi or teacher.sigma_max
    sigmas = torch.logspace(math.log10(0.002), math.log10(sigma_hi), 61, dtype=torch.float64)
    x = _points(sigmas)
    d = teacher(x, sigmas, None)
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, MIXTURE(x, sigmas), rtol=1e-12, atol=1e-12)
    # a python-float sigma is the same per-sample sigma
    torch.testing.assert_close(teacher(x[:4], 0.7, None), MIXTURE(x[:4], 0.7), rtol=1e-12, atol=1e-12)


def test_objective_formulas_at_one_sigma():
    """The documented formulas, with a network returning ones (F = 1): v: D = x/(s^2+1) - s/sqrt(s^2+1);
    rectified flow: D = (x - s)/(1+s); and each network sees its own t and input scale."""
    seen = {}

    class Ones(torch.nn.Module):
        def forward(self, x_in, t, cond):
            seen["x_in"], seen["t"] = x_in, t
            return torch.ones_like(x_in)

    x, s = torch.full((2, 3), 2.0, dtype=torch.float64), 3.0
    torch.testing.assert_close(VPrecond(Ones())(x, s, None), x / (s**2 + 1) - s / math.sqrt(s**2 + 1))
    torch.testing.assert_close(seen["t"], torch.full((2,), math.atan(s) * 2 / math.pi, dtype=torch.float64))
    torch.testing.assert_close(seen["x_in"], x / math.sqrt(s**2 + 1))
    torch.testing.assert_close(RectifiedFlowPrecond(Ones())(x, s, None), (x - s) / (1 + s))
    torch.testing.assert_close(seen["t"], torch.full((2,), s / (1 + s), dtype=torch.float64))
    torch.testing.assert_close(seen["x_in"], x / (1 + s))


def test_tuple_output_hidden_state_and_dtypes_follow_edm_precond():
    class Net(torch.nn.Module):
        def forward(self, x_in, t, cond, **kw):
            self.kw, self.t = kw, t
            return torch.zeros_like(x_in), {"aux": cond}

        def hidden_state(self, x_in, t, cond, block, **kw):
            return x_in, t, block, kw

    net = Net()
    x = torch.randn(3, 2, 4, dtype=torch.float16)
    d, aux = VPrecond(net)(x, torch.tensor([0.5, 1.0, 2.0]), "c", budget=2)
    assert aux == {"aux": "c"} and net.kw == {"budget": 2}
    assert d.dtype == torch.float16 and net.t.dtype == torch.float32  # sigma never in half precision
    torch.testing.assert_close(d.float(), x.float() / (torch.tensor([0.5, 1.0, 2.0]) ** 2 + 1)[:, None, None],
                               rtol=1e-3, atol=1e-3)
    x_in, t, block, kw = RectifiedFlowPrecond(net).hidden_state(x.double(), 1.0, None, 1, budget=3)
    torch.testing.assert_close(x_in, x.double() / 2)
    assert t.tolist() == [0.5] * 3 and block == 1 and kw == {"budget": 3}


def test_rectified_flow_cap():
    teacher = RectifiedFlowPrecond(ExactFlow(), t_max=0.99)
    assert teacher.sigma_max == pytest.approx(99.0)
    assert RectifiedFlowPrecond(ExactFlow()).sigma_max == pytest.approx(999.0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="t_max"):
            RectifiedFlowPrecond(ExactFlow(), t_max=bad)


@pytest.mark.parametrize("objective, net", [("v", ExactV()), ("rectified_flow", ExactFlow())])
def test_samplers_give_the_edm_samples_through_every_objective(objective, net):
    teacher = make_precond(objective, net, 1.0)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = karras_sigmas(6, 0.002, 80.0, 7.0, dtype=torch.float64)
    torch.testing.assert_close(sample_teacher(teacher, noise, sigmas, None),
                               sample_teacher(MIXTURE, noise, sigmas, None), rtol=1e-12, atol=1e-12)
    few = karras_sigmas(3, 0.002, 80.0, 7.0, dtype=torch.float64)
    ours = sample_pingpong(teacher, noise, few, None, generator=torch.Generator().manual_seed(4))
    exact = sample_pingpong(MIXTURE, noise, few, None, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12)


def test_make_precond_builds_each_objective_and_names_unknown_ones():
    net = torch.nn.Identity()
    assert OBJECTIVES == ("edm", "v", "rectified_flow")
    edm = make_precond("edm", net, 0.5)
    assert type(edm) is EDMPrecond and edm.sigma_data == 0.5 and edm.net is net
    assert isinstance(make_precond("v", net, 0.5), VPrecond) and make_precond("v", net, 0.5).sigma_data == 0.5
    assert make_precond("rectified_flow", net, t_max=0.9).sigma_max == pytest.approx(9.0)
    with pytest.raises(ValueError, match=r"unknown teacher objective 'eps'; expected one of 'edm', 'v', "
                                         r"'rectified_flow'"):
        make_precond("eps", net, 1.0)
    with pytest.raises(ValueError, match="rectified_flow' has no sigma_data"):
        make_precond("rectified_flow", net, 0.5)
