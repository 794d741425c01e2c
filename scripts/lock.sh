#!/usr/bin/env bash
# Rewrites constraints.txt from .venv (after `bash scripts/setup.sh`): every installed package but
# torch (CPU here, CUDA on the nodes: NASFE_TORCH picks it) and nasfe itself, pinned exactly. Every
# setup (this machine, CI, each cluster node) installs these versions, so a node that joins later
# runs what the head runs.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions for every machine (scripts/setup.sh installs with -c constraints.txt)."
  echo "# Rewritten by scripts/lock.sh from a working .venv; torch is left out (NASFE_TORCH picks it)."
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v -i -E '^(torch|nasfe)==' | grep -v '^-e ' | LC_ALL=C sort -f
} > constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins"
