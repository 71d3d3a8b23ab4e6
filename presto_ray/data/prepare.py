"""``prepare``: source -> render -> crop -> codec encode -> text encode -> Parquet latent shards.

A Ray Data pipeline of three stages: rendering as parallel tasks (music21 parsing and FluidSynth,
or decoding the user's audio), encoding in an actor pool (1 to ``prepare.encode_actors`` actors,
``prepare.encode_gpus`` GPUs each) that loads the codec and the text encoder once per actor, and
writing in Ray Data write tasks (:class:`presto_ray.data.sink.ShardSink`) that write the shards of
each split (``<out>/train``, ``<out>/valid``, ``<out>/test``) themselves; the driver only plans,
then writes each split's manifest (statistics over the data) from the finished shards. Items
already written by an earlier, interrupted run are not rendered again; pieces that cannot be used
are counted by reason in the manifest's ``extra``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import time
from typing import Callable, Iterator

import numpy as np
import ray
import ray.data
import torch

from presto_ray.config import PrestoConfig
from presto_ray.data import storage
from presto_ray.data.audio_source import plan_audio_items, render_audio_row
from presto_ray.data.music21 import SPLITS, RenderSpec, find_fluidsynth, find_soundfont, plan_items, render_item
from presto_ray.data.records import skipped_record
from presto_ray.data.shards import Manifest, open_folder, write_manifest, writer_identity
from presto_ray.data.sink import ShardSink

log = logging.getLogger("presto_ray.prepare")

METADATA_COLUMNS = ("split", "piece_id", "instruments", "source_metadata")
RENDER_TASKS_PER_WORKER = 100  # render tasks (blocks of plan rows) one worker process runs before it is replaced


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
    """Build the shard sets under ``out`` (local path, file:// or s3://); returns split -> manifest.
    An unreachable ``out`` (a missing bucket) is refused before any model is loaded."""
    from presto_ray.models.codec import load_codec
    from presto_ray.models.text import load_text_encoder

    storage.check_reachable(out, "prepare output (--out)")
    codec, text = load_codec(cfg.codec), load_text_encoder(cfg.text)
    if text.dim != cfg.model.text_dim:
        raise ValueError(f"text encoder '{cfg.text.name}' gives {text.dim}-d states but model.text_dim={cfg.model.text_dim}")
    if codec.frames_for(round(cfg.clip_seconds * codec.sample_rate)) < cfg.model.latent_frames:
        raise ValueError("the codec gives fewer frames per clip than model.latent_frames")

    rows, load_row, facts = plan(cfg)
    writer_args = dict(rows_per_shard=cfg.prepare.rows_per_shard,
                       latent_shape=(cfg.model.latent_channels, cfg.model.latent_frames),
                       text_shape=(cfg.text.max_tokens, text.dim), codec_identity=codec.identity(),
                       text_identity=text.identity(), metadata_columns=METADATA_COLUMNS)
    identity = writer_identity(**{k: v for k, v in writer_args.items() if k != "rows_per_shard"})
    splits = [split for split in SPLITS if any(r["split"] == split for r in rows)]
    todo, kept = [], {}
    for split in splits:
        uri = storage.join(out, split)
        done = {rid for info in open_folder(uri, identity).values() for rid in info["ids"]}
        kept[split] = len(done)
        planned = {r["id"] for r in rows if r["split"] == split}
        stray = done - planned
        if stray:
            raise ValueError(f"{uri} holds {len(stray)} items this plan does not have "
                             f"(e.g. {sorted(stray)[0]}): it was written with other prepare settings "
                             "(seed, split_seed, split_fractions, hours, source); use a new --out")
        todo += [r for r in rows if r["split"] == split and r["id"] not in done]
    log.info("prepare: %d %s items planned (%.2f h of %.2f s clips), %d already written, %d to do", len(rows),
             facts["source"], len(rows) * cfg.clip_seconds / 3600, cfg.clip_seconds, len(rows) - len(todo), len(todo))
    sink = ShardSink(out, run_tag=run_tag(), writer_args=writer_args)
    if todo:
        with data_context(progress):
            pipeline(cfg, todo, load_row).write_datasink(sink)
    manifests = {}
    for split in splits:
        uri = storage.join(out, split)
        if not kept[split] and not sink.written.get(split):  # no finished shard from this run or an earlier one
            log.warning("prepare: split '%s' got no usable clip; no shard set written for it", split)
            continue
        extra = {**facts, "split": split, "seed": cfg.prepare.seed, "split_seed": cfg.prepare.split_seed,
                 "split_fractions": list(cfg.prepare.split_fractions),
                 "skipped_this_run": dict(sink.skipped.get(split, {})),
                 "planned_items": sum(r["split"] == split for r in rows),
                 "rendered_this_run": sum(r["split"] == split for r in todo)}
        manifests[split] = write_manifest(uri, identity=identity, extra=extra)
        log.info("prepare: %s: %d rows in %d files at %s (%d written this run)", split, manifests[split].num_rows,
                 len(manifests[split].files), uri, sink.written.get(split, 0))
    for split, counts in sink.skipped.items():
        if counts:
            log.info("prepare: %s: skipped %d items: %s", split, sum(counts.values()), dict(counts))
    if "train" not in manifests:
        raise ValueError(f"prepare: no usable training clip was produced under {out}; see the skip reasons above")
    return manifests


def pipeline(cfg: PrestoConfig, todo: list[dict], load_row: Callable[[dict], dict]) -> ray.data.Dataset:
    """The Ray Data pipeline before the write stage: plan rows -> ``load_row`` tasks (render or
    decode; ``prepare.render_cpus`` CPUs each) -> the :class:`Encoder` actor pool.

    Ray Data fuses a task map into a following actor map when their remote arguments agree, which
    put every render inside the encoder actors, one at a time. The render tasks carry a task-only
    option, ``max_calls`` (a render worker process is replaced after that many tasks, which bounds
    what music21's in-process caches hold), so the two stages never agree and rendering runs in
    parallel tasks."""
    p = cfg.prepare
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 64))
    ds = ds.map(load_row, num_cpus=p.render_cpus, max_calls=RENDER_TASKS_PER_WORKER)
    return ds.map_batches(Encoder, fn_constructor_kwargs={"cfg_dict": cfg.model_dump(mode="json")},
                          batch_size=p.encode_batch, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=p.encode_actors),
                          num_cpus=p.encode_cpus, num_gpus=p.encode_gpus, batch_format="numpy")


def run_tag() -> str:
    """A name part unique to this run (time plus randomness), so that its shard files never reuse
    the name of a file an earlier run wrote."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}{secrets.token_hex(2)}"


@contextlib.contextmanager
def data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings for the prepare pipeline, restored afterwards: progress bars (rows through
    each stage: render, encode, write) when ``progress``, and no per-operator resource reservation.
    With reservation on, Ray Data holds back part of a small cluster for every operator, so on 2
    CPUs one render task ran at a time (128 tiny clips: 50 s with it, 32 s without;
    docs/benchmarks.md)."""
    ctx = ray.data.DataContext.get_current()
    before = (ctx.enable_progress_bars, ctx.enable_operator_progress_bars, ctx.op_resource_reservation_enabled)
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = bool(progress)
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars, ctx.op_resource_reservation_enabled = before
