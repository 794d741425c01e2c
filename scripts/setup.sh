#!/usr/bin/env bash
# Sets up nasfe in ./.venv: torch first (the CPU wheel unless one is already there), then nasfe
# and its dependencies. Safe to run again: it only installs what is missing or changed.
#
# GPU machines: install the CUDA build of torch into .venv first, e.g.
#   python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124
# then run this script; it keeps the torch it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${NASFE_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC"
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
echo "[setup] installing nasfe and its dependencies"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, ray, nasfe; print(f'[setup] ready: nasfe {nasfe.__version__}, torch {torch.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}')"
