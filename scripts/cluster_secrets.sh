#!/usr/bin/env bash
# Run once on your own machine before `ray up cluster.yaml`. Writes ~/.nasfe/secrets/ (mode 700),
# which cluster.yaml's file_mounts copy to every node, where scripts/node_env.sh turns it into W&B's
# own login (~/.netrc). The key is taken from WANDB_API_KEY, else from your ~/.netrc; without one the
# folder stays empty and runs log to W&B offline (their folders land in the run's storage).
# The key never goes into Ray's runtime_env, so Ray's logs never hold it.
set -euo pipefail
dir=~/.nasfe/secrets
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
umask 077
if [ -n "$key" ]; then
  printf 'machine %s\n  login user\n  password %s\n' "$host" "$key" > "$out"
  echo "[nasfe] W&B login for the cluster nodes written to $out"
else
  : > "$out"
  echo "[nasfe] no W&B key found (WANDB_API_KEY or ~/.netrc): nodes will log offline"
fi
