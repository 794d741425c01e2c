#!/usr/bin/env bash
# Sets up nasfe in ./.venv: torch first (the CPU wheel unless one is already there), then nasfe
# and its dependencies at the versions of constraints.txt. Safe to run again: it only installs what
# is missing or changed.
#
# GPU machines: one variable picks the CUDA build, NASFE_TORCH=<version>+<cuda tag>; the tag names
# the index too (https://download.pytorch.org/whl/<cuda tag>), so the pair cannot disagree:
#   NASFE_TORCH=2.8.0+cu128 bash scripts/setup.sh       (what cluster.yaml uses)
# A .venv whose torch is not that build gets it replaced.
#
# NASFE_BASE_PYTHON=/opt/pytorch/bin/python (cluster.yaml; the Deep Learning AMI's PyTorch
# environment): when that Python's torch is the requested build, .venv is made from it and sees its
# packages (one .pth line), so no torch is downloaded; otherwise it is ignored.
# NASFE_EXTRAS: the extras of nasfe to install (default dev: pytest, moto ...; cluster nodes set it
# empty). constraints.txt (every package but torch, pinned; scripts/lock.sh rewrites it) holds every
# machine to the same versions.
#
# `bash scripts/setup.sh --torch-command` prints the torch install command it would run, and changes
# nothing; `--torch-only` stops once .venv has torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${NASFE_TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=https://download.pytorch.org/whl
EXTRAS=${NASFE_EXTRAS-dev}
CONSTRAINTS=constraints.txt

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

torch_of() {  # the torch version an interpreter imports, or nothing
  "$1" -c "import torch; print(torch.__version__)" 2>/dev/null || true
}

if [ "${1:-}" = "--torch-command" ]; then
  torch_command
  exit
fi
cmd=$(torch_command)
base=""
if [ -n "${NASFE_BASE_PYTHON:-}" ] && [ -x "$NASFE_BASE_PYTHON" ] && [ -n "${NASFE_TORCH:-}" ] \
   && [ "$(torch_of "$NASFE_BASE_PYTHON")" = "$NASFE_TORCH" ]; then
  base=$NASFE_BASE_PYTHON
  PYTHON=$base
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ -n "$base" ]; then
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$base" -c "import site, sys; print('\n'.join(p for p in site.getsitepackages() if p.startswith(sys.prefix)))" \
    > "$site/_nasfe_base_python.pth"
  echo "[setup] torch $NASFE_TORCH from $base (its environment lends its packages to .venv)"
fi
have=$(torch_of .venv/bin/python)
if [ -z "$have" ] || { [ -n "${NASFE_TORCH:-}" ] && [ "$have" != "$NASFE_TORCH" ]; }; then
  echo "[setup] $cmd"
  # shellcheck disable=SC2086  # the command is words on purpose
  .venv/bin/python -m $cmd --quiet
fi
if [ "${1:-}" = "--torch-only" ]; then
  exit
fi
target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
echo "[setup] installing nasfe${EXTRAS:+ [$EXTRAS]} and its dependencies ($CONSTRAINTS)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" -e "$target"
.venv/bin/python -c "import torch, ray, nasfe; print(f'[setup] ready: nasfe {nasfe.__version__}, torch {torch.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}')"
