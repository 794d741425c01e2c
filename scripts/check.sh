#!/usr/bin/env bash
# The project's checks, in the order a contributor fixes them: lint, format, types, tests.
#   bash scripts/check.sh          everything (what CI runs, after scripts/setup.sh)
#   bash scripts/check.sh --fast   lint, format, types and the fast test tier (pytest -m "not slow")
# Extra arguments go to pytest, e.g. `bash scripts/check.sh --fast -k genotype`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
tier=()
if [ "${1:-}" = "--fast" ]; then
  tier=(-m "not slow")
  shift
fi
echo "[check] ruff check" && "$PY" -m ruff check .
echo "[check] ruff format --check" && "$PY" -m ruff format --check .
echo "[check] mypy (core rooms)" && "$PY" -m mypy
echo "[check] pytest ${tier[*]:-}" && "$PY" -m pytest -q "${tier[@]}" "$@"
