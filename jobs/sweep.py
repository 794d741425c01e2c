#!/usr/bin/env python
"""NASFE sweep job: ``python jobs/sweep.py --sweep tiny`` locally, ``ray submit cluster.yaml jobs/sweep.py -- ...``.

The same as ``nasfe sweep``: Ray Tune over a sweep space (Optuna TPE, ASHA), each trial a Ray
Train search or retrain run. Running it again with the same --name resumes an interrupted sweep.
"""

import sys
from pathlib import Path

try:
    import nasfe  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasfe.cli import run_job

if __name__ == "__main__":
    run_job("sweep")
