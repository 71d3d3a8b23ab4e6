"""The diffusers Stable Audio Open transformer as a v-prediction teacher: on a tiny random
``StableAudioDiTModel`` (no download) our D(x; sigma) is diffusers' own x0 prediction, and our Euler
sampler reproduces the scheduler loop ``StableAudioPipeline`` runs."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import CosineDPMSolverMultistepScheduler, EDMEulerScheduler, StableAudioDiTModel
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from presto_ray.edm import ClassifierFreeGuidance, sample_teacher
from presto_ray.models.objectives import VPrecond, make_precond
from presto_ray.models.stable_audio import StableAudioCond, StableAudioNet

# RESOURCES.md's tiny config with attention_head_dim 8 instead of 4: the rotary embedding then spans
# 4 of each head's dims with two frequencies, so its layout (the pipeline's concatenated, not
# interleaved, cos/sin halves) matters; at head_dim 4 one frequency makes every layout the same.
CONFIG = dict(sample_size=4, in_channels=3, num_layers=2, attention_head_dim=8, num_attention_heads=2,
              num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4, time_proj_dim=8,
              global_states_input_dim=8, cross_attention_input_dim=4)
B, L, S = 2, CONFIG["sample_size"], 5


@pytest.fixture(scope="module")
def transformer():
    torch.manual_seed(0)
    model = StableAudioDiTModel(**CONFIG).eval()
    with torch.no_grad():  # diffusers' init leaves some layers near zero; make every weight matter
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.double()  # float64, so a difference in the math is not lost in float32 rounding


def _cond(seed: int = 1) -> StableAudioCond:
    g = torch.Generator().manual_seed(seed)
    return StableAudioCond(torch.randn(B, S, CONFIG["cross_attention_input_dim"], generator=g, dtype=torch.float64),
                           torch.randn(B, 1, CONFIG["global_states_input_dim"], generator=g, dtype=torch.float64))


def _diffusers_call(transformer, x_in, t, cond):
    """The transformer call exactly as StableAudioPipeline makes it (t a [1] tensor, the pipeline's rotary)."""
    rotary = get_1d_rotary_pos_embed(CONFIG["attention_head_dim"] // 2, x_in.shape[2] + 1, use_real=True,
                                     repeat_interleave_real=False)
    return transformer(x_in, t.reshape(1), encoder_hidden_states=cond.encoder_hidden_states,
                       global_hidden_states=cond.global_hidden_states, rotary_embedding=rotary, return_dict=False)[0]


@torch.no_grad()
def test_denoiser_equals_the_v_schedulers_x0_prediction(transformer):
    teacher = VPrecond(StableAudioNet(transformer), sigma_data=1.0)
    scheduler = CosineDPMSolverMultistepScheduler()  # Stable Audio Open's: v_prediction, sigma_data 1
    cond = _cond()
    sigmas = torch.logspace(math.log10(0.3), math.log10(500.0), 9, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    xs, refs = [], []
    for sigma in sigmas:
        x = torch.randn(B, 3, L, generator=g, dtype=torch.float64) * sigma.sqrt()  # both terms of D matter
        out = _diffusers_call(transformer, scheduler.precondition_inputs(x, sigma),
                              scheduler.precondition_noise(sigma), cond)
        theirs = scheduler.precondition_outputs(x, out, sigma)
        ours = teacher(x, float(sigma), cond)
        assert (ours - x / (sigma**2 + 1)).abs().max() > 0.1  # the network term is not negligible
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        xs.append(x)
        refs.append(theirs)
    # a per-sample sigma [B] gives each row its own denoising (row 0 at sigma 0.3, row 1 at 500)
    x = torch.cat([xs[0][:1], xs[-1][1:]])
    expected = torch.cat([refs[0][:1], refs[-1][1:]])
    torch.testing.assert_close(teacher(x, sigmas[[0, -1]], cond), expected, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_euler_sampler_ends_at_the_pipelines_latents(transformer):
    """The scheduler loop of StableAudioPipeline (CFG by a zero-text batch, scale_model_input, step) with
    EDMEulerScheduler(v_prediction, sigma_data 1) against sample_teacher(solver="euler") over our
    denoiser with presto_ray's classifier-free guidance, at the scheduler's sigmas.

    Two differences from the pipeline, both stated: (1) EDMEulerScheduler's timesteps are EDM's
    c_noise = ln(sigma)/4, which the pipeline would pass to the transformer as they are; Stable
    Audio's transformer is trained on t = (2/pi) atan(sigma) (its own scheduler's precondition_noise),
    so the loop passes that. (2) diffusers starts at sqrt(sigma_max^2 + 1) * noise (init_noise_sigma),
    our sampler at sigmas[0] * noise, so our noise is rescaled by the ratio to start at the same latents.
    """
    steps, scale = 8, 3.0
    scheduler = EDMEulerScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, prediction_type="v_prediction")
    scheduler.set_timesteps(steps)
    t_model = CosineDPMSolverMultistepScheduler().precondition_noise
    cond = _cond(3)
    noise = torch.randn(B, 3, L, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    latents = noise * scheduler.init_noise_sigma
    encoder = torch.cat([torch.zeros_like(cond.encoder_hidden_states), cond.encoder_hidden_states])
    glob = torch.cat([cond.global_hidden_states, cond.global_hidden_states])
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        pred = _diffusers_call(transformer, model_input, t_model(scheduler.sigmas[i]),
                               StableAudioCond(encoder, glob))
        pred_uncond, pred_text = pred.chunk(2)
        latents = scheduler.step(pred_uncond + scale * (pred_text - pred_uncond), t, latents).prev_sample

    sigmas = scheduler.sigmas
    assert sigmas[-1] == 0 and len(sigmas) == steps + 1
    teacher = ClassifierFreeGuidance(make_precond("v", StableAudioNet(transformer), 1.0), scale)
    ours = sample_teacher(teacher, noise * (scheduler.init_noise_sigma / float(sigmas[0])), sigmas, cond,
                          solver="euler")
    assert latents.abs().max() > 0.1
    # EDMEulerScheduler.step rounds the sample to float32 at every step (2.8e-7 at the end here)
    torch.testing.assert_close(ours, latents, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_forward_and_hidden_state_are_the_transformer_forwards(transformer):
    net = StableAudioNet(transformer)
    cond = _cond(5)
    x_in = torch.randn(B, 3, L, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([0.2, 0.9])
    seen = {}
    handles = [blk.register_forward_hook(lambda m, a, out, k=k: seen.__setitem__(k, out))
               for k, blk in enumerate(transformer.transformer_blocks)]
    try:  # the transformer's own forward, as the pipeline calls it
        rotary = get_1d_rotary_pos_embed(CONFIG["attention_head_dim"] // 2, L + 1, use_real=True,
                                         repeat_interleave_real=False)
        f = transformer(x_in, t.double(), encoder_hidden_states=cond.encoder_hidden_states,
                        global_hidden_states=cond.global_hidden_states, rotary_embedding=rotary, return_dict=False)[0]
    finally:
        for h in handles:
            h.remove()
    assert f.shape == (B, 3, L) and net.depth == 2
    torch.testing.assert_close(net(x_in, t, cond), f, rtol=0, atol=0)  # our steps are the forward's own
    for k in range(net.depth):
        h = net.hidden_state(x_in, t, cond, k)
        assert h.shape == (B, L, transformer.inner_dim)
        torch.testing.assert_close(h, seen[k][:, 1:])
    # through the preconditioner: the state at c_in x and t(sigma)
    teacher = VPrecond(net)
    x = torch.randn(B, 3, L, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(teacher.hidden_state(x, 4.0, cond, 1),
                               net.hidden_state(x / math.sqrt(17.0), math.atan(4.0) * 2 / math.pi, cond, 1))


def test_null_condition_dtypes_and_shape_errors(transformer):
    net = StableAudioNet(transformer)
    cond = _cond()
    null = cond.null()
    assert len(null) == B and null.encoder_hidden_states.abs().sum() == 0
    assert null.global_hidden_states is cond.global_hidden_states  # the pipeline keeps the timing token
    with torch.no_grad():  # float32 inputs run on the float64 transformer; F comes back in its dtype
        f = net(torch.zeros(B, 3, L), 0.5, cond.to(dtype=torch.float32))
    assert f.dtype == torch.float64
    with pytest.raises(ValueError, match="global_hidden_states must have shape"):
        net(torch.zeros(B, 3, L), 0.5, StableAudioCond(cond.encoder_hidden_states, torch.zeros(B, 2, 8)))
    with pytest.raises(ValueError, match="x_in must have shape"):
        net(torch.zeros(B, 4, L), 0.5, cond)
    with pytest.raises(ValueError, match="layer budget 0 is outside"):
        net(torch.zeros(B, 3, L), 0.5, cond, budget=0)
    with pytest.raises(ValueError, match="block 2 is outside"):
        net.hidden_state(torch.zeros(B, 3, L), 0.5, cond, 2)
