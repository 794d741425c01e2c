#!/usr/bin/env bash
# The project's checks, in the order a contributor fixes them: lint, format, types, tests.
#   bash scripts/check.sh          lint, format, types and the default test suite (under 15 min on 2 cores)
#   bash scripts/check.sh --fast   the same with the fast tier only (pytest -m "not slow")
#   bash scripts/check.sh --drills only the drills: minutes of a real cluster on this machine (raylets,
#                                  workers and drivers killed, several raylets, interrupt and resume
#                                  on S3, the fake autoscaler)
# Extra arguments go to pytest, e.g. `bash scripts/check.sh --fast -k genotype`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
tier=()
case "${1:-}" in
  --fast) tier=(-m "not slow"); shift ;;
  --drills)
    shift
    echo "[check] pytest --drills -m drill" && exec "$PY" -m pytest -q --drills -m drill "$@"
    ;;
esac
echo "[check] ruff check" && "$PY" -m ruff check .
echo "[check] ruff format --check" && "$PY" -m ruff format --check .
echo "[check] mypy (core rooms)" && "$PY" -m mypy
echo "[check] pytest ${tier[*]:-}" && "$PY" -m pytest -q "${tier[@]}" "$@"
