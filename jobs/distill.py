"""`ray job submit --working-dir . -- python jobs/distill.py --config paper --method presto-s --teacher s3://...`

Thin entry point: connects to the cluster it was submitted to (RAY_ADDRESS) and runs
``presto-ray distill``; resubmitting with the same run name and storage path resumes.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
