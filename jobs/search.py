#!/usr/bin/env python
"""NASFE search job: ``python jobs/search.py`` locally, ``ray submit cluster.yaml jobs/search.py -- ...``.

The same as ``nasfe search``: search on Ray Train, derive, retrain, evaluate. With no arguments it
runs the built-in default (tiny space, synthetic faces, 2 workers) end to end.
"""

import sys
from pathlib import Path

try:
    import nasfe  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasfe.cli import run_job

if __name__ == "__main__":
    run_job("search")
