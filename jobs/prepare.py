r"""Render the corpus and write latent shards (``presto-ray prepare``) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/prepare.py --config small --out s3://BUCKET/data --hours 20

Takes the CLI's arguments: ``--config`` (file or preset), ``--out`` (splits go to
``<out>/{train,valid,test}``), ``--hours`` / ``--items`` and dotted overrides. The Ray Data
pipeline runs on the cluster the job was submitted to (Ray sets RAY_ADDRESS for the driver).
Resubmitting the same command keeps the shard files already finished and renders only the missing
items. Give ``--out`` as an ``s3://`` URI or an absolute path every node sees.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
