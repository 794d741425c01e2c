#!/usr/bin/env bash
# Sets up nasfe in ./.venv: torch first (the CPU wheel unless one is already there), then nasfe
# and its dependencies. Safe to run again: it only installs what is missing or changed.
#
# GPU machines: one variable picks the CUDA build, NASFE_TORCH=<version>+<cuda tag>; the tag names
# the index too (https://download.pytorch.org/whl/<cuda tag>), so the pair cannot disagree:
#   NASFE_TORCH=2.8.0+cu128 bash scripts/setup.sh       (what cluster.yaml uses)
# A .venv whose torch is not that build gets it replaced. `bash scripts/setup.sh --torch-command`
# prints the torch install command it would run, and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${NASFE_TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=https://download.pytorch.org/whl

torch_command() {
  if [ -n "${NASFE_TORCH:-}" ]; then
    case "$NASFE_TORCH" in
      *+cu*) echo "pip install torch==$NASFE_TORCH --index-url $TORCH_INDEX/${NASFE_TORCH#*+}" ;;
      *) echo "NASFE_TORCH=$NASFE_TORCH: expected <version>+<cuda tag>, e.g. 2.8.0+cu128" >&2; return 2 ;;
    esac
  else
    echo "pip install $TORCH_SPEC"
  fi
}

if [ "${1:-}" = "--torch-command" ]; then
  torch_command
  exit
fi
cmd=$(torch_command)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
have=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null || true)
if [ -z "$have" ] || { [ -n "${NASFE_TORCH:-}" ] && [ "$have" != "$NASFE_TORCH" ]; }; then
  echo "[setup] $cmd"
  # shellcheck disable=SC2086  # the command is words on purpose
  .venv/bin/python -m $cmd --quiet
fi
echo "[setup] installing nasfe and its dependencies"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/python -c "import torch, ray, nasfe; print(f'[setup] ready: nasfe {nasfe.__version__}, torch {torch.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}')"
