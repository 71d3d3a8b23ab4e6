"""Building blocks of the 1-D diffusion transformer (presto_ray.models.dit).

Shapes: B batch, C latent channels, T latent frames, p patch, N = T / p tokens, D width,
H heads, L text tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6
ROPE_BASE = 10_000.0


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of scalars: values [B] -> [B, dim] float32, ``cat(cos, sin)`` with
    frequencies ``max_period ** (-i / (dim/2))``, i = 0 .. dim/2 - 1."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def patchify(x: Tensor, patch: int) -> Tensor:
    """x: [B, C, T] -> [B, N = T/patch, C*patch] (each token holds one patch, channel-major)."""
    b, c, t = x.shape
    if t % patch:
        raise ValueError(f"latent frames T={t} are not divisible by patch={patch}")
    return x.reshape(b, c, t // patch, patch).permute(0, 2, 1, 3).reshape(b, t // patch, c * patch)


def unpatchify(y: Tensor, channels: int, patch: int) -> Tensor:
    """y: [B, N, C*patch] -> [B, C, N*patch]; the inverse of :func:`patchify`."""
    b, n, _ = y.shape
    return y.reshape(b, n, channels, patch).permute(0, 2, 1, 3).reshape(b, channels, n * patch)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x [B, N, D], shift/scale [B, D] -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def rotary_tables(n: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Rotary position tables for positions 0..n-1: (cos, sin), each [n, head_dim] float32."""
    half = head_dim // 2
    inv_freq = torch.exp(
        -math.log(ROPE_BASE) * torch.arange(half, device=device, dtype=torch.float32) / half
    )
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate query/key x: [B, H, N, hd] by the tables cos/sin [N, hd]; keeps x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class EmbedMLP(nn.Module):
    """Two-layer MLP on feature vectors: [B, in_dim] -> [B, D]. ``zero_last`` zero-initialises
    the output layer so the embedding contributes exactly zero until trained."""

    def __init__(self, in_dim: int, width: int, zero_last: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, std=0.02)
        nn.init.zeros_(self.fc2.bias)
        if zero_last:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, features: Tensor) -> Tensor:
        """features: [B, in_dim] -> [B, D]."""
        return self.fc2(F.silu(self.fc1(features.to(self.fc1.weight.dtype))))


class SelfAttention(nn.Module):
    """Multi-head self-attention over patch tokens with rotary positions: [B, N, D] -> [B, N, D]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rotary_tables(n, hd, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from patch tokens to text tokens with a key padding mask.

    x: [B, N, D], ctx: [B, L, D], ctx_mask: [B, L] bool -> [B, N, D]. A sample with no real token
    gets an exactly zero output (its attention runs over an all-visible dummy mask, then is discarded),
    so the null condition never produces NaN.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        """x: [B, N, D], ctx: [B, L, D], ctx_mask: [B, L] bool -> [B, N, D]."""
        b, n, d = x.shape
        length = ctx.shape[1]
        q = self.q(x)
        if length == 0:
            return torch.zeros_like(q)
        hd = d // self.heads
        has_tokens = ctx_mask.any(dim=1)
        visible = ctx_mask | ~has_tokens[:, None]
        q = q.reshape(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(ctx).reshape(b, length, 2, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=visible[:, None, None, :]
        )
        o = self.out(o.transpose(1, 2).reshape(b, n, d))
        return torch.where(has_tokens[:, None, None], o, torch.zeros((), dtype=o.dtype, device=o.device))


class FeedForward(nn.Module):
    """Token-wise MLP: [B, N, D] -> [B, N, D] with hidden width D * mlp_ratio."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """One DiT block: self-attention, cross-attention to text, MLP, each wrapped in adaLN-Zero
    (shift, scale, gate per sub-layer from the conditioning vector c; the modulation layer is
    zero-initialised so a fresh block is the identity).

    h: [B, N, D], c: [B, D], ctx: [B, L, D], ctx_mask: [B, L] bool -> [B, N, D].
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.self_attn = SelfAttention(width, heads)
        self.cross_attn = CrossAttention(width, heads)
        self.mlp = FeedForward(width, mlp_ratio)
        self.modulation = nn.Linear(width, 9 * width)

    def forward(self, h: Tensor, c: Tensor, ctx: Tensor, ctx_mask: Tensor) -> Tensor:
        """h: [B, N, D], c: [B, D], ctx: [B, L, D], ctx_mask: [B, L] -> [B, N, D]."""
        (shift1, scale1, gate1, shift2, scale2, gate2,
         shift3, scale3, gate3) = self.modulation(F.silu(c)).chunk(9, dim=-1)
        h = h + gate1[:, None] * self.self_attn(modulate(self.norm1(h), shift1, scale1))
        h = h + gate2[:, None] * self.cross_attn(modulate(self.norm2(h), shift2, scale2), ctx, ctx_mask)
        h = h + gate3[:, None] * self.mlp(modulate(self.norm3(h), shift3, scale3))
        return h


class FinalLayer(nn.Module):
    """Output layer: adaLN (shift, scale from c) then a linear map to C*patch; both the modulation
    and the linear layer are zero-initialised, so a fresh model outputs exactly zero.

    h: [B, N, D], c: [B, D] -> [B, N, C*patch].
    """

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=LN_EPS)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        """h: [B, N, D], c: [B, D] -> [B, N, C*patch]."""
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))
