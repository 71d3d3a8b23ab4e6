"""``prepare``: source -> render -> crop -> codec encode -> text encode -> Parquet latent shards.

A Ray Data pipeline: rendering runs as parallel tasks (music21 parsing and FluidSynth), encoding
in an actor pool (1 to ``prepare.encode_actors`` actors, ``prepare.encode_gpus`` GPUs each) that
loads the codec and the text encoder once per actor, and the driver streams
the encoded rows into one :class:`ShardWriter` per split (``<out>/train``, ``<out>/valid``,
``<out>/test``; each with its own manifest and statistics). Items already written by an earlier,
interrupted run are not rendered again; pieces that cannot be used are counted by reason in the
manifest's ``extra``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from typing import Callable

import numpy as np
import ray
import ray.data
import torch
from tqdm import tqdm

from presto_ray.config import PrestoConfig
from presto_ray.data import storage
from presto_ray.data.audio_source import plan_audio_items, render_audio_row
from presto_ray.data.music21_source import SPLITS, RenderSpec, find_fluidsynth, find_soundfont, plan_items, render_item
from presto_ray.data.records import skipped_record
from presto_ray.data.shards import Manifest, ShardWriter

log = logging.getLogger("presto_ray.prepare")

METADATA_COLUMNS = ("split", "piece_id", "instruments", "source_metadata")


def _render(row: dict) -> dict:
    """Ray Data task: one music21 RenderSpec row -> the rendered record (audio [n] float32), or a
    skipped record (presto_ray.data.records) carrying the reason."""
    spec = RenderSpec.from_row(row)
    try:
        record, reason = render_item(spec)
    except FileNotFoundError:  # fluidsynth or the soundfont is missing: every item would fail
        raise
    except Exception as err:  # noqa: BLE001 - one odd score must not stop a corpus build
        record, reason = None, f"error: {type(err).__name__}: {err}"
    if record is None:
        n = int(round(spec.seconds * spec.sample_rate))
        return skipped_record(spec.item_id, spec.split, reason, n, spec.piece.piece_id)
    meta = record.get("metadata", {})
    return {
        "id": record["id"], "split": record["split"], "skip_reason": "", "audio": record["audio"],
        "caption": record["caption"], "bpm": np.float32(record["bpm"]),
        "seconds_start": np.float32(record["seconds_start"]), "seconds_total": np.float32(record["seconds_total"]),
        "piece_id": record["piece_id"], "instruments": ", ".join(record["instruments"]),
        "source_metadata": json.dumps(meta, default=str, sort_keys=True),
    }


def plan(cfg: PrestoConfig) -> tuple[list[dict], Callable[[dict], dict], dict]:
    """(plan rows each with "id" and "split", the Ray Data task that turns a row into a record,
    facts for the manifests) for ``cfg.prepare.source``."""
    p = cfg.prepare
    if p.source == "audio":
        if not p.audio_uri or not p.captions_uri:
            raise ValueError("prepare.source=audio needs prepare.audio_uri and prepare.captions_uri")
        rows = plan_audio_items(p.audio_uri, p.captions_uri, clip_seconds=cfg.clip_seconds,
                                sample_rate=cfg.codec.sample_rate, split_fractions=p.split_fractions,
                                split_seed=p.split_seed, seed=p.seed, crops_per_file=p.crops_per_file)
        return rows, render_audio_row, {"source": "audio", "audio_uri": p.audio_uri, "captions_uri": p.captions_uri}
    find_fluidsynth()
    soundfont = find_soundfont(p.soundfont)
    specs = plan_items(num_items(cfg), p.split_fractions, p.seed, sample_rate=cfg.codec.sample_rate,
                       seconds=cfg.clip_seconds, soundfont=soundfont, split_seed=p.split_seed,
                       max_repeats=p.max_repeats)
    rows = [{**s.to_row(), "id": s.item_id} for s in specs]
    return rows, _render, {"source": "music21", "soundfont": soundfont.rsplit("/", 1)[-1]}


class Encoder:
    """Ray Data actor: audio [B, n] -> latent [B, C, T] float16 and caption -> text states
    [B, L, Dt] float16 + mask [B, L]; codec and text encoder are loaded once per actor."""

    def __init__(self, cfg_dict: dict):
        from presto_ray.config import config_from_dict
        from presto_ray.models.codec import load_codec
        from presto_ray.models.text import load_text_encoder

        from presto_ray.runtime import choose_runtime

        self.cfg = config_from_dict(cfg_dict)
        self.device = choose_runtime().device  # a GPU when the pool was given prepare.encode_gpus
        self.codec = load_codec(self.cfg.codec)  # runs on the device of its input
        self.text = load_text_encoder(self.cfg.text, self.device)

    def __call__(self, batch: dict) -> dict:
        ok = np.asarray([r == "" for r in batch["skip_reason"]])
        out = {k: v for k, v in batch.items() if k != "audio"}
        frames, (L, Dt) = self.cfg.model.latent_frames, (self.cfg.text.max_tokens, self.text.dim)
        latent = np.zeros((len(ok), self.cfg.model.latent_channels, frames), np.float16)
        states = np.zeros((len(ok), L, Dt), np.float16)
        mask = np.zeros((len(ok), L), bool)
        if ok.any():
            idx = np.flatnonzero(ok)
            audio = torch.from_numpy(np.stack([batch["audio"][i] for i in idx]).astype(np.float32)).to(self.device)
            latent[idx] = self.codec.encode(audio)[..., :frames].float().cpu().numpy().astype(np.float16)
            s, m = self.text.encode([str(batch["caption"][i]) for i in idx])
            states[idx], mask[idx] = s.float().cpu().numpy().astype(np.float16), m.cpu().numpy()
        out.update({"latent": latent, "text_states": states, "text_mask": mask})
        return out


def num_items(cfg: PrestoConfig) -> int:
    """Clips to render: prepare.items, or prepare.hours of clips of the model's length."""
    return cfg.prepare.items or max(1, math.ceil(cfg.prepare.hours * 3600 / cfg.clip_seconds))


def prepare(cfg: PrestoConfig, out: str, *, progress: bool = True) -> dict[str, Manifest]:
    """Build the shard sets under ``out`` (local path, file:// or s3://); returns split -> manifest."""
    from presto_ray.models.codec import load_codec
    from presto_ray.models.text import load_text_encoder

    codec, text = load_codec(cfg.codec), load_text_encoder(cfg.text)
    if text.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder '{cfg.text.name}' gives {text.dim}-d states but model.text_dim={cfg.model.text_dim}")
    if codec.frames_for(round(cfg.clip_seconds * codec.sample_rate)) < cfg.model.latent_frames:
        raise ValueError("the codec gives fewer frames per clip than model.latent_frames")

    rows, load_row, facts = plan(cfg)
    writers = {
        split: ShardWriter(storage.join(out, split), rows_per_shard=cfg.prepare.rows_per_shard,
                           latent_shape=(cfg.model.latent_channels, cfg.model.latent_frames),
                           text_shape=(cfg.text.max_tokens, text.dim), codec_identity=codec.identity(),
                           text_identity=text.identity(), metadata_columns=METADATA_COLUMNS)
        for split in SPLITS if any(r["split"] == split for r in rows)
    }
    todo = []
    for split, writer in writers.items():
        planned = {r["id"] for r in rows if r["split"] == split}
        stray = writer.completed_ids - planned
        if stray:
            raise ValueError(f"{storage.join(out, split)} holds {len(stray)} items this plan does not have "
                             f"(e.g. {sorted(stray)[0]}): it was written with other prepare settings "
                             "(seed, split_seed, split_fractions, hours, source); use a new --out")
        todo += [r for r in rows if r["split"] == split and r["id"] not in writer.completed_ids]
    log.info("prepare: %d %s items planned (%.2f h of %.2f s clips), %d already written, %d to do", len(rows),
             facts["source"], len(rows) * cfg.clip_seconds / 3600, cfg.clip_seconds, len(rows) - len(todo), len(todo))
    skipped: dict[str, Counter] = {split: Counter() for split in writers}
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 64))
        ds = ds.map(load_row)
        ds = ds.map_batches(Encoder, fn_constructor_kwargs={"cfg_dict": cfg.model_dump(mode="json")},
                            batch_size=cfg.prepare.encode_batch, concurrency=(1, cfg.prepare.encode_actors),
                            num_gpus=cfg.prepare.encode_gpus, batch_format="numpy")
        bar = tqdm(total=len(todo), desc="prepare", unit="clip", disable=not progress)
        for batch in ds.iter_batches(batch_size=cfg.prepare.encode_batch, batch_format="numpy"):
            for i in range(len(batch["id"])):
                reason = str(batch["skip_reason"][i])
                if reason:
                    skipped[str(batch["split"][i])][reason_code(reason)] += 1
                else:
                    writers[str(batch["split"][i])].add({k: batch[k][i] for k in batch if k != "skip_reason"})
                bar.update(1)
            bar.set_postfix(skipped=sum(sum(c.values()) for c in skipped.values()))
        bar.close()
    manifests = {}
    for split, writer in writers.items():
        writer.flush()
        if not writer.completed_ids:
            writer.close(finalize=False)
            log.warning("prepare: split '%s' got no usable clip; no shard set written for it", split)
            continue
        extra = {**facts, "split": split, "seed": cfg.prepare.seed, "split_seed": cfg.prepare.split_seed,
                 "split_fractions": list(cfg.prepare.split_fractions), "skipped_this_run": dict(skipped[split]),
                 "planned_items": sum(r["split"] == split for r in rows),
                 "rendered_this_run": sum(r["split"] == split for r in todo)}
        manifests[split] = writer.close(extra=extra)
        log.info("prepare: %s: %d rows in %d files at %s", split, manifests[split].num_rows,
                 len(manifests[split].files), storage.join(out, split))
    for split, counts in skipped.items():
        if counts:
            log.info("prepare: %s: skipped %d items: %s", split, sum(counts.values()), dict(counts))
    if "train" not in manifests:
        raise ValueError(f"prepare: no usable training clip was produced under {out}; see the skip reasons above")
    return manifests


def reason_code(reason: str) -> str:
    """"silent render (rms 1e-05)" / "too short: 3.1 s ..." -> "silent render" / "too short"."""
    return reason.split(":")[0].split(" (")[0].strip() or "unknown"
