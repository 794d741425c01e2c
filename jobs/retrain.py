#!/usr/bin/env python
"""NASFE retrain job: ``python jobs/retrain.py --genotype ...``, ``ray submit cluster.yaml jobs/retrain.py -- ...``.

The same as ``nasfe retrain``: retrain a derived genotype on Ray Train, then evaluate it on the
held-out test identities.
"""

import sys
from pathlib import Path

try:
    import nasfe  # noqa: F401
except ImportError:  # run from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasfe.cli import run_job

if __name__ == "__main__":
    run_job("retrain")
