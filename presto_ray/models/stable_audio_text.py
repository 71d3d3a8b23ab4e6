"""Stable Audio's text and timing conditioning: prompts and seconds -> :class:`StableAudioCond`, the way
``StableAudioPipeline.encode_prompt`` and ``encode_duration`` build it (no negative prompt).

    tokens, mask = T5(prompts)                        last hidden state [B, S, Dt], padded to the
                                                      tokenizer's model_max_length, mask [B, S]
    text = projection.text_projection(tokens) * mask  [B, S, Dc]
    start = projection.start_number_conditioner(seconds_start)   [B, 1, Dc]
    total = projection.end_number_conditioner(seconds_total)     [B, 1, Dc]
    encoder_hidden_states = cat([text, start, total], dim=1)     [B, S + 2, Dc]
    global_hidden_states  = cat([start, total], dim=2)           [B, 1, 2 Dc]

Stable Audio Open's own model config names the two numbers ``seconds_start`` and ``seconds_total``
(number conditioners over [0, 512] s); the pipeline calls the second ``audio_end_in_s``. We pass the
shard's ``seconds_total`` there; with seconds_start 0 (the pipeline's default start) its end time is that total.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from presto_ray.models.stable_audio import StableAudioCond
from presto_ray.models.text import check_texts


class StableAudioText:
    """A frozen tokenizer, text encoder (T5) and ``StableAudioProjectionModel`` as Stable Audio's
    conditioner. ``max_tokens`` S is the tokenizer's ``model_max_length`` (tokenizer_config.json), as
    the pipeline pads and truncates to it. Outputs live on the text encoder's device.
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, projection_model: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.projection_model = projection_model.eval().requires_grad_(False)
        self.max_tokens = int(tokenizer.model_max_length)
        if not 2 <= self.max_tokens <= 1 << 16:
            raise ValueError(f"the tokenizer's model_max_length={tokenizer.model_max_length} is not a usable token "
                             "count: set model_max_length in tokenizer/tokenizer_config.json")

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """prompts: B strings -> (tokens [B, S, Dt] float32, the text encoder's last hidden state with
        padding set to 0; mask [B, S] bool, True at real tokens). The pipeline's tokenizer call: pad to
        S = max_tokens, truncate longer prompts."""
        check_texts(prompts, "prompt")
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_tokens, truncation=True,
                               return_tensors="pt")
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        tokens = self.text_encoder(ids, attention_mask=mask)[0]
        return tokens.float() * mask[..., None], mask.bool()

    def _seconds(self, seconds: float | Sequence[float] | Tensor, batch: int, name: str) -> Tensor:
        """A float, B floats or a [B] tensor -> [B] float32 on the device (one value is repeated)."""
        values = torch.as_tensor(seconds, dtype=torch.float32).reshape(-1).to(self.device)
        if values.numel() == 1:
            values = values.expand(batch)
        if values.shape != (batch,):
            raise ValueError(f"{name} must be one number or {batch} (one per prompt), got {values.numel()}")
        if not torch.isfinite(values).all():
            raise ValueError(f"{name} must be finite, got {values.tolist()}")
        return values

    @torch.no_grad()
    def condition(self, tokens: Tensor, mask: Tensor, seconds_start: float | Sequence[float] | Tensor,
                  seconds_total: float | Sequence[float] | Tensor) -> StableAudioCond:
        """The condition from encoded text (tokens [B, S, Dt], mask [B, S], as :meth:`encode` returns or a
        shard stores them) and the seconds (each one number or B): encoder_hidden_states [B, S + 2, Dc],
        global_hidden_states [B, 1, 2 Dc], in the projection model's dtype."""
        if tokens.ndim != 3 or tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"tokens must be [B, S, Dt] and mask [B, S], got {tuple(tokens.shape)} and "
                             f"{tuple(mask.shape)}")
        batch = tokens.shape[0]
        start = self._seconds(seconds_start, batch, "seconds_start")
        total = self._seconds(seconds_total, batch, "seconds_total")
        proj = self.projection_model
        dtype = next(proj.parameters()).dtype
        tokens, mask = tokens.to(self.device, dtype), mask.to(self.device)
        text = proj(text_hidden_states=tokens).text_hidden_states * mask[..., None].to(dtype)
        numbers = proj(start_seconds=start, end_seconds=total)
        start_h, total_h = numbers.seconds_start_hidden_states, numbers.seconds_end_hidden_states
        return StableAudioCond(torch.cat([text, start_h, total_h], dim=1), torch.cat([start_h, total_h], dim=2))

    def __call__(self, prompts: Sequence[str], seconds_start: float | Sequence[float] | Tensor,
                 seconds_total: float | Sequence[float] | Tensor) -> StableAudioCond:
        """prompts (B strings) and seconds -> :class:`StableAudioCond`; its ``null()`` is the pipeline's
        classifier-free-guidance condition (zero cross-attention tokens, the timing token kept)."""
        tokens, mask = self.encode(prompts)
        return self.condition(tokens, mask, seconds_start, seconds_total)
