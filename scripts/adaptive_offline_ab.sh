#!/usr/bin/env bash
# An adaptive batch against pinned ones, offline, this checkout against another, interleaved:
# scripts/infer_latency.py of each checkout (batch 32, the first 960 Fashion-MNIST test images
# under its budget mix, one torch thread), every backend the checkout knows, pinned to 1 and 3
# bits. Prints one line per cell: round, checkout, backend, then adaptive and pinned ms.
#
#   git worktree add /tmp/before <commit>
#   scripts/adaptive_offline_ab.sh /tmp/before [rounds]
set -euo pipefail
before=${1:?usage: scripts/adaptive_offline_ab.sh <other checkout> [rounds]}
rounds=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
model="$here/model_store/fmnist-abn"
(cd "$before" && "$py" -m abn.bitserial >/dev/null)  # its kernel, built from its source
for round in $(seq "$rounds"); do
  for tree in "$before" "$here"; do
    for backend in float bitserial mixed; do
      grep -q '"mixed"' "$tree/service/settings.py" || [ "$backend" != mixed ] || continue
      for bits in 1 3; do
        ms=$(cd "$tree" && PYTHONPATH="$tree" "$py" scripts/infer_latency.py --model "$model" \
          --batches 32 --pinned-bits "$bits" --repeats 3 --images 960 --test-images \
          --backend "$backend" 2>/dev/null | "$py" -c \
          'import json, sys; print(" ".join("%.2f" % v["median_ms"] for v in json.load(sys.stdin).values()))')
        echo "$round $tree $backend adaptive / pinned $bits-bit ms: $ms"
      done
    done
  done
done
