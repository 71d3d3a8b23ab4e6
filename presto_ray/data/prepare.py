"""``prepare``: source -> render -> crop -> codec encode -> text encode -> Parquet latent shards.

A Ray Data pipeline: rendering runs as parallel tasks (music21 parsing and FluidSynth), encoding
in an actor pool that loads the codec and the text encoder once per actor, and the driver streams
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

import numpy as np
import ray
import ray.data
import torch
from tqdm import tqdm

from presto_ray.config import PrestoConfig
from presto_ray.data import storage
from presto_ray.data.music21_source import SPLITS, RenderSpec, find_fluidsynth, find_soundfont, plan_items, render_item
from presto_ray.data.shards import Manifest, ShardWriter

log = logging.getLogger("presto_ray.prepare")

METADATA_COLUMNS = ("split", "piece_id", "instruments", "source_metadata")


def _render(row: dict) -> dict:
    """Ray Data task: one RenderSpec row -> the rendered record (audio [n] float32), or a row
    with ``skip_reason`` set."""
    record, reason = render_item(RenderSpec.from_row(row))
    if record is None:
        return {"id": RenderSpec.from_row(row).item_id, "split": row["split"], "skip_reason": reason or "unknown"}
    meta = record.get("metadata", {})
    return {
        "id": record["id"], "split": record["split"], "skip_reason": "", "audio": record["audio"],
        "caption": record["caption"], "bpm": np.float32(record["bpm"]),
        "seconds_start": np.float32(record["seconds_start"]), "seconds_total": np.float32(record["seconds_total"]),
        "piece_id": record["piece_id"], "instruments": ", ".join(record["instruments"]),
        "source_metadata": json.dumps(meta, default=str, sort_keys=True),
    }


class Encoder:
    """Ray Data actor: audio [B, n] -> latent [B, C, T] float16 and caption -> text states
    [B, L, Dt] float16 + mask [B, L]; codec and text encoder are loaded once per actor."""

    def __init__(self, cfg_dict: dict):
        from presto_ray.config import config_from_dict
        from presto_ray.models.codec import load_codec
        from presto_ray.models.text import load_text_encoder

        self.cfg = config_from_dict(cfg_dict)
        self.codec = load_codec(self.cfg.codec)
        self.text = load_text_encoder(self.cfg.text)

    def __call__(self, batch: dict) -> dict:
        ok = np.asarray([r == "" for r in batch["skip_reason"]])
        out = {k: v for k, v in batch.items() if k != "audio"}
        frames, (L, Dt) = self.cfg.model.latent_frames, (self.cfg.text.max_tokens, self.text.dim)
        latent = np.zeros((len(ok), self.cfg.model.latent_channels, frames), np.float16)
        states = np.zeros((len(ok), L, Dt), np.float16)
        mask = np.zeros((len(ok), L), bool)
        if ok.any():
            idx = np.flatnonzero(ok)
            audio = torch.from_numpy(np.stack([batch["audio"][i] for i in idx]).astype(np.float32))
            latent[idx] = self.codec.encode(audio)[..., :frames].numpy().astype(np.float16)
            s, m = self.text.encode([str(batch["caption"][i]) for i in idx])
            states[idx], mask[idx] = s.numpy().astype(np.float16), m.numpy()
        out.update({"latent": latent, "text_states": states, "text_mask": mask})
        return out


def num_items(cfg: PrestoConfig) -> int:
    """Clips to render: prepare.items, or prepare.hours of clips of the model's length."""
    return cfg.prepare.items or max(1, math.ceil(cfg.prepare.hours * 3600 / cfg.clip_seconds))


def prepare(cfg: PrestoConfig, out: str, *, progress: bool = True) -> dict[str, Manifest]:
    """Build the shard sets under ``out`` (local path, file:// or s3://); returns split -> manifest."""
    if cfg.codec.name != "mel":
        log.info("codec %s: latents come from the configured pretrained codec", cfg.codec.name)
    find_fluidsynth()
    soundfont = find_soundfont(cfg.prepare.soundfont)
    from presto_ray.models.codec import load_codec
    from presto_ray.models.text import load_text_encoder

    codec, text = load_codec(cfg.codec), load_text_encoder(cfg.text)
    if text.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder '{cfg.text.name}' gives {text.dim}-d states but model.text_dim={cfg.model.text_dim}")
    if codec.frames_for(round(cfg.clip_seconds * codec.sample_rate)) < cfg.model.latent_frames:
        raise ValueError("the codec gives fewer frames per clip than model.latent_frames")

    specs = plan_items(num_items(cfg), cfg.prepare.split_fractions, cfg.prepare.seed,
                       sample_rate=cfg.codec.sample_rate, seconds=cfg.clip_seconds, soundfont=soundfont,
                       split_seed=cfg.prepare.split_seed, max_repeats=cfg.prepare.max_repeats)
    writers = {
        split: ShardWriter(storage.join(out, split), rows_per_shard=cfg.prepare.rows_per_shard,
                           latent_shape=(cfg.model.latent_channels, cfg.model.latent_frames),
                           text_shape=(cfg.text.max_tokens, text.dim), codec_identity=codec.identity(),
                           text_identity=text.identity(), metadata_columns=METADATA_COLUMNS)
        for split in SPLITS if any(s.split == split for s in specs)
    }
    done = set().union(*(w.completed_ids for w in writers.values()))
    todo = [s for s in specs if s.item_id not in done]
    log.info("prepare: %d items planned (%.2f h of %.2f s clips), %d already written, %d to render",
             len(specs), len(specs) * cfg.clip_seconds / 3600, cfg.clip_seconds, len(specs) - len(todo), len(todo))
    skipped: Counter = Counter()
    if todo:
        ds = ray.data.from_items([s.to_row() for s in todo], override_num_blocks=min(len(todo), 64))
        ds = ds.map(_render)
        ds = ds.map_batches(Encoder, fn_constructor_kwargs={"cfg_dict": cfg.model_dump(mode="json")},
                            batch_size=cfg.prepare.encode_batch, concurrency=1, batch_format="numpy")
        bar = tqdm(total=len(todo), desc="prepare", unit="clip", disable=not progress)
        for batch in ds.iter_batches(batch_size=cfg.prepare.encode_batch, batch_format="numpy"):
            for i in range(len(batch["id"])):
                reason = str(batch["skip_reason"][i])
                if reason:
                    skipped[reason.split(":")[0]] += 1
                else:
                    writers[str(batch["split"][i])].add({k: batch[k][i] for k in batch if k != "skip_reason"})
                bar.update(1)
            bar.set_postfix(skipped=sum(skipped.values()))
        bar.close()
    manifests = {}
    for split, writer in writers.items():
        writer.flush()
        if not writer.completed_ids:
            writer.close(finalize=False)
            log.warning("prepare: split '%s' got no usable clip; no shard set written for it", split)
            continue
        extra = {"source": "music21", "split": split, "seed": cfg.prepare.seed, "split_seed": cfg.prepare.split_seed,
                 "split_fractions": list(cfg.prepare.split_fractions), "skipped": dict(skipped),
                 "planned_items": sum(s.split == split for s in specs), "soundfont": soundfont.rsplit("/", 1)[-1],
                 "rendered_this_run": sum(s.split == split for s in todo)}
        manifests[split] = writer.close(extra=extra)
        log.info("prepare: %s: %d rows in %d files at %s", split, manifests[split].num_rows,
                 len(manifests[split].files), storage.join(out, split))
    if skipped:
        log.info("prepare: skipped %d items: %s", sum(skipped.values()), dict(skipped))
    return manifests
