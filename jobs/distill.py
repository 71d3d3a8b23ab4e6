r"""Distil a teacher into a student (``presto-ray distill``) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/distill.py --config paper --method presto-s \
        --teacher s3://BUCKET/runs/teacher-paper --run-name presto-s-paper \
        --storage-path s3://BUCKET/runs train.num_workers=8 train.use_gpu=true

Takes the CLI's arguments: ``--config`` (file or preset), ``--method``, ``--teacher``, ``--init``
(presto-ls), ``--run-name``, ``--storage-path`` and dotted overrides. The driver joins the cluster
the job was submitted to (Ray sets RAY_ADDRESS for it). Resubmitting the same command resumes the
run from its newest checkpoint in ``<storage-path>/<run-name>``; a finished run trains no more.
Give ``--storage-path`` and ``--teacher`` as absolute paths every node sees or ``s3://`` URIs: a
relative path is taken inside the job's temporary copy of the working directory.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
