"""EDM preconditioning: coefficient identities, the unit-variance training target, EDMPrecond
wiring, and the score of an exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from presto_ray.edm import (
    EDMPrecond,
    GaussianMixtureDenoiser,
    as_sigma_batch,
    c_in,
    c_noise,
    c_out,
    c_skip,
    expand_sigma,
    loss_weight,
    score_from_denoiser,
)

SD = 0.5
SIGMAS = torch.logspace(-3, 2, 41, dtype=torch.float64)


def test_input_scale_gives_unit_variance_identity():
    torch.testing.assert_close(c_in(SIGMAS, SD) ** 2 * (SIGMAS**2 + SD**2), torch.ones_like(SIGMAS))


def test_loss_weight_times_c_out_squared_is_one():
    torch.testing.assert_close(loss_weight(SIGMAS, SD) * c_out(SIGMAS, SD) ** 2, torch.ones_like(SIGMAS))


def test_limits_small_and_large_sigma():
    tiny = torch.tensor([1e-6], dtype=torch.float64)
    huge = torch.tensor([1e6], dtype=torch.float64)
    assert abs(c_skip(tiny, SD).item() - 1.0) < 1e-10
    assert c_out(tiny, SD).item() < 2e-6
    assert c_skip(huge, SD).item() < 1e-12
    assert abs(c_out(huge, SD).item() - SD) < 1e-9
    # c_skip decreases and c_out increases monotonically in sigma
    assert (c_skip(SIGMAS, SD).diff() < 0).all()
    assert (c_out(SIGMAS, SD).diff() > 0).all()


def test_c_noise_and_float_inputs():
    torch.testing.assert_close(c_noise(SIGMAS), SIGMAS.log() / 4)
    assert c_skip(0.5, 0.5).item() == pytest.approx(0.5)
    assert c_out(0.5, 0.5).item() == pytest.approx(0.25 / math.sqrt(0.5))
    assert loss_weight(0.5, 0.5).item() == pytest.approx(0.5 / 0.0625)


def test_expand_sigma_shapes():
    x = torch.zeros(3, 4, 5)
    assert expand_sigma(torch.tensor([1.0, 2.0, 3.0]), x).shape == (3, 1, 1)
    assert expand_sigma(torch.tensor(2.0), x).shape == (1, 1, 1)
    with pytest.raises(ValueError):
        expand_sigma(torch.ones(3, 1), x)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.5, 2.0, 20.0])
def test_effective_training_target_has_unit_variance(sigma):
    """For data of std sigma_data, F's regression target (x0 - c_skip x) / c_out and F's input
    c_in x both have unit variance at every sigma (the point of preconditioning)."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = SD * torch.randn(n, generator=g, dtype=torch.float64)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    s = torch.tensor(sigma, dtype=torch.float64)
    x = x0 + s * noise
    target = (x0 - c_skip(s, SD) * x) / c_out(s, SD)
    assert target.var().item() == pytest.approx(1.0, rel=0.02)
    assert (c_in(s, SD) * x).var().item() == pytest.approx(1.0, rel=0.02)


class _Recorder(torch.nn.Module):
    """A raw network that records its inputs and returns zeros (optionally with aux)."""

    def __init__(self, aux=None):
        super().__init__()
        self.aux = aux
        self.calls = []

    def forward(self, x_in, c_noise_in, cond, **kw):
        self.calls.append((x_in, c_noise_in, cond, kw))
        out = torch.zeros_like(x_in)
        return (out, self.aux) if self.aux is not None else out


def test_precond_with_zero_net_is_exactly_c_skip_x_and_feeds_scaled_inputs():
    net = _Recorder()
    model = EDMPrecond(net, sigma_data=SD)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, generator=g)
    sigma = torch.tensor([0.01, 1.0, 30.0])
    out = model(x, sigma, "cond", depth=5)
    assert torch.equal(out, c_skip(expand_sigma(sigma, x), SD) * x)
    x_in, cn, cond, kw = net.calls[0]
    torch.testing.assert_close(x_in, c_in(expand_sigma(sigma, x), SD) * x)
    assert cn.shape == (3,)
    torch.testing.assert_close(cn, sigma.log() / 4)
    assert cond == "cond" and kw == {"depth": 5}
    assert model.net is net and model.sigma_data == SD


def test_precond_float_sigma_becomes_batch_and_output_scale():
    class Ones(torch.nn.Module):
        def forward(self, x_in, cn, cond):
            self.cn = cn
            return torch.ones_like(x_in)

    net = Ones()
    model = EDMPrecond(net, sigma_data=SD)
    x = torch.zeros(4, 2, 3)
    out = model(x, 2.0, None)
    assert net.cn.shape == (4,)
    torch.testing.assert_close(net.cn, torch.full((4,), math.log(2.0) / 4))
    torch.testing.assert_close(out, torch.full_like(x, c_out(2.0, SD).item()))


def test_sigma_keeps_the_callers_precision_never_below_float32():
    x64, x16 = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float16)
    sigma = 0.1  # not a float32 number: rounding it shows at ~1e-9
    assert as_sigma_batch(sigma, x64).tolist() == [sigma] * 3 and as_sigma_batch(sigma, x64).dtype == torch.float64
    assert as_sigma_batch(sigma, x16).dtype == torch.float32
    assert expand_sigma(sigma, x64).dtype == torch.float64 and expand_sigma(sigma, x64).item() == sigma
    assert c_skip(sigma, SD).item() == SD**2 / (sigma**2 + SD**2)  # a python float is computed in float64
    assert c_out(torch.tensor([sigma], dtype=torch.float16), SD).dtype == torch.float32
    net = _Recorder()
    EDMPrecond(net, sigma_data=SD)(x64, sigma, None)
    _, c_noise_seen, _, _ = net.calls[0]
    assert c_noise_seen.dtype == torch.float64 and c_noise_seen.tolist() == [math.log(sigma) / 4] * 3


def test_precond_tuple_passthrough():
    aux = {"hidden": [torch.ones(2)]}
    model = EDMPrecond(_Recorder(aux=aux), sigma_data=SD)
    x = torch.randn(2, 3, 4)
    out = model(x, torch.tensor([0.3, 3.0]), None)
    assert isinstance(out, tuple) and len(out) == 2
    d, got_aux = out
    assert got_aux is aux
    torch.testing.assert_close(d, c_skip(expand_sigma(torch.tensor([0.3, 3.0]), x), SD) * x)


def test_precond_gradients_reach_net():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3)
    model = EDMPrecond(lambda x_in, cn, cond: lin(x_in), sigma_data=SD)
    d = model(torch.randn(5, 3), torch.full((5,), 0.7), None)
    d.square().sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_score_from_exact_denoiser_matches_autograd_of_log_density(sigma):
    gm = GaussianMixtureDenoiser(
        torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.6])
    )
    g = torch.Generator().manual_seed(2)
    x = (1.5 * torch.randn(64, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    score = score_from_denoiser(gm(x.detach(), torch.full((64,), sigma)), x.detach(), torch.full((64,), sigma))
    torch.testing.assert_close(score, grad, rtol=1e-6, atol=1e-6)


def test_gaussian_denoiser_closed_form_shapes_and_dtype():
    """K = 1: E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu); x may be [B, C, T] flattening to d."""
    mu = torch.arange(6, dtype=torch.float64).reshape(1, 6) / 6
    gm = GaussianMixtureDenoiser(torch.tensor([2.0]), mu, torch.tensor([0.4]))
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 50.0])
    out = gm(x, sigma)
    assert out.shape == x.shape and out.dtype == torch.float32
    gain = 0.16 / (0.16 + sigma.double() ** 2)
    expected = mu + gain[:, None] * (x.reshape(5, 6).double() - mu)
    torch.testing.assert_close(out.reshape(5, 6).double(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        gm(torch.zeros(2, 5), 1.0)


def test_mixture_denoiser_is_stable_far_from_data_and_samples_weights():
    gm = GaussianMixtureDenoiser(torch.tensor([0.25, 0.75]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.1, 0.1]))
    far = torch.tensor([[-1e4], [1e4]])
    out = gm(far, 0.01)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, far * (0.01 / (0.01 + 1e-4)) + torch.tensor([[-1.0], [1.0]]) * (1e-4 / 0.0101))
    resp = gm.responsibilities(torch.tensor([[0.0]]), 100.0)
    torch.testing.assert_close(resp, torch.tensor([[0.25, 0.75]], dtype=torch.float64), rtol=0, atol=1e-3)
    x, idx = gm.sample(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 1) and idx.shape == (20000,)
    assert idx.double().mean().item() == pytest.approx(0.75, abs=0.01)
    torch.testing.assert_close(x[idx == 1].std(), torch.tensor(0.1), rtol=0.03, atol=0)
