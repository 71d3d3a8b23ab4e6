"""The guidance role of Presto-S: the fake score mu_fake and the discriminator head Dh that reads
mu_fake's hidden states at one block (METHOD.md section 2). One module, so one DeepSpeed engine
owns both and the fake-score and discriminator losses update them together."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from presto_ray.edm.precond import EDMPrecond


class GuidanceModel(nn.Module):
    """fake_score: an :class:`EDMPrecond` whose network has ``hidden_state(x, c_noise, cond, k)``;
    head: hidden [B, N, D] -> logits [B, M]; disc_block: the block k the head reads.

    forward(x [B, ...], sigma [B], cond, mode="score") -> mu_fake(x) [B, ...];
    mode="logits" -> Dh(h_k(x)) [B, M] (the backbone runs blocks 0..k only; the blocks after k and
    the output layer get their gradients from the fake-score loss of the same update).
    """

    def __init__(self, fake_score: EDMPrecond, head: nn.Module, disc_block: int) -> None:
        super().__init__()
        self.fake_score = fake_score
        self.head = head
        self.disc_block = int(disc_block)

    def forward(self, x: Tensor, sigma: Tensor, cond: Any, mode: Literal["score", "logits"] = "score",
                **kw: Any) -> Tensor:
        if mode == "score":
            out = self.fake_score(x, sigma, cond, **kw)
            return out[0] if isinstance(out, tuple) else out
        if mode == "logits":
            return self.head(self.fake_score.hidden_state(x, sigma, cond, self.disc_block, **kw))
        raise ValueError(f"mode must be 'score' or 'logits', got {mode!r}")
