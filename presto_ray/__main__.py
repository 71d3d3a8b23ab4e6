import sys

from presto_ray.cli import main

sys.exit(main())
