"""`ray job submit --working-dir . -- python jobs/train_teacher.py --config tiny --run-name NAME`

Thin entry point: connects to the cluster it was submitted to (RAY_ADDRESS) and trains the teacher;
resubmitting with the same run name and storage path resumes.
"""

import sys

from presto_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-teacher", *sys.argv[1:]]))
