#!/usr/bin/env bash
# Rebuilds docs/BENCHMARKS.md from the per-room result sections in docs/bench_parts/.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat <<'HEAD'
# Benchmarks

Speed and memory targets are measured by the scripts in `benchmarks/`, never by timed tests.
Each section gives the exact command that produced its numbers, the machine, and medians and
ratios from one run. The development machine is a 2-core x86_64 VM shared with other jobs: each
section states the load it ran under. GPU columns are empty where no GPU was lent to the session
that ran them (see each section).

To refresh a section, run its command and paste the output into `docs/bench_parts/<room>.md`,
then `bash scripts/assemble_benchmarks.sh`.

HEAD
  for part in gpu degrade model ray; do
    [ -f "docs/bench_parts/$part.md" ] && { cat "docs/bench_parts/$part.md"; echo; }
  done
} > docs/BENCHMARKS.md
echo "docs/BENCHMARKS.md rebuilt"
