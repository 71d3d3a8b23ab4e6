"""The worker side of the training data: epoch after epoch of full batches from this worker's
Ray Train dataset shard, resuming mid-epoch after a restore (the batches already trained on in
the interrupted epoch are skipped, since Ray Data cannot checkpoint an iterator)."""

from __future__ import annotations

from typing import Iterator

from presto_ray.config import PrestoConfig
from presto_ray.train.checkpoint import TrainState


def epoch_batches(shard, cfg: PrestoConfig, state: TrainState, rank: int, device) -> Iterator[dict]:
    """Yield batches (column -> tensor on ``device``) forever; keeps ``state.epoch`` and
    ``state.batch_in_epoch`` current. The local shuffle is seeded by (train.seed, epoch, rank)."""
    while True:
        batches = shard.iter_torch_batches(
            batch_size=cfg.train.batch_size, drop_last=True, device=device,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=cfg.train.seed + 7919 * state.epoch + rank,
        )
        seen = 0
        for batch in batches:
            seen += 1
            if seen <= state.batch_in_epoch:  # resumed mid-epoch: skip what was trained on
                continue
            state.batch_in_epoch = seen
            yield batch
        if seen == 0:
            raise RuntimeError(f"rank {rank}: an epoch yielded no batch of {cfg.train.batch_size} rows; "
                               "the dataset is smaller than train.batch_size x train.num_workers")
        state.epoch += 1
        state.batch_in_epoch = 0
