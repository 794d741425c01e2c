#!/usr/bin/env python
"""NASFE rank job: ``python jobs/rank.py`` locally, ``ray submit cluster.yaml jobs/rank.py -- ...``.

The same as ``nasfe rank``: random, searched and hand-made genotypes of a space retrained as Ray
Tune trials (each a Ray Train run), scored on the test sets and by the supernets. Running it
again with the same --name resumes an interrupted study.
"""

import sys
from pathlib import Path

try:
    import nasfe  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasfe.cli import run_job

if __name__ == "__main__":
    run_job("rank")
