"""The text condition ``c`` of a batch (METHOD.md notation): token embeddings, their mask, and BPM.

The classifier-free-guidance "null" condition is the same structure with every token masked out and
an unknown tempo; :meth:`Cond.drop` applies condition dropout with probability ``p_uncond``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cond:
    """The condition of a batch of B samples.

    tokens: [B, L, Dt] float text-encoder states; mask: [B, L] bool (True = real token);
    bpm: [B] float or None (NaN, or None for the whole batch, = unknown tempo).
    A sample whose mask has no True entry is the null condition.
    """

    tokens: Tensor
    mask: Tensor
    bpm: Tensor | None = None

    def __len__(self) -> int:
        """The batch size B."""
        return int(self.tokens.shape[0])

    def null(self) -> Cond:
        """The null (unconditional) condition of the same shapes: tokens zeros [B, L, Dt], mask all
        False [B, L], bpm NaN [B]."""
        bpm_dtype = self.bpm.dtype if self.bpm is not None else self.tokens.dtype
        return Cond(
            tokens=torch.zeros_like(self.tokens),
            mask=torch.zeros_like(self.mask, dtype=torch.bool),
            bpm=torch.full((len(self),), math.nan, dtype=bpm_dtype, device=self.tokens.device),
        )

    def null_where(self, dropped: Tensor) -> Cond:
        """Replace the rows where ``dropped`` ([B] bool) is True by the null condition."""
        if dropped.shape != (len(self),) or dropped.dtype != torch.bool:
            raise ValueError(f"dropped must be a bool tensor of shape [{len(self)}], got "
                             f"{dropped.dtype} {tuple(dropped.shape)}")
        dropped = dropped.to(self.tokens.device)
        tokens = torch.where(dropped[:, None, None], torch.zeros_like(self.tokens), self.tokens)
        mask = self.mask & ~dropped[:, None]
        bpm = None
        if self.bpm is not None:
            bpm = torch.where(dropped, torch.full_like(self.bpm, math.nan), self.bpm)
        return Cond(tokens=tokens, mask=mask, bpm=bpm)

    def drop(self, p: float, generator: torch.Generator | None = None) -> Cond:
        """Condition dropout: each sample independently becomes null with probability ``p``.

        The random draw uses ``generator`` (on its own device) when given.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability must be in [0, 1], got {p}")
        device = generator.device if generator is not None else self.tokens.device
        u = torch.rand(len(self), generator=generator, device=device)
        return self.null_where(u < p)

    def drop_bpm(self, p: float, generator: torch.Generator | None = None) -> Cond:
        """Tempo dropout: each sample's bpm independently becomes unknown (NaN) with probability
        ``p``, so the model also learns captions without a tempo. No-op when bpm is None."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability must be in [0, 1], got {p}")
        if self.bpm is None or p == 0.0:
            return self
        device = generator.device if generator is not None else self.tokens.device
        dropped = (torch.rand(len(self), generator=generator, device=device) < p).to(self.bpm.device)
        bpm = torch.where(dropped, torch.full_like(self.bpm, math.nan), self.bpm)
        return Cond(tokens=self.tokens, mask=self.mask, bpm=bpm)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cond:
        """Move to ``device``; ``dtype`` (a float type) applies to tokens and bpm only, never the mask."""
        kwargs = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"Cond.to: dtype must be a floating type, got {dtype}")
        tokens = self.tokens.to(**kwargs, **({"dtype": dtype} if dtype is not None else {}))
        bpm = None
        if self.bpm is not None:
            bpm = self.bpm.to(**kwargs, **({"dtype": dtype} if dtype is not None else {}))
        return Cond(tokens=tokens, mask=self.mask.to(**kwargs), bpm=bpm)

    def select(self, index: Tensor) -> Cond:
        """The rows ``index`` (LongTensor [K], or bool [B]) as a Cond of batch size K."""
        index = torch.as_tensor(index, device=self.tokens.device)
        return Cond(
            tokens=self.tokens[index],
            mask=self.mask[index],
            bpm=self.bpm[index] if self.bpm is not None else None,
        )

    @staticmethod
    def concat(conds: list[Cond]) -> Cond:
        """Stack conditions along the batch. Token lengths may differ: shorter ones are padded with
        masked-out zero tokens to the longest L. bpm is None only if it is None in every part
        (parts without bpm get NaN otherwise)."""
        if not conds:
            raise ValueError("Cond.concat needs at least one Cond")
        text_dims = {c.tokens.shape[-1] for c in conds}
        if len(text_dims) != 1:
            raise ValueError(f"Cond.concat: text dims differ: {sorted(text_dims)}")
        length = max(c.tokens.shape[1] for c in conds)
        tokens, masks, bpms = [], [], []
        with_bpm = any(c.bpm is not None for c in conds)
        for c in conds:
            pad = length - c.tokens.shape[1]
            tokens.append(torch.nn.functional.pad(c.tokens, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(c.mask, (0, pad), value=False))
            if with_bpm:
                bpms.append(c.bpm if c.bpm is not None else torch.full(
                    (len(c),), math.nan, dtype=c.tokens.dtype, device=c.tokens.device))
        return Cond(
            tokens=torch.cat(tokens, dim=0),
            mask=torch.cat(masks, dim=0),
            bpm=torch.cat(bpms, dim=0) if with_bpm else None,
        )

    def validate(self, batch_size: int, text_dim: int) -> None:
        """Raise ValueError unless tokens is float [batch_size, L, text_dim], mask bool
        [batch_size, L] and bpm None or float [batch_size], all on one device."""
        t, m, b = self.tokens, self.mask, self.bpm
        if not isinstance(t, Tensor) or not isinstance(m, Tensor):
            raise ValueError("Cond.tokens and Cond.mask must be tensors")
        if t.ndim != 3 or t.shape[0] != batch_size or t.shape[2] != text_dim:
            raise ValueError(f"Cond.tokens must have shape [B={batch_size}, L, Dt={text_dim}], "
                             f"got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"Cond.tokens must be a float tensor, got {t.dtype}")
        if m.dtype != torch.bool:
            raise ValueError(f"Cond.mask must be a bool tensor (True = real token), got {m.dtype}")
        if tuple(m.shape) != tuple(t.shape[:2]):
            raise ValueError(f"Cond.mask must have shape [B, L]={tuple(t.shape[:2])}, got {tuple(m.shape)}")
        if m.device != t.device:
            raise ValueError(f"Cond.mask is on {m.device} but Cond.tokens is on {t.device}")
        if b is not None:
            if not isinstance(b, Tensor) or b.ndim != 1 or b.shape[0] != batch_size:
                raise ValueError(f"Cond.bpm must be None or a tensor of shape [B={batch_size}], got "
                                 f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}")
            if not b.is_floating_point():
                raise ValueError(f"Cond.bpm must be a float tensor (NaN = unknown), got {b.dtype}")
            if b.device != t.device:
                raise ValueError(f"Cond.bpm is on {b.device} but Cond.tokens is on {t.device}")
