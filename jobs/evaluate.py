r"""Generate for held-out prompts and score them (``presto-ray evaluate``) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/evaluate.py --checkpoint s3://BUCKET/runs/presto-s-paper \
        --data s3://BUCKET/data/valid --out /shared/eval/presto-s-paper -n 512 \
        --num-workers 4 --gpus-per-worker 1

Takes the CLI's arguments: ``--checkpoint`` (export, step or run folder), ``--data``, ``--out``
(metrics.json and audio/), ``-n``, ``--steps``, ``--num-workers`` / ``--gpus-per-worker`` (generate
on Ray actors of the cluster the job was submitted to; Ray sets RAY_ADDRESS for the driver) and the
metric settings. ``--out`` is a folder on the node that runs the driver (the head): give an
absolute path, as a relative one is taken inside the job's temporary copy of the working directory.
Resubmitting the same command writes the same ``--out`` again.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
