r"""Train the EDM teacher (``presto-ray train-teacher``) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_teacher.py --config paper --run-name teacher-paper \
        --storage-path s3://BUCKET/runs data.source=shards data.uri=s3://BUCKET/data/train \
        train.num_workers=8 train.use_gpu=true

Takes the CLI's arguments: ``--config`` (file or preset), ``--run-name``, ``--storage-path`` and
dotted overrides. The driver joins the cluster the job was submitted to (Ray sets RAY_ADDRESS for
it). Resubmitting the same command resumes from the newest checkpoint in
``<storage-path>/<run-name>``. Give ``--storage-path`` as an absolute path every node sees, or an
``s3://`` URI: a relative one would land in the job's temporary copy of the working directory.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
