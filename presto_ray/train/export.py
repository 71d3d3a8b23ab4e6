"""The export folder: safetensors weights per role plus everything needed to sample from them.

Layout (inside each checkpoint's ``export/`` and wherever ``presto-ray export`` writes)::

    export.json          format version, step, roles -> file + sha256
    config.yaml          the full run config (model, edm, sampler, codec, text)
    latent_stats.json    per-channel latent mean/std, range (low/high, when the data records it) and sigma_data
    <role>.safetensors   weights (EMA weights when the run kept an EMA)
    sampler.json         optional: the teacher sampler chosen by a search on held-out data
                         (``presto-ray sweep teacher-sampler``); replaces config.yaml's ``sampler``
                         settings it names, with the evidence it was chosen on

A folder whose checksums do not match (for example a copy cut short) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from presto_ray import __version__
from presto_ray.config import PrestoConfig, config_from_dict, save_config
from presto_ray.data.stats import LatentStats

log = logging.getLogger("presto_ray.export")

FORMAT_VERSION = 1
SAMPLER_FILE = "sampler.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")


class ExportError(ValueError):
    """An export folder is missing, incomplete or corrupt; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_export(folder: Path, roles: dict[str, dict[str, torch.Tensor]], cfg: PrestoConfig,
                 stats: LatentStats, step: int) -> Path:
    """Write weights for each role (name -> state dict) with config and statistics."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    (folder / "latent_stats.json").write_text(json.dumps(stats.to_dict()))
    entries = {}
    for name, state in roles.items():
        file = folder / f"{name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(file))
        entries[name] = {"file": file.name, "sha256": _sha256(file)}
    meta = {"format_version": FORMAT_VERSION, "step": step, "code_version": __version__, "roles": entries}
    (folder / "export.json").write_text(json.dumps(meta, indent=2))  # written last: marks completeness
    return folder


@dataclass
class Exported:
    """A loaded export folder."""

    folder: Path
    cfg: PrestoConfig
    stats: LatentStats
    step: int
    roles: dict[str, dict]

    def state_dict(self, role: str) -> dict[str, torch.Tensor]:
        if role not in self.roles:
            raise ExportError(f"{self.folder}: no role '{role}' (has {sorted(self.roles)})")
        file = self.folder / self.roles[role]["file"]
        if _sha256(file) != self.roles[role]["sha256"]:
            raise ExportError(f"{file}: checksum does not match export.json (incomplete or corrupt copy)")
        return load_file(str(file))


def find_export(folder: Path) -> Path:
    """Resolve an export folder, a checkpoint ``step_XXXXXXXX`` folder or a run folder (newest
    complete checkpoint) to the export folder to load."""
    folder = Path(folder)
    if (folder / "export.json").is_file():
        return folder
    if (folder / "export" / "export.json").is_file():
        return folder / "export"
    if folder.is_dir():
        steps = sorted((p for p in folder.iterdir() if STEP_DIR.match(p.name)), reverse=True)
        for step in steps:
            if _complete(step / "export"):
                return step / "export"
            log.warning("%s is incomplete (missing files or checksum mismatch); trying an older one", step)
    raise ExportError(f"{folder}: no export.json here, in export/, or in any complete step_XXXXXXXX/export/")


def _complete(folder: Path) -> bool:
    """export.json present and every file it lists has its recorded sha256."""
    try:
        meta = json.loads((folder / "export.json").read_text())
        return all(_sha256(folder / e["file"]) == e["sha256"] for e in meta["roles"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_export(folder: Path) -> Exported:
    folder = find_export(folder)
    try:
        meta = json.loads((folder / "export.json").read_text())
        cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()), str(folder / "config.yaml"))
        stats = LatentStats.from_dict(json.loads((folder / "latent_stats.json").read_text()))
    except FileNotFoundError as err:
        raise ExportError(f"{folder}: missing {Path(err.filename).name}") from None
    cfg = _with_chosen_sampler(folder, cfg)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{folder / 'export.json'}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    for name, entry in meta["roles"].items():
        if not (folder / entry["file"]).is_file():
            raise ExportError(f"{folder}: role '{name}' file {entry['file']} is missing")
    return Exported(folder=folder, cfg=cfg, stats=stats, step=int(meta["step"]), roles=meta["roles"])


def _chosen_sampler(cfg: PrestoConfig, settings: dict) -> PrestoConfig:
    """``cfg`` with its sampler settings replaced by ``settings`` (SamplerConfig fields), validated;
    a ValueError (pydantic's ValidationError among them) names what is wrong."""
    from presto_ray.config import SamplerConfig

    sampler = SamplerConfig.model_validate({**cfg.sampler.model_dump(), **settings})
    return cfg.model_copy(update={"sampler": sampler})


def _with_chosen_sampler(folder: Path, cfg: PrestoConfig) -> PrestoConfig:
    """``cfg`` with the sampler settings of ``folder/sampler.json`` (when there is one)."""
    file = folder / SAMPLER_FILE
    if not file.is_file():
        return cfg
    try:
        return _chosen_sampler(cfg, json.loads(file.read_text())["settings"])
    except (ValueError, KeyError, TypeError) as err:
        raise ExportError(f"{file}: not a sampler choice ({{'settings': {{steps, cfg_scale, ...}}}}): {err}") from None


def write_sampler_choice(folder: Path, settings: dict, evidence: dict) -> Path:
    """Store the chosen teacher sampler ``settings`` (SamplerConfig fields, e.g. steps, cfg_scale,
    s_churn) with the ``evidence`` it was chosen on in the export ``folder`` (atomically);
    :func:`load_export` applies it from then on. Settings that are not valid sampler fields are
    refused before anything is written."""
    from presto_ray.data import storage

    exported = load_export(Path(folder))
    try:
        _chosen_sampler(exported.cfg, settings)
    except ValueError as err:
        raise ValueError(f"not a sampler setting: {settings}: {err}") from None
    file = exported.folder / SAMPLER_FILE
    storage.write_bytes_atomic(str(file), json.dumps({"settings": settings, "evidence": evidence}, indent=2).encode())
    return file


def copy_export(checkpoint: str, dest: str) -> str:
    """Verify a checkpoint's export folder and copy it to ``dest`` (local or object storage)."""
    import pyarrow.fs as pafs

    from presto_ray.data import storage

    with tempfile.TemporaryDirectory(prefix="presto-export-") as tmp:
        exported = load_export(storage.fetch_dir(checkpoint, Path(tmp)))
        for role in exported.roles:
            exported.state_dict(role)  # checksum check before anything is copied
        fs, path = storage.resolve(dest)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(exported.folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return dest
