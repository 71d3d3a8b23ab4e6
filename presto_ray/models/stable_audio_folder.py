"""A released Stable Audio teacher read from a folder in the layout ``StableAudioPipeline.save_pretrained``
writes (a local path, ``file://`` or ``s3://`` URI), as presto_ray pieces: the denoiser D(x; sigma)
(presto_ray.models.objectives over :class:`StableAudioNet`), the Oobleck VAE as a codec and the
T5 + projection conditioner.

    model_index.json                 each component -> [library, class]
    transformer/       config.json + *.safetensors   StableAudioDiTModel
    vae/               config.json + *.safetensors   AutoencoderOobleck
    text_encoder/      config.json + *.safetensors   the transformers class model_index.json names (T5EncoderModel)
    projection_model/  config.json + *.safetensors   StableAudioProjectionModel
    tokenizer/         tokenizer_config.json (+ tokenizer.json or spiece.model)
    scheduler/         scheduler_config.json         read as JSON only: the objective and the sigmas

Everything is checked before any weights are read (and, for ``s3://``, before anything is fetched):
the files above, weights in safetensors only (a pickled weights file - .bin, .pt, .pth, .ckpt, .pkl,
.pickle - in a component folder is refused by name, never opened), and the shapes the components
must agree on. Models load with ``local_files_only=True`` and ``use_safetensors=True``; nothing is
written to the folder. An ``s3://`` folder's component subfolders (not its other files, such as the
stable-audio-tools ``model.ckpt`` a hub snapshot carries at the top) are fetched into a temporary
folder that is removed once the models are in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from presto_ray.data import storage
from presto_ray.models.objectives import flow_sigma, make_precond
from presto_ray.models.oobleck_codec import OobleckCodec
from presto_ray.models.stable_audio import StableAudioNet
from presto_ray.models.stable_audio_text import StableAudioText

log = logging.getLogger("presto_ray.models")

TEACHER_OBJECTIVES = ("v", "rectified_flow")
COMPONENTS = ("transformer", "vae", "text_encoder", "projection_model", "tokenizer", "scheduler")
WEIGHTED = ("transformer", "vae", "text_encoder", "projection_model")
CONFIG_FILES = {"tokenizer": "tokenizer_config.json", "scheduler": "scheduler_config.json"}  # others: config.json
DIFFUSERS_CLASSES = {"transformer": "StableAudioDiTModel", "vae": "AutoencoderOobleck",
                     "projection_model": "StableAudioProjectionModel"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FLOW_T_MAX = 0.999  # rectified flow: the highest time a sampler starts from (sigma_max 999)


class TeacherFolderError(ValueError):
    """A teacher folder that cannot be read; the message names the folder and the file or key."""


@dataclass(frozen=True)
class TeacherFolder:
    """A checked folder: ``uri``, ``model_index`` (model_index.json), ``configs`` (component -> its
    config JSON), ``weights`` (weighted component -> its safetensors file names)."""

    uri: str
    model_index: dict
    configs: dict
    weights: dict = field(default_factory=dict)

    def where(self, *parts: str) -> str:
        """A path inside the folder, for messages."""
        return storage.join(self.uri, *parts)


def _read_json(uri: str, folder: str) -> dict:
    """The JSON object at ``uri``; TeacherFolderError naming the file when unreadable or not an object."""
    try:
        value = json.loads(storage.read_bytes(uri))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TeacherFolderError(f"teacher folder '{folder}': cannot read {uri}: {err}") from None
    if not isinstance(value, dict):
        raise TeacherFolderError(f"teacher folder '{folder}': {uri} must hold a JSON object")
    return value


def _model_index(uri: str, names: list[str], components: tuple[str, ...]) -> dict:
    """model_index.json, checked to list each of ``components`` as [library, class]."""
    if not names:
        raise TeacherFolderError(f"teacher folder '{uri}' does not exist or is empty")
    if "model_index.json" not in names:
        raise TeacherFolderError(f"teacher folder '{uri}' has no model_index.json: expected the layout "
                                 "StableAudioPipeline.save_pretrained writes")
    index = _read_json(storage.join(uri, "model_index.json"), uri)
    for name in components:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise TeacherFolderError(f"teacher folder '{uri}': model_index.json does not list component "
                                     f"'{name}' as [library, class] (got {entry!r})")
    for name, cls in DIFFUSERS_CLASSES.items():
        if name in components and index[name][1] != cls:
            raise TeacherFolderError(f"teacher folder '{uri}': model_index.json key '{name}' is "
                                     f"{index[name][1]!r}; only {cls} (Stable Audio Open) is read so far")
    return index


def _component_files(uri: str, name: str) -> tuple[str, ...]:
    """The safetensors files of component ``name``, after checking its folder and config file and
    refusing pickled weights."""
    names = storage.list_dir(storage.join(uri, name))
    config = CONFIG_FILES.get(name, "config.json")
    if not names:
        needs = f"{name}/{config}" + (" and *.safetensors weights" if name in WEIGHTED else "")
        raise TeacherFolderError(f"teacher folder '{uri}' has no {name}/ folder, or it is empty (model_index.json "
                                 f"lists it; expected {needs})")
    if config not in names:
        raise TeacherFolderError(f"teacher folder '{uri}' has no {name}/{config}")
    pickled = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise TeacherFolderError(f"teacher folder '{uri}': {name}/{pickled[0]} is a pickled weights file, which "
                                 "presto_ray never loads: convert it to safetensors and remove it")
    weights = tuple(n for n in names if n.endswith(".safetensors"))
    if name in WEIGHTED and not weights:
        raise TeacherFolderError(f"teacher folder '{uri}': {name}/ has no *.safetensors weights")
    return weights


def _check_classes(folder: TeacherFolder, components: tuple[str, ...]) -> None:
    """The transformers classes model_index.json names for the text encoder and tokenizer exist."""
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    for name, base in (("text_encoder", PreTrainedModel), ("tokenizer", PreTrainedTokenizerBase)):
        if name in components:
            _transformers_class(folder, name, base)


def _check_shapes(folder: TeacherFolder) -> None:
    """The dimensions the components must agree on, from their config.json files."""
    cfg = folder.configs
    pairs = []
    if {"transformer", "vae"} <= cfg.keys():
        pairs.append((("transformer", "in_channels"), ("vae", "decoder_input_channels"), 1))
    if {"transformer", "projection_model"} <= cfg.keys():
        pairs += [(("transformer", "cross_attention_input_dim"), ("projection_model", "conditioning_dim"), 1),
                  (("transformer", "global_states_input_dim"), ("projection_model", "conditioning_dim"), 2)]
    if {"text_encoder", "projection_model"} <= cfg.keys():
        width = "d_model" if "d_model" in cfg["text_encoder"] else "hidden_size"  # T5 / other encoders
        pairs.append((("text_encoder", width), ("projection_model", "text_encoder_dim"), 1))
    for (a, key_a), (b, key_b), factor in pairs:
        for comp, key in ((a, key_a), (b, key_b)):
            if not isinstance(cfg[comp].get(key), int):
                raise TeacherFolderError(f"teacher folder '{folder.uri}': {comp}/config.json has no integer '{key}'")
        if cfg[a][key_a] != factor * cfg[b][key_b]:
            scale = f"{factor} * " if factor != 1 else ""
            raise TeacherFolderError(f"teacher folder '{folder.uri}': {a}/config.json {key_a}={cfg[a][key_a]} must "
                                     f"equal {scale}{b}/config.json {key_b}={cfg[b][key_b]}")


def check_teacher_folder(folder: str | Path, components: tuple[str, ...] = COMPONENTS) -> TeacherFolder:
    """Check ``folder`` (local path, file:// or s3:// URI) for ``components`` without loading any
    weights: model_index.json, each component's folder, config and safetensors weights, no pickled
    weights, and agreeing shapes. Returns the :class:`TeacherFolder`; raises TeacherFolderError."""
    uri = storage.absolute(str(folder))
    try:
        names = storage.list_dir(uri)
    except OSError as err:
        raise TeacherFolderError(f"teacher folder '{uri}' cannot be listed (is it a folder?): {err}") from None
    index = _model_index(uri, names, components)
    configs, weights = {}, {}
    for name in components:
        files = _component_files(uri, name)
        if name in WEIGHTED:
            weights[name] = files
        if name != "tokenizer":
            configs[name] = _read_json(storage.join(uri, name, CONFIG_FILES.get(name, "config.json")), uri)
    checked = TeacherFolder(uri, index, configs, weights)
    _check_classes(checked, components)
    _check_shapes(checked)
    return checked


def check_objective(objective: str) -> str:
    """``objective`` if it is one of TEACHER_OBJECTIVES; else a ValueError listing them."""
    if objective not in TEACHER_OBJECTIVES:
        raise ValueError(f"unknown teacher.objective {objective!r}; expected one of "
                         f"{', '.join(map(repr, TEACHER_OBJECTIVES))}")
    return objective


def folder_objective(folder: TeacherFolder) -> str:
    """The objective scheduler/scheduler_config.json says: a FlowMatch scheduler -> "rectified_flow";
    prediction_type "v_prediction" -> "v"; anything else is a TeacherFolderError naming the file and key."""
    config = folder.configs["scheduler"]
    if "FlowMatch" in str(config.get("_class_name", "")):
        return "rectified_flow"
    prediction = config.get("prediction_type")
    if prediction == "v_prediction":
        return "v"
    found = "has no 'prediction_type'" if prediction is None else f"prediction_type is {prediction!r}"
    raise TeacherFolderError(f"{folder.where('scheduler', 'scheduler_config.json')}: {found}; presto_ray reads "
                             "'v_prediction' (objective 'v') or a FlowMatch scheduler ('rectified_flow'). Set "
                             f"teacher.objective to one of {', '.join(map(repr, TEACHER_OBJECTIVES))} if the network "
                             "was trained with one of those")


def teacher_objective(folder: TeacherFolder, objective: str | None) -> str:
    """``objective`` (teacher.objective) when given, else :func:`folder_objective`. A given objective that
    differs from what the scheduler says is used, with a warning."""
    if objective is None:
        return folder_objective(folder)
    check_objective(objective)
    with contextlib.suppress(TeacherFolderError):
        if (said := folder_objective(folder)) != objective:
            log.warning("teacher.objective %r overrides %r, which %s says", objective, said,
                        folder.where("scheduler", "scheduler_config.json"))
    return objective


def teacher_sigmas(folder: TeacherFolder, objective: str) -> tuple[float, float, float]:
    """(sigma_min, sigma_max, sigma_data) of the teacher on the EDM scale.

    "v": the scheduler config's sigma_min, sigma_max and sigma_data (0.3, 500, 1 for Stable Audio Open
    1.0), each required. "rectified_flow": sigma_data 1; sigma_max the cap flow_sigma(FLOW_T_MAX) (999;
    the denoiser is built with that t_max); sigma_min the flow scheduler's smallest training time
    t = 1/num_train_timesteps, shifted by its ``shift`` (defaults 1000 and 1), as sigma = t / (1 - t).
    """
    config = folder.configs["scheduler"]
    where = folder.where("scheduler", "scheduler_config.json")
    if objective == "rectified_flow":
        steps, shift = config.get("num_train_timesteps", 1000), config.get("shift", 1.0)
        if not (isinstance(steps, int) and steps > 1 and isinstance(shift, (int, float)) and shift > 0):
            raise TeacherFolderError(f"{where}: num_train_timesteps={steps!r} and shift={shift!r} must be an integer "
                                     "> 1 and a positive number")
        t_min = shift / steps / (1 + (shift - 1) / steps)
        return flow_sigma(t_min), flow_sigma(FLOW_T_MAX), 1.0
    values = []
    for key in ("sigma_min", "sigma_max", "sigma_data"):
        value = config.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise TeacherFolderError(f"{where}: the 'v' objective needs a positive '{key}', got {value!r}")
        values.append(float(value))
    if values[0] >= values[1]:
        raise TeacherFolderError(f"{where}: sigma_min={values[0]} must be below sigma_max={values[1]}")
    return values[0], values[1], values[2]


@contextlib.contextmanager
def _local_copy(folder: TeacherFolder, components: tuple[str, ...]) -> Iterator[Path]:
    """A local folder holding ``components``: the folder itself, or for an object-store URI those
    subfolders fetched into a temporary folder, removed on exit."""
    if not storage.is_remote(folder.uri):
        yield storage.local_path(folder.uri)
        return
    with tempfile.TemporaryDirectory(prefix="presto-teacher-") as tmp:
        for name in components:
            storage.fetch_dir(folder.where(name), Path(tmp) / name)
        yield Path(tmp)


@contextlib.contextmanager
def _loading(folder: TeacherFolder, name: str) -> Iterator[None]:
    """Turn a library's error while loading component ``name`` into a TeacherFolderError naming it, with
    the libraries' progress bars off."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    bars = [(lib, lib.is_progress_bar_enabled()) for lib in (hf_logging, diffusers_logging)]
    for lib, _ in bars:
        lib.disable_progress_bar()
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeacherFolderError(f"teacher folder '{folder.uri}': could not load {name}/: {first}") from err
    finally:
        for lib, enabled in bars:
            if enabled:
                lib.enable_progress_bar()


def _transformers_class(folder: TeacherFolder, name: str, base: type) -> type:
    """The transformers class model_index.json names for ``name``; it must derive from ``base``."""
    import transformers

    library, cls_name = folder.model_index[name]
    cls = getattr(transformers, cls_name, None) if library == "transformers" else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TeacherFolderError(f"teacher folder '{folder.uri}': model_index.json key '{name}' is "
                                 f"[{library!r}, {cls_name!r}], not a transformers {base.__name__}")
    return cls


def _weights_sha256(local: Path, name: str, files: tuple[str, ...]) -> str:
    """sha256 of the one weights file of ``name``, or of the lines "<file> <sha256>" of several."""
    shas = [storage.sha256(str(local / name / f)) for f in sorted(files)]
    if len(shas) == 1:
        return shas[0]
    return hashlib.sha256("".join(f"{f} {s}\n" for f, s in zip(sorted(files), shas)).encode()).hexdigest()


def _load_diffusers(folder: TeacherFolder, local: Path, name: str, dtype: torch.dtype,
                    device: str | torch.device) -> torch.nn.Module:
    """Component ``name`` (one of DIFFUSERS_CLASSES) from safetensors, frozen, on ``device``."""
    import diffusers

    cls = getattr(diffusers, DIFFUSERS_CLASSES[name])
    with _loading(folder, name):
        model = cls.from_pretrained(str(local / name), local_files_only=True, use_safetensors=True,
                                    torch_dtype=dtype, low_cpu_mem_usage=False)
    return model.to(device).eval().requires_grad_(False)


def _load_codec(folder: TeacherFolder, local: Path, device: str | torch.device) -> OobleckCodec:
    """The VAE (float32: the codec's precision) as an :class:`OobleckCodec`."""
    vae = _load_diffusers(folder, local, "vae", torch.float32, device)
    with _loading(folder, "vae"):
        return OobleckCodec(vae, _weights_sha256(local, "vae", folder.weights["vae"]))


def _load_text(folder: TeacherFolder, local: Path, dtype: torch.dtype, device: str | torch.device) -> StableAudioText:
    """Tokenizer, text encoder and projection model as a :class:`StableAudioText`."""
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    tokenizer_cls = _transformers_class(folder, "tokenizer", PreTrainedTokenizerBase)
    encoder_cls = _transformers_class(folder, "text_encoder", PreTrainedModel)
    with _loading(folder, "tokenizer"):
        tokenizer = tokenizer_cls.from_pretrained(str(local / "tokenizer"), local_files_only=True)
    with _loading(folder, "text_encoder"):
        encoder = encoder_cls.from_pretrained(str(local / "text_encoder"), local_files_only=True,
                                              use_safetensors=True, dtype=dtype)
    projection = _load_diffusers(folder, local, "projection_model", dtype, device)
    with _loading(folder, "tokenizer"):
        return StableAudioText(tokenizer, encoder.to(device), projection)


@dataclass(frozen=True)
class StableAudioTeacher:
    """A released Stable Audio model as presto_ray pieces (all frozen, in eval mode).

    denoiser: D(x [B, C, L], sigma, cond: StableAudioCond) -> x0 [B, C, L] (``make_precond(objective,
    StableAudioNet(transformer), sigma_data)``); codec: the VAE, wav [B, n] <-> latent [B, C, T];
    text: prompts and seconds -> StableAudioCond; objective: "v" or "rectified_flow"; sigma_min,
    sigma_max, sigma_data: the teacher's noise range and data scale on the EDM scale; sample_size:
    the latent frames L the transformer was trained on; folder: where it was read from.
    """

    denoiser: torch.nn.Module
    codec: OobleckCodec
    text: StableAudioText
    objective: str
    sigma_min: float
    sigma_max: float
    sigma_data: float
    sample_size: int
    folder: str


def load_stable_audio_teacher(folder: str | Path, objective: str | None = None, device: str | torch.device = "cpu",
                              dtype: torch.dtype = torch.float32) -> StableAudioTeacher:
    """Read the teacher in ``folder`` (local path, file:// or s3:// URI; the layout
    ``StableAudioPipeline.save_pretrained`` writes). ``objective`` is ``teacher.objective``: None reads
    it from scheduler/scheduler_config.json (see :func:`teacher_objective`). The transformer, text
    encoder and projection model load in ``dtype``, the VAE in float32; all move to ``device``.

    Raises ValueError for an unknown ``objective`` and TeacherFolderError (a ValueError) naming the
    folder and the missing or bad file or key, before any weights are read (:func:`check_teacher_folder`);
    a library's error while loading a checked component is a TeacherFolderError naming the component.
    """
    if objective is not None:
        check_objective(objective)
    checked = check_teacher_folder(folder)
    objective = teacher_objective(checked, objective)
    sigma_min, sigma_max, sigma_data = teacher_sigmas(checked, objective)
    with _local_copy(checked, COMPONENTS) as local:
        transformer = _load_diffusers(checked, local, "transformer", dtype, device)
        codec = _load_codec(checked, local, device)
        text = _load_text(checked, local, dtype, device)
    options = {"t_max": FLOW_T_MAX} if objective == "rectified_flow" else {}
    denoiser = make_precond(objective, StableAudioNet(transformer), sigma_data, **options)
    log.info("Stable Audio teacher read from %s: objective %s, sigma %.3g..%.3g, sigma_data %g", checked.uri,
             objective, sigma_min, sigma_max, sigma_data)
    return StableAudioTeacher(denoiser.eval().requires_grad_(False), codec, text, objective, sigma_min, sigma_max,
                              sigma_data, int(transformer.config.sample_size), checked.uri)


def load_oobleck_codec(folder: str | Path, device: str | torch.device = "cpu") -> OobleckCodec:
    """Only the VAE of the teacher folder ``folder`` as a codec (what ``codec.name: oobleck`` will load):
    model_index.json and vae/ are checked as :func:`load_stable_audio_teacher` checks them."""
    checked = check_teacher_folder(folder, components=("vae",))
    with _local_copy(checked, ("vae",)) as local:
        return _load_codec(checked, local, device)
