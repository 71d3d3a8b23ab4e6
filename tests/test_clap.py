"""The CLAP embedder behind the evaluation-embedder interface, on a small randomly initialised CLAP
model written in the Hugging Face layout (no package carries real CLAP weights): windowing,
normalisation, the CLAP score, refusal of pickled weights, and evaluate's CLAP metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from presto_ray.eval.clap import ClapEmbedder, clap_score
from presto_ray.eval.embeddings import AudioEmbedder, TextAudioEmbedder, load_embedder


def write_small_clap(folder) -> None:
    """A 16-d CLAP model (HTSAT audio tower, RoBERTa text tower with a byte-level BPE trained here)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a folk song for flute in G major at 100 BPM", "strings playing a chorale by Bach",
                             "a piano sonata in C minor"], vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(folder))
    tok = RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                               model_max_length=64)
    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, projection_dim=16),
        audio_config=dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                          hidden_size=64, projection_dim=16, enable_fusion=False),
        projection_dim=16)
    torch.manual_seed(0)
    ClapModel(cfg).save_pretrained(folder)  # model.safetensors
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clap") / "small_clap"
    write_small_clap(folder)
    return folder


@pytest.fixture(scope="module")
def clap(clap_dir):
    return load_embedder("clap", str(clap_dir))


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def test_clap_meets_the_interface_and_windows_audio_into_10_s_pieces(clap):
    assert isinstance(clap, AudioEmbedder) and isinstance(clap, TextAudioEmbedder)
    assert clap.sample_rate == 48000 and clap.feature_dim == 16 and clap.tag_names is None
    # 25 s -> 10 + 10 + 5; 20.5 s -> 10 + 10 (a trailing 0.5 s is dropped); 4 s -> one padded window
    for seconds, windows in ((25, 3), (20.5, 2), (4, 1)):
        feats = clap.embed(noise(seconds), 16000)["features"]
        assert feats.shape == (windows, 16)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(windows), atol=1e-5)
    # the same clip given at another rate lands on the same windows: stereo [2, N] is averaged to mono
    mono = noise(12)
    stereo = np.stack([mono, mono])
    assert torch.allclose(clap.embed(stereo, 16000)["features"], clap.embed(mono, 16000)["features"], atol=1e-5)


def test_each_window_is_the_model_applied_to_that_slice(clap):
    """Our windowing + the processor + the model, against the model run directly on the slices."""
    audio = noise(15, rate=48000, seed=3)
    ours = clap.embed(audio, 48000)["features"]
    for i, piece in enumerate((audio[:480000], audio[480000:])):
        inputs = clap.extractor([piece], sampling_rate=48000, return_tensors="pt")
        with torch.no_grad():
            direct = clap.model.get_audio_features(**inputs).pooler_output[0]
        assert torch.allclose(ours[i], direct, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # different slices, different embeddings


def test_clap_score_is_the_mean_cosine_of_matched_pairs(clap):
    clips = torch.stack([clap.embed_clip(noise(4, seed=s), 16000) for s in range(3)])
    texts = clap.embed_text(["a folk song for flute", "strings playing a chorale", "a piano sonata"])
    assert texts.shape == (3, 16) and torch.allclose(texts.norm(dim=-1), torch.ones(3), atol=1e-5)
    a, t = clips.numpy().astype(np.float64), texts.numpy().astype(np.float64)
    expected = np.mean([a[i] @ t[i] / np.linalg.norm(a[i]) / np.linalg.norm(t[i]) for i in range(3)])
    assert clap_score(clips, texts) == pytest.approx(expected, abs=1e-6)
    assert clap_score(texts, texts) == pytest.approx(1.0, abs=1e-6)
    basis = torch.eye(3, 16)
    assert clap_score(3 * basis, basis) == pytest.approx(1.0) and clap_score(basis, basis.roll(1, 0)) == 0.0
    with pytest.raises(ValueError, match="empty caption"):
        clap.embed_text(["a folk song", "  "])


def test_pickled_weights_and_missing_folders_are_refused(clap_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLAP model here"):
        ClapEmbedder(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((clap_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pickled.*not loaded"):
        ClapEmbedder(pickled)
    with pytest.raises(ValueError, match="needs the folder"):
        load_embedder("clap")
    with pytest.raises(ValueError, match="unknown embedder 'vggish'"):
        load_embedder("vggish")


def test_evaluate_adds_fad_clap_and_clap_score(clap_dir, tmp_path, monkeypatch, ray_cluster):
    pytest.importorskip("musicnn", reason="the musicnn weights come with `pip install --no-deps musicnn==0.1.0`")
    from test_reader import make_rows, write

    from presto_ray.cli import main
    from presto_ray.config import load_config
    from presto_ray.data.stats import LatentStats
    from presto_ray.edm import EDMPrecond
    from presto_ray.models.dit import DiT1D
    from presto_ray.train.export import write_export

    monkeypatch.setenv("PRESTO_CACHE", str(tmp_path / "cache"))
    rows = make_rows(6)
    for r in rows:
        r["caption"] = f"a piece for piano, in C major, 4/4, {int(r['bpm'])} BPM"
    write(str(tmp_path / "valid"), rows)
    cfg = load_config("tiny", ["sampler.steps=2"])
    torch.manual_seed(0)
    write_export(tmp_path / "teacher", {"teacher": EDMPrecond(DiT1D(cfg.model), 0.5).state_dict()}, cfg,
                 LatentStats(mean=torch.zeros(32), std=torch.ones(32), sigma_data=0.5), 1)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "teacher"), "--data", str(tmp_path / "valid"),
                 "--out", str(out), "-n", "6", "--steps", "1", "--clap", str(clap_dir)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("kad", "mmd", "kad_clap", "mmd_clap", "clap_score"):
        assert math.isfinite(metrics[key]), key
    low, high = metrics["kad_clap_ci"]
    assert low <= high and -1.0 <= metrics["clap_score"] <= 1.0
    # one 16-d CLAP vector per clip: 6 (generated) and 3 (reference) are below FAD's 2 x 16
    assert metrics["fad_clap"] is None and metrics["fad_clap_note"].startswith("n too small")
    assert metrics["clap_embedding"].startswith("clap small_clap (16-d")
    assert metrics["embedding"].startswith("musicnn")
    # each embedder caches its own reference features for the shard set
    assert len(list((tmp_path / "cache" / "eval").glob("reference-*.npz"))) == 2
