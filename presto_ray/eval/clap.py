"""LAION-CLAP as an evaluation embedder: FAD-CLAP over 10-s window embeddings and the CLAP score
(cosine between a clip's audio embedding and its prompt's text embedding).

The model is read with ``transformers`` from a local folder in the Hugging Face layout that LAION
publishes its checkpoints in (laion/clap-htsat-unfused, laion/larger_clap_music, ...):
``config.json``, ``model.safetensors`` and the processor files (feature extractor and tokenizer).
Only safetensors weights are accepted: a folder holding just ``pytorch_model.bin`` (a pickle) is
refused rather than unpickled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["ClapEmbedder", "clap_score"]

MIN_WINDOW_S = 1.0  # a trailing window shorter than this is dropped (unless it is the only one)


class ClapEmbedder:
    """Audio and text embeddings from a CLAP model in ``path``.

    >>> clap = ClapEmbedder("/models/larger_clap_music")
    >>> clap.embed(audio, 16000)["features"].shape   # [windows, D], one per 10-s window
    >>> clap.embed_text(["a piano sonata"]).shape     # [1, D]
    """

    tag_names = None

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 8):
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no CLAP model here (expected config.json, model.safetensors and "
                                    "the processor files of a Hugging Face CLAP checkpoint)")
        if not any(folder.glob("*.safetensors")):
            raise ValueError(f"{folder}: no *.safetensors weights; pickled weights (pytorch_model.bin) are not "
                             "loaded, convert them to safetensors first")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = ClapModel.from_pretrained(str(folder), use_safetensors=True).eval().to(self.device)
        self.extractor = ClapFeatureExtractor.from_pretrained(str(folder))
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.sample_rate = int(self.extractor.sampling_rate)
        self.window = int(self.extractor.nb_max_samples)  # samples per window (10 s at 48 kHz)
        self.feature_dim = int(self.model.config.projection_dim)
        self.name = f"clap {folder.name} ({self.feature_dim}-d, {self.window / self.sample_rate:g}-s windows)"

    def _to_mono(self, audio, sample_rate: int) -> torch.Tensor:
        x = torch.as_tensor(np.array(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio).float()
        if x.dim() == 2:
            x = x.mean(dim=0)
        if x.dim() != 1:
            raise ValueError(f"audio must be [N] or [C, N], got shape {tuple(x.shape)}")
        if sample_rate != self.sample_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, int(sample_rate), self.sample_rate)
        return x

    def windows(self, audio, sample_rate: int) -> list[np.ndarray]:
        """``audio`` -> non-overlapping windows of at most ``window`` samples at the model's rate."""
        x = self._to_mono(audio, sample_rate).cpu().numpy()
        n = max(1, math.ceil(len(x) / self.window))
        out = [x[i * self.window:(i + 1) * self.window] for i in range(n)]
        if len(out) > 1 and len(out[-1]) < MIN_WINDOW_S * self.sample_rate:
            out.pop()
        return out

    @torch.no_grad()
    def embed_windows(self, windows: list[np.ndarray]) -> torch.Tensor:
        """Windows (each at most 10 s at the model's rate) -> [len(windows), D] L2-normalised."""
        out = []
        for i in range(0, len(windows), self.batch_size):
            feats = self.extractor(windows[i:i + self.batch_size], sampling_rate=self.sample_rate, return_tensors="pt")
            feats = {k: v.to(self.device) for k, v in feats.items()}
            out.append(self.model.get_audio_features(**feats).pooler_output.float())
        return torch.cat(out)

    def embed(self, audio, sample_rate: int) -> dict[str, torch.Tensor]:
        """``audio`` [N] or [C, N] -> dict(features=[windows, D])."""
        return {"features": self.embed_windows(self.windows(audio, sample_rate))}

    def embed_clip(self, audio, sample_rate: int) -> torch.Tensor:
        """One [D] L2-normalised vector per clip: the mean of its window embeddings, renormalised."""
        return torch.nn.functional.normalize(self.embed(audio, sample_rate)["features"].mean(0), dim=0)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Captions -> [B, D] L2-normalised text embeddings."""
        if any(not t.strip() for t in texts):
            raise ValueError("empty caption given to the CLAP text tower")
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self.model.get_text_features(**tok).pooler_output.float()


def clap_score(audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> float:
    """Mean cosine similarity of matched pairs: ``audio_embeddings`` [B, D], ``text_embeddings``
    [B, D] (row i of each from clip i and its prompt)."""
    a = torch.nn.functional.normalize(audio_embeddings.float(), dim=-1)
    t = torch.nn.functional.normalize(text_embeddings.float(), dim=-1)
    return float((a * t).sum(-1).mean())
