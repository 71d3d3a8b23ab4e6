"""The PyTorch MTT_musicnn port (presto_ray.eval.musicnn) against musicnn's own TensorFlow pipeline.

The reference (tests/fixtures/musicnn_reference.npz) comes from benchmarks/musicnn_reference.py, run in
a separate TF 2.15 virtualenv; the test audio is regenerated from the stored seeds with that script's
numpy-only ``make_input``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from presto_ray.eval.tf_bundle import TFBundleError, list_tf_bundle, read_tf_bundle

if importlib.util.find_spec("musicnn") is None:
    pytest.skip(
        "musicnn package (pretrained weights) not installed: pip install --no-deps musicnn==0.1.0",
        allow_module_level=True,
    )

from presto_ray.eval.musicnn import (  # noqa: E402
    MTT_TAGS,
    MusicnnEmbedder,
    mel_power,
    musicnn_checkpoint_prefix,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "musicnn_reference.npz"


def _reference_module():
    path = ROOT / "benchmarks" / "musicnn_reference.py"
    spec = importlib.util.spec_from_file_location("musicnn_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def inputs(ref):
    mod = _reference_module()
    out = []
    for i, (seed, sr, seconds, kind) in enumerate(mod.INPUTS):
        assert int(ref[f"seed_{i}"]) == seed and int(ref[f"sr_{i}"]) == sr
        audio = mod.make_input(seed, sr, seconds, kind)
        n, s, sa = ref[f"audio_stats_{i}"]
        assert audio.size == n
        got = [audio.sum(dtype=np.float64), np.abs(audio).sum(dtype=np.float64)]
        np.testing.assert_allclose(got, [s, sa], rtol=1e-6)
        out.append((audio, sr))
    return out


@pytest.fixture(scope="module")
def embedder():
    return MusicnnEmbedder()


def test_tag_names(ref, embedder):
    assert len(MTT_TAGS) == 50 and len(set(MTT_TAGS)) == 50
    assert tuple(embedder.tag_names) == MTT_TAGS == tuple(str(t) for t in ref["tag_names"])
    from musicnn import configuration

    assert tuple(configuration.MTT_LABELS) == MTT_TAGS
    assert {"guitar", "piano", "violin", "drums", "choir", "techno"} <= set(MTT_TAGS)


def test_bundle_reader_reads_all_model_tensors():
    weights = read_tf_bundle(musicnn_checkpoint_prefix())
    model = {k: v for k, v in weights.items() if "Adam" not in k and not k.endswith("_power")}
    assert len(model) == 64  # 11 batch norms x 4 + 8 convs x 2 + 2 dense x 2
    assert sum(v.size for v in model.values()) == 792_079  # (+ beta1_power, beta2_power = 792,081)
    assert weights["conv2d/kernel"].shape == (7, 38, 1, 204) and weights["conv2d/kernel"].dtype == np.float32
    assert weights["dense_1/kernel"].shape == (200, 50)
    assert np.all(weights["batch_normalization_9/moving_variance"] > 0)
    assert list_tf_bundle(musicnn_checkpoint_prefix())["dense/kernel"] == ("float32", (1506, 200))


def test_bundle_reader_rejects_truncated_files(tmp_path):
    src = musicnn_checkpoint_prefix()
    index, data = Path(src + ".index"), Path(src + ".data-00000-of-00001")
    prefix = str(tmp_path / "ckpt")
    # truncated data file: the error names the data file
    shutil.copy(index, prefix + ".index")
    Path(prefix + ".data-00000-of-00001").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(TFBundleError, match=r"ckpt\.data-00000-of-00001.*truncated"):
        read_tf_bundle(prefix)
    # truncated index: the error names the index file
    Path(prefix + ".index").write_bytes(index.read_bytes()[:-100])
    with pytest.raises(TFBundleError, match=r"ckpt\.index"):
        read_tf_bundle(prefix)
    # a flipped byte inside the index is caught by the block CRC
    raw = bytearray(index.read_bytes())
    raw[40] ^= 0xFF
    Path(prefix + ".index").write_bytes(bytes(raw))
    with pytest.raises(TFBundleError, match=r"ckpt\.index.*CRC"):
        read_tf_bundle(prefix)
    with pytest.raises(TFBundleError, match=r"missing\.index"):
        read_tf_bundle(str(tmp_path / "missing"))


def test_mel_matches_librosa(ref, inputs):
    # librosa.feature.melspectrogram (float32) vs the torch mel (float64, cast to float32)
    audio, _ = inputs[0]
    mel = mel_power(torch.from_numpy(audio))[:187].numpy()
    want = ref["mel_power_0"]
    assert mel.shape == want.shape == (187, 96)
    np.testing.assert_allclose(mel, want, rtol=1e-5, atol=1e-6 * want.max())


@pytest.mark.parametrize("i", [0, 1])
def test_log_mel_patches_match_reference(ref, inputs, embedder, i):
    audio, sr = inputs[i]
    patches = embedder.patches(audio, sr).numpy()
    want = ref[f"patches_{i}"]
    assert patches.shape == want.shape
    # musicnn casts the mel power to float16 before the log: a mel value on a float16 rounding
    # boundary may round the other way (one float16 ulp = 2**-11 relative -> < 2.7e-4 after log10).
    np.testing.assert_allclose(patches, want, rtol=0, atol=3e-4)
    assert np.mean(np.abs(patches - want) > 1e-5) < 1e-3


@pytest.mark.parametrize("i", [0, 1, 2])
def test_network_matches_reference_on_reference_patches(ref, embedder, i):
    out = embedder.embed_patches(torch.from_numpy(ref[f"patches_{i}"]))
    np.testing.assert_allclose(out["features"].numpy(), ref[f"features_{i}"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["tags"].numpy(), ref[f"tags_{i}"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("i", [0, 1])
def test_embed_matches_reference_16k(ref, inputs, embedder, i):
    audio, sr = inputs[i]
    out = embedder.embed(audio, sr)
    assert set(out) == {"features", "tags"}
    assert out["features"].shape == (ref[f"features_{i}"].shape[0], 200)
    np.testing.assert_allclose(out["features"].numpy(), ref[f"features_{i}"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["tags"].numpy(), ref[f"tags_{i}"], rtol=0, atol=1e-5)
    # a torch tensor and a [C, N] array give the same result
    same = embedder.embed(torch.from_numpy(np.stack([audio, audio])), sr)
    torch.testing.assert_close(same["features"], out["features"])


def test_embed_resampled_input_close_to_reference(ref, inputs, embedder):
    # 22.05 kHz input: musicnn resamples with soxr (librosa.load), the port with torchaudio's
    # windowed sinc; only the top mel bands near the new Nyquist differ noticeably (measured:
    # features 0.033, tags 0.0012 max abs on this sweep).
    audio, sr = inputs[2]
    assert sr == 22050
    out = embedder.embed(audio, sr)
    np.testing.assert_allclose(out["features"].numpy(), ref["features_2"], rtol=0, atol=0.1)
    np.testing.assert_allclose(out["tags"].numpy(), ref["tags_2"], rtol=0, atol=5e-3)


def test_short_audio(embedder):
    short = np.zeros(16000, dtype=np.float32)
    assert embedder.embed(short, 16000)["features"].shape == (1, 200)
    strict = MusicnnEmbedder(pad_short=False)
    with pytest.raises(ValueError, match="too short"):
        strict.embed(short, 16000)


def test_missing_package_error_names_install_command(monkeypatch):
    import presto_ray.eval.musicnn as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps musicnn==0\.1\.0"):
        mod.musicnn_checkpoint_prefix()
