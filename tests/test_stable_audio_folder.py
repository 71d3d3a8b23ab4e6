"""A released Stable Audio teacher read from a ``StableAudioPipeline.save_pretrained`` folder: a tiny random
pipeline (transformer, Oobleck VAE, T5 encoder with a small Unigram T5 tokenizer, projection model, cosine
scheduler; no download) is saved, read back as presto_ray pieces, and compared with what the pipeline
object itself computes; bad folders are refused by name before any weights are read."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                       StableAudioDiTModel, StableAudioPipeline)
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.stable_audio import StableAudioProjectionModel
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from presto_ray.models.objectives import RectifiedFlowPrecond, VPrecond
from presto_ray.models.stable_audio import StableAudioCond
from presto_ray.models.stable_audio_folder import (TeacherFolderError, check_teacher_folder, load_oobleck_codec,
                                                   load_stable_audio_teacher)

DIT = dict(sample_size=4, in_channels=3, num_layers=2, attention_head_dim=8, num_attention_heads=2,
           num_key_value_attention_heads=2, out_channels=3, cross_attention_dim=4, time_proj_dim=8,
           global_states_input_dim=8, cross_attention_input_dim=4)
VAE = dict(encoder_hidden_size=6, downsampling_ratios=[2, 4], channel_multiples=[1, 2], decoder_channels=4,
           decoder_input_channels=3, audio_channels=2, sampling_rate=16000)  # hop 8, stereo, 3 latent channels
WORDS = ["piano", "drum", "slow", "fast", "jazz", "loop", "bass"]
MAX_TOKENS = 6  # short, so that the second prompt below is truncated and the first padded
PROMPTS = ["piano jazz", "fast drum loop bass slow piano"]


def _tokenizer() -> T5Tokenizer:
    """A T5 tokenizer (the class Stable Audio Open uses) over a tiny Unigram vocabulary: T5's special
    tokens first, then whole words, then letters for anything else."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_TOKENS)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """(pipeline, folder): a tiny random StableAudioPipeline and the folder its save_pretrained wrote."""
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=8, d_kv=4, d_ff=16, num_layers=1,
                                           num_heads=2))
    pipe = StableAudioPipeline(
        vae=AutoencoderOobleck(**VAE), text_encoder=text_encoder,
        projection_model=StableAudioProjectionModel(text_encoder_dim=8, conditioning_dim=4, min_value=0,
                                                    max_value=512),
        tokenizer=tokenizer, transformer=StableAudioDiTModel(**DIT), scheduler=CosineDPMSolverMultistepScheduler())
    with torch.no_grad():  # diffusers' init leaves some layers at zero; make every weight matter
        for module in (pipe.transformer, pipe.projection_model):
            for p in module.parameters():
                p.normal_(0.0, 0.3)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.projection_model):
        module.eval()
    folder = tmp_path_factory.mktemp("teacher") / "stable-audio-tiny"
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe, folder


@pytest.fixture(scope="module")
def teacher(pipeline_folder):
    return load_stable_audio_teacher(pipeline_folder[1])


def _pipeline_cond(pipe, prompts, start, end) -> StableAudioCond:
    """The two condition streams exactly as StableAudioPipeline.__call__ builds them (no CFG)."""
    text = pipe.encode_prompt(prompts, "cpu", False)
    s, e = pipe.encode_duration(start, end, "cpu", False, len(prompts))
    return StableAudioCond(torch.cat([text, s, e], dim=1), torch.cat([s, e], dim=2))


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@torch.no_grad()
def test_teacher_settings_and_frozen_pieces(teacher, pipeline_folder):
    assert teacher.objective == "v" and isinstance(teacher.denoiser, VPrecond)
    assert (teacher.sigma_min, teacher.sigma_max, teacher.sigma_data) == (0.3, 500.0, 1.0)
    assert teacher.sample_size == DIT["sample_size"] and teacher.folder == str(pipeline_folder[1])
    modules = [teacher.denoiser, teacher.codec.vae, teacher.text.text_encoder, teacher.text.projection_model]
    assert all(not m.training for module in modules for m in module.modules())
    assert not any(p.requires_grad for module in modules for p in module.parameters())


@torch.no_grad()
def test_denoiser_equals_the_pipelines_x0_prediction(teacher, pipeline_folder):
    """Our D over the loaded transformer against the pipeline object's own transformer call between its
    scheduler's precondition_inputs / precondition_noise / precondition_outputs, with the pipeline's
    condition streams and rotary embedding."""
    pipe = pipeline_folder[0]
    cond = _pipeline_cond(pipe, PROMPTS, 0.0, [3.0, 4.5])
    rotary = get_1d_rotary_pos_embed(DIT["attention_head_dim"] // 2, DIT["sample_size"] + 1, use_real=True,
                                     repeat_interleave_real=False)
    g = torch.Generator().manual_seed(1)
    for sigma in (0.3, 2.0, 40.0, 500.0):
        sigma_t = torch.tensor(sigma)
        x = torch.randn(2, DIT["in_channels"], DIT["sample_size"], generator=g) * sigma**0.5
        out = pipe.transformer(pipe.scheduler.precondition_inputs(x, sigma_t),
                               pipe.scheduler.precondition_noise(sigma_t).reshape(1),
                               encoder_hidden_states=cond.encoder_hidden_states,
                               global_hidden_states=cond.global_hidden_states, rotary_embedding=rotary,
                               return_dict=False)[0]
        theirs = pipe.scheduler.precondition_outputs(x, out, sigma_t)
        ours = teacher.denoiser(x, sigma, cond)
        assert (ours - x / (sigma**2 + 1)).abs().max() > 1e-2  # the network term matters
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_text_conditioner_equals_the_pipelines_encode_prompt_and_duration(teacher, pipeline_folder):
    pipe = pipeline_folder[0]
    start, total = [0.0, 1.5], [3.0, 4.5]
    ours = teacher.text(PROMPTS, start, total)
    theirs = _pipeline_cond(pipe, PROMPTS, start, total)
    assert ours.encoder_hidden_states.shape == (2, MAX_TOKENS + 2, DIT["cross_attention_input_dim"])
    assert ours.global_hidden_states.shape == (2, 1, DIT["global_states_input_dim"])
    torch.testing.assert_close(ours.encoder_hidden_states, theirs.encoder_hidden_states, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.global_hidden_states, theirs.global_hidden_states, rtol=1e-6, atol=1e-7)
    tokens, mask = teacher.text.encode(PROMPTS)
    assert mask.sum(1).tolist() == [3, MAX_TOKENS]  # "piano jazz </s>" padded; the long prompt truncated
    assert ours.encoder_hidden_states[0, 3:MAX_TOKENS].abs().max() == 0  # padding zeroed after projection
    assert ours.encoder_hidden_states[0, :3].abs().min() > 0
    # one number for every prompt, as the pipeline's encode_duration repeats it
    torch.testing.assert_close(teacher.text(PROMPTS, 0.0, 3.0).global_hidden_states,
                               _pipeline_cond(pipe, PROMPTS, 0.0, 3.0).global_hidden_states)
    # the pipeline's CFG null without a negative prompt: all cross-attention tokens zero, timing kept
    null = ours.null()
    assert null.encoder_hidden_states.abs().max() == 0
    torch.testing.assert_close(null.global_hidden_states, theirs.global_hidden_states)
    with pytest.raises(ValueError, match="seconds_total must be one number or 2"):
        teacher.text(PROMPTS, 0.0, [1.0, 2.0, 3.0])


@torch.no_grad()
def test_codec_is_the_pipelines_vae(teacher, pipeline_folder):
    pipe, folder = pipeline_folder
    codec = teacher.codec
    assert (codec.sample_rate, codec.channels, codec.audio_channels, codec.hop_length) == (16000, 3, 2, 8)
    assert codec.frame_rate == 2000.0
    wav = torch.randn(2, 101, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    latent = codec.encode(wav)
    assert latent.shape == (2, 3, codec.frames_for(101)) == (2, 3, 12)
    stereo = wav[:, None].repeat(1, 2, 1)  # mono duplicated on both channels
    torch.testing.assert_close(latent, pipe.vae.encode(stereo).latent_dist.mode())
    torch.testing.assert_close(codec.encode_channels(stereo), latent)
    decoded = codec.decode(latent)
    assert decoded.shape == (2, codec.samples_for(12)) == (2, 96)
    reference = pipe.vae.decode(latent).sample  # [B, 2, n], what the pipeline returns before its crop
    torch.testing.assert_close(codec.decode_channels(latent), reference)
    torch.testing.assert_close(decoded, reference.mean(dim=1))
    ident = codec.identity()
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    assert ident["name"] == "oobleck" and ident["hop_length"] == 8 and ident["sample_rate"] == 16000
    assert ident["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    json.dumps(ident)  # recorded in manifests
    with pytest.raises(ValueError, match=r"latent must be \[B, 3, T\]"):
        codec.decode(torch.zeros(1, 4, 5))
    assert load_oobleck_codec(folder).identity() == ident  # the VAE alone, as load_codec reads it


def test_load_codec_reads_the_teachers_vae(pipeline_folder):
    from presto_ray.config import CodecConfig
    from presto_ray.models.codec import load_codec

    folder = pipeline_folder[1]
    codec = load_codec(CodecConfig(name="oobleck", path=str(folder)))
    assert codec.identity() == load_oobleck_codec(folder).identity()
    with pytest.raises(ValueError, match=r"codec.sample_rate=44100 differs from the sample_rate 16000 in .*vae/config"):
        load_codec(CodecConfig(name="oobleck", path=str(folder), sample_rate=44100))
    with pytest.raises(ValueError, match="codec.name='oobleck' needs codec.path: a Stable Audio teacher folder"):
        load_codec(CodecConfig(name="oobleck"))


@pytest.mark.parametrize("breakage, match", [
    ("no_vae", "has no vae/ folder"),
    ("no_model_index", "has no model_index.json"),
    ("index_without_tokenizer", "does not list component 'tokenizer'"),
    ("other_transformer_class", "model_index.json key 'transformer' is 'StableAudio3DiTModel'"),
    ("no_transformer_config", "has no transformer/config.json"),
    ("no_projection_weights", r"projection_model/ has no \*.safetensors weights"),
    ("no_scheduler_config", "scheduler/scheduler_config.json"),
    ("unknown_text_encoder_class", r"model_index.json key 'text_encoder' is \['transformers', 'NoSuchEncoder'\]"),
    ("text_width_disagrees", r"text_encoder/config.json d_model=8 must equal projection_model/config.json "
                             r"text_encoder_dim=9"),
    ("latent_channels_disagree", r"transformer/config.json in_channels=3 must equal vae/config.json "
                                 r"decoder_input_channels=5"),
])
def test_bad_folder_is_named_before_any_weights_are_read(pipeline_folder, tmp_path, breakage, match):
    folder = tmp_path / "teacher"
    shutil.copytree(pipeline_folder[1], folder)
    index = json.loads((folder / "model_index.json").read_text())
    if breakage == "no_vae":
        shutil.rmtree(folder / "vae")
    elif breakage == "no_model_index":
        (folder / "model_index.json").unlink()
    elif breakage == "index_without_tokenizer":
        del index["tokenizer"]
    elif breakage == "other_transformer_class":
        index["transformer"] = ["diffusers", "StableAudio3DiTModel"]
    elif breakage == "no_transformer_config":
        (folder / "transformer" / "config.json").unlink()
    elif breakage == "no_projection_weights":
        (folder / "projection_model" / "diffusion_pytorch_model.safetensors").unlink()
    elif breakage == "no_scheduler_config":
        (folder / "scheduler" / "scheduler_config.json").unlink()
    elif breakage == "unknown_text_encoder_class":
        index["text_encoder"] = ["transformers", "NoSuchEncoder"]
    elif breakage == "text_width_disagrees":
        config = json.loads((folder / "projection_model" / "config.json").read_text())
        (folder / "projection_model" / "config.json").write_text(json.dumps({**config, "text_encoder_dim": 9}))
    elif breakage == "latent_channels_disagree":
        config = json.loads((folder / "vae" / "config.json").read_text())
        (folder / "vae" / "config.json").write_text(json.dumps({**config, "decoder_input_channels": 5}))
    if breakage in ("index_without_tokenizer", "other_transformer_class", "unknown_text_encoder_class"):
        (folder / "model_index.json").write_text(json.dumps(index))
    before = _tree(folder)
    with pytest.raises(TeacherFolderError, match=match) as err:
        check_teacher_folder(folder)  # reads JSON and file names only
    assert str(folder) in str(err.value)
    with pytest.raises(TeacherFolderError, match=match):
        load_stable_audio_teacher(folder)
    assert _tree(folder) == before  # nothing written


UNPICKLED = []


def _trip() -> None:
    UNPICKLED.append("unpickled")


class _Tripwire:
    """Unpickling this object calls :func:`_trip`, which records that something unpickled it."""

    def __reduce__(self):
        return _trip, ()


def test_pickled_transformer_weights_are_refused_unopened(pipeline_folder, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(pipeline_folder[1], folder)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"weights": pipeline_folder[0].transformer.state_dict(), "trap": _Tripwire()},
               folder / "transformer" / "diffusion_pytorch_model.bin")
    before = _tree(folder)
    with pytest.raises(TeacherFolderError, match=r"transformer/diffusion_pytorch_model.bin is a pickled weights file"):
        load_stable_audio_teacher(folder)
    assert UNPICKLED == [] and _tree(folder) == before
    pickle.loads(pickle.dumps(_Tripwire()))  # the trap works: unpickling one (our own, in memory) trips it
    assert UNPICKLED == ["unpickled"]


def test_objective_from_the_scheduler_or_the_argument(pipeline_folder, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(pipeline_folder[1], folder)
    with pytest.raises(ValueError, match=r"unknown teacher.objective 'ddpm'; expected one of 'v', 'rectified_flow'"):
        load_stable_audio_teacher(folder, objective="ddpm")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "epsilon"}))
    with pytest.raises(TeacherFolderError, match=r"scheduler_config.json: prediction_type is 'epsilon'"):
        load_stable_audio_teacher(folder)
    assert load_stable_audio_teacher(folder, objective="v").objective == "v"  # the argument decides
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k != "sigma_max"}))
    with pytest.raises(TeacherFolderError, match=r"scheduler_config.json: the 'v' objective needs a positive "
                                                 r"'sigma_max'"):
        load_stable_audio_teacher(folder)
    # a flow-matching scheduler makes it a rectified-flow teacher, capped at t = 0.999
    shutil.rmtree(folder / "scheduler")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    flow = load_stable_audio_teacher(folder)
    assert flow.objective == "rectified_flow" and isinstance(flow.denoiser, RectifiedFlowPrecond)
    t_min = 3.0 * 0.001 / (1 + 2.0 * 0.001)  # the scheduler's smallest shifted training time
    assert flow.sigma_min == pytest.approx(t_min / (1 - t_min), rel=1e-12)
    assert flow.sigma_max == pytest.approx(999.0) == flow.denoiser.sigma_max and flow.sigma_data == 1.0


@torch.no_grad()
def test_folder_in_object_storage_reads_as_the_local_one(pipeline_folder, teacher, s3_endpoint, tmp_path):
    import boto3

    folder = pipeline_folder[1]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "presto", f"teachers/tiny/{path.relative_to(folder).as_posix()}")
    remote = load_stable_audio_teacher("s3://presto/teachers/tiny")
    assert remote.folder == "s3://presto/teachers/tiny"
    assert remote.codec.identity() == teacher.codec.identity()
    cond = teacher.text(PROMPTS, 0.0, 3.0)
    torch.testing.assert_close(remote.text(PROMPTS, 0.0, 3.0).encoder_hidden_states, cond.encoder_hidden_states)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(remote.denoiser(x, 1.5, cond), teacher.denoiser(x, 1.5, cond))
    s3.delete_object(Bucket="presto", Key="teachers/tiny/vae/config.json")
    with pytest.raises(TeacherFolderError, match=r"'s3://presto/teachers/tiny' has no vae/config.json"):
        load_stable_audio_teacher("s3://presto/teachers/tiny")
