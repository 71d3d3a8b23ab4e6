"""The EDM denoising loss against its closed form for the exact Gaussian denoiser, and EDMLoss's
sigma draws."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import kstest

from presto_ray.edm import (
    EDMLoss,
    EDMPrecond,
    GaussianMixtureDenoiser,
    KarrasContinuous,
    LogNormal,
    denoising_loss,
    loss_weight,
)

D = 16
S = 0.3
MU = torch.linspace(-1.0, 1.0, D)[None]
GAUSS = GaussianMixtureDenoiser(torch.tensor([1.0]), MU, torch.tensor([S]))


def _x0(n, seed):
    return GAUSS.sample(n, torch.Generator().manual_seed(seed))[0]


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0])
@pytest.mark.parametrize("sigma_data", [0.3, 0.5])
def test_loss_of_exact_denoiser_is_weighted_posterior_variance(sigma, sigma_data):
    """E[loss] = lambda(sigma) * s^2 sigma^2 / (s^2 + sigma^2) per dimension (= 1 when s = sd)."""
    n = 4000
    x0 = _x0(n, 0)
    sig = torch.full((n,), sigma)
    loss = denoising_loss(GAUSS, x0, sig, None, sigma_data=sigma_data, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (n,)
    lam = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    expected = lam * S**2 * sigma**2 / (S**2 + sigma**2)
    assert loss.mean().item() == pytest.approx(expected, rel=0.03)


def test_loss_formula_with_given_noise_and_per_sample_sigma():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 4, generator=g)  # flattens to D = 16 per sample
    noise = torch.randn(3, 4, 4, generator=g)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    loss = denoising_loss(GAUSS, x0, sigma, None, noise, sigma_data=0.5)
    x0_hat = GAUSS(x0 + sigma[:, None, None] * noise, sigma)
    manual = loss_weight(sigma, 0.5) * ((x0_hat - x0) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, manual)


def test_loss_uses_first_element_of_tuple_and_passes_kwargs():
    seen = {}

    def tuple_denoiser(x, sigma, cond, **kw):
        seen.update(kw, cond=cond)
        return GAUSS(x, sigma), "aux"

    x0, sigma = _x0(8, 3), torch.full((8,), 0.7)
    noise = torch.randn(8, D, generator=torch.Generator().manual_seed(4))
    a = denoising_loss(tuple_denoiser, x0, sigma, "c", noise, sigma_data=0.5, budget=0.25)
    b = denoising_loss(GAUSS, x0, sigma, "c", noise, sigma_data=0.5)
    torch.testing.assert_close(a, b)
    assert seen == {"budget": 0.25, "cond": "c"}


def test_loss_gradient_reaches_a_preconditioned_network():
    torch.manual_seed(0)
    lin = torch.nn.Linear(D, D)
    model = EDMPrecond(lambda x_in, cn, cond: lin(x_in), sigma_data=0.5)
    loss = denoising_loss(model, _x0(32, 5), torch.full((32,), 0.5), None, sigma_data=0.5)
    loss.mean().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_edm_loss_draws_sigma_from_given_distribution():
    n = 5000
    p_sigma = LogNormal(-1.2, 1.2)
    edm_loss = EDMLoss(p_sigma, sigma_data=S)
    loss, sigma = edm_loss(GAUSS, _x0(n, 6), None, generator=torch.Generator().manual_seed(7))
    assert loss.shape == (n,) and sigma.shape == (n,)
    s = sigma.double().numpy()
    assert kstest(s, lambda v: p_sigma.cdf(torch.from_numpy(v)).numpy()).pvalue > 0.01
    other = KarrasContinuous(0.002, 80.0, 7.0)
    assert kstest(s, lambda v: other.cdf(torch.from_numpy(v)).numpy()).pvalue < 1e-6
    # data std equals sigma_data, so the expected loss is exactly 1 at every sigma
    assert loss.mean().item() == pytest.approx(1.0, rel=0.03)
    # reproducible, and sigma comes from the generator's stream
    loss2, sigma2 = edm_loss(GAUSS, _x0(n, 6), None, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sigma, sigma2) and torch.equal(loss, loss2)
    torch.testing.assert_close(sigma, p_sigma.sample(n, generator=torch.Generator().manual_seed(7)))


def test_edm_loss_with_another_distribution():
    n = 5000
    p_sigma = KarrasContinuous(0.002, 80.0, 7.0)
    _, sigma = EDMLoss(p_sigma, sigma_data=0.5)(GAUSS, _x0(n, 8), None, generator=torch.Generator().manual_seed(9))
    s = sigma.double().numpy()
    assert kstest(s, lambda v: p_sigma.cdf(torch.from_numpy(v)).numpy()).pvalue > 0.01
    assert repr(EDMLoss(p_sigma, 0.5)).startswith("EDMLoss(p_sigma=KarrasContinuous(")
