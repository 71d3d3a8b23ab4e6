r"""Run a Ray Tune sweep (``presto-ray sweep``) as a Ray job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/sweep.py layer-drop --checkpoint s3://BUCKET/runs/presto-l-small \
        --data s3://BUCKET/data/valid --space tuning/layer_drop.yaml --out s3://BUCKET/sweeps/layer-drop

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/sweep.py loss-weights --config small --teacher s3://BUCKET/runs/teacher-small \
        --space tuning/loss_weights.yaml --storage-path s3://BUCKET/sweeps --name presto-s-weights

Every argument goes to ``presto-ray sweep`` unchanged (the sweep, its config, the search space in
tuning/ and where results go; tuning/README.md lists each sweep's options). The Tune driver runs on
the cluster the job was submitted to (Ray sets RAY_ADDRESS for it). Give outputs as absolute paths
every node sees or ``s3://`` URIs: a relative path lands in the job's temporary copy of the working
directory. Resubmitting the same command resumes the sweep.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
