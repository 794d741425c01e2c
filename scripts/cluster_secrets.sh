#!/usr/bin/env bash
# Run on your own machine before `ray up cluster.yaml` (optional). Writes secrets/wandb.netrc in
# this checkout (mode 600; secrets/ is part of every checkout, and its own .gitignore keeps the file
# out of git, of `ray job submit --working-dir` uploads and of the repository's file mounts), which
# cluster.yaml copies to every node's ~/.nasfe/secrets, where scripts/node_env.sh turns it into W&B's
# own login (~/.netrc). The key is taken from WANDB_API_KEY, else from your ~/.netrc. Without a key
# nothing is changed: a login written earlier stays, and without one the nodes log to W&B offline
# (their folders land in the run's storage). `rm secrets/wandb.netrc` removes the login.
# The key never goes into Ray's runtime_env, so Ray's logs never hold it.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
out="$dir/wandb.netrc"
host=${WANDB_BASE_URL:-https://api.wandb.ai}
host=${host#*://}
host=${host%%/*}
key=${WANDB_API_KEY:-}
if [ -z "$key" ] && [ -f ~/.netrc ]; then
  key=$(awk -v h="$host" '$1=="machine" && $2==h {for (i=3;i<NF;i++) if ($i=="password") print $(i+1)}' ~/.netrc | head -n1)
fi
if [ -z "$key" ]; then
  if [ -s "$out" ]; then
    echo "[nasfe] no W&B key found (WANDB_API_KEY or ~/.netrc): $out is kept as it was"
  else
    echo "[nasfe] no W&B key found (WANDB_API_KEY or ~/.netrc): nodes will log offline"
  fi
  exit 0
fi
umask 077
printf 'machine %s\n  login user\n  password %s\n' "$host" "$key" > "$out.tmp"
mv "$out.tmp" "$out"
echo "[nasfe] W&B login for the cluster nodes written to $out"
