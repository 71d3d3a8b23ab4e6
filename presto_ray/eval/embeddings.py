"""The evaluation embedder interface and the embedders behind it.

An *audio embedder* turns a clip into frame embeddings (FAD pools the frames of all clips, as fadtk
does); it may also give tag probabilities per frame (musicnn's 50 MagnaTagATune tags, used for
instrument adherence) and text embeddings in the same space (CLAP, for the CLAP score).

* ``musicnn`` (default): the MTT_musicnn tagger ported to PyTorch, weights from the ``musicnn``
  wheel; 200-d features and 50 tags per 3-s patch (:mod:`presto_ray.eval.musicnn`).
* ``clap``: a LAION-CLAP model in the Hugging Face layout (``config.json``, ``model.safetensors``,
  processor files; e.g. laion/larger_clap_music) read from a local path or mirror; 512-d audio
  embedding per 10-s window and text embeddings (:mod:`presto_ray.eval.clap`). No package carries
  CLAP weights, so clusters that have them pass the path.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["AudioEmbedder", "TextAudioEmbedder", "EMBEDDERS", "load_embedder"]


@runtime_checkable
class AudioEmbedder(Protocol):
    """audio -> frame embeddings.

    ``name``: a stable identity (written to metrics.json and part of the reference-cache key).
    ``embed(audio, sample_rate)``: ``audio`` [N] or [C, N] (numpy or tensor) at ``sample_rate`` ->
    dict with ``features`` [frames, feature_dim] float32 and, when ``tag_names`` is not None,
    ``tags`` [frames, len(tag_names)] probabilities.
    """

    name: str
    feature_dim: int
    tag_names: tuple[str, ...] | None

    def embed(self, audio, sample_rate: int) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class TextAudioEmbedder(AudioEmbedder, Protocol):
    """An audio embedder with a text tower in the same space: ``embed_text(texts)`` -> [B, D]
    L2-normalised; ``embed_clip(audio, sample_rate)`` -> [D] L2-normalised (one vector per clip)."""

    def embed_text(self, texts: list[str]) -> torch.Tensor: ...

    def embed_clip(self, audio, sample_rate: int) -> torch.Tensor: ...


EMBEDDERS = ("musicnn", "clap")


def load_embedder(name: str = "musicnn", path: str | None = None, device: str | torch.device = "cpu") -> AudioEmbedder:
    """The embedder called ``name`` (one of :data:`EMBEDDERS`). ``path``: its weights (musicnn: the
    checkpoint prefix, default the one in the musicnn wheel; clap: a local folder, required)."""
    if name == "musicnn":
        from presto_ray.eval.musicnn import MusicnnEmbedder

        return MusicnnEmbedder(device=device, checkpoint=path)
    if name == "clap":
        from presto_ray.eval.clap import ClapEmbedder

        if path is None:
            raise ValueError("the clap embedder needs the folder of a CLAP model (--clap PATH); no package carries its weights")
        return ClapEmbedder(path, device=device)
    raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
