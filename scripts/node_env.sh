#!/usr/bin/env bash
# Run by cluster.yaml's setup_commands on every node, at every `ray up`; safe to run again.
#  - ~/.nasfe/env puts ~/nasfe/.venv/bin first on PATH; ~/.bashrc sources it (one line, added once)
#  - W&B's own login: ~/.nasfe/secrets/wandb.netrc (from scripts/cluster_secrets.sh on your machine)
#    becomes this node's ~/.netrc entry for W&B, mode 600. No key goes through Ray.
set -euo pipefail
mkdir -p ~/.nasfe
cat > ~/.nasfe/env <<'ENV'
export PATH="$HOME/nasfe/.venv/bin:$PATH"
ENV
line='[ -f ~/.nasfe/env ] && . ~/.nasfe/env  # nasfe'
touch ~/.bashrc
grep -qxF "$line" ~/.bashrc || printf '%s\n' "$line" >> ~/.bashrc
secrets=~/.nasfe/secrets/wandb.netrc
if [ -s "$secrets" ]; then
  umask 077
  touch ~/.netrc
  # drop an earlier W&B entry, keep any other machine's
  awk '$1 == "machine" { skip = ($2 ~ /wandb/) } !skip' ~/.netrc > ~/.netrc.nasfe
  cat "$secrets" >> ~/.netrc.nasfe
  mv ~/.netrc.nasfe ~/.netrc
  chmod 600 ~/.netrc
  echo "[nasfe] W&B login installed in ~/.netrc"
else
  echo "[nasfe] no W&B login in ~/.nasfe/secrets (W&B runs offline; 'nasfe wandb-sync' uploads later)"
fi
