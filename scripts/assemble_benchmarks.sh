#!/usr/bin/env bash
# Rebuilds docs/BENCHMARKS.md from every section in docs/bench_parts/, in the order of PARTS.
#
#   bash scripts/assemble_benchmarks.sh [OUT]      # OUT defaults to docs/BENCHMARKS.md
#
# Every docs/bench_parts/*.md must be named in PARTS and every name in PARTS must exist: a part
# that is added but not listed, or listed but gone, stops the script (exit 1) instead of
# silently leaving a section out. A part that starts with a level-1 heading (as
# `benchmarks/fidelity.py --out` writes it) gets every heading one level deeper, so the
# document keeps one title. tests/test_docs.py checks the committed file is this script's output.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/docs/BENCHMARKS.md}"
PARTS_DIR="$ROOT/docs/bench_parts"

# The order of the sections in BENCHMARKS.md.
PARTS=(gpu speed degrade fidelity model ray rehearsal tests studies)

fail() { echo "assemble_benchmarks: $*" >&2; exit 1; }

for file in "$PARTS_DIR"/*.md; do
  name="$(basename "$file" .md)"
  listed=no
  for part in "${PARTS[@]}"; do [ "$part" = "$name" ] && listed=yes; done
  [ "$listed" = yes ] || fail "docs/bench_parts/$name.md is not in PARTS of scripts/assemble_benchmarks.sh; add it where its section belongs"
done
for part in "${PARTS[@]}"; do
  [ -f "$PARTS_DIR/$part.md" ] || fail "PARTS names '$part' but docs/bench_parts/$part.md does not exist"
done

emit_part() {  # $1: a part file; headings outside code fences one level deeper when it starts with '# '
  if head -n 1 "$1" | grep -q '^# '; then
    awk '/^```/ { fence = !fence } !fence && /^#/ { print "#" $0; next } { print }' "$1"
  else
    cat "$1"
  fi
}

tmp="$(mktemp "$(dirname "$OUT")/.BENCHMARKS.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
{
  cat <<'HEAD'
# Benchmarks

Speed and memory targets are measured by the scripts in `benchmarks/`, never by timed tests.
Each section gives the exact command that produced its numbers, the machine, and medians and
ratios from one run. The development machine is a 2-core x86_64 VM shared with other jobs: each
section states the load it ran under. GPU columns are empty where a benchmark has not run on a
GPU (each section says so).

This file is generated: to refresh a section, run its command and paste the output into
`docs/bench_parts/<part>.md`, then `bash scripts/assemble_benchmarks.sh`. A new part goes into the
script's `PARTS` list, which sets the order; the script refuses a part it does not list.

HEAD
  for part in "${PARTS[@]}"; do
    emit_part "$PARTS_DIR/$part.md"
    echo
  done
} > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$OUT"
trap - EXIT
echo "$OUT rebuilt from ${#PARTS[@]} parts"
