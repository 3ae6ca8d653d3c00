#!/usr/bin/env bash
# On the GPU machine, after gpu_session.sh: copy each run's report, tables and samples to $OUT (8 files at most).
# Each run comes back as <run>.tgz (everything but the notebooks' .ipynb and requests.jsonl) and
# <run>-requests.jsonl.gz. A compiled engine at high concurrency writes tens of MB of requests (every chunk's
# arrival time): where the gzip passes 15 MiB (a returned file holds 16 MiB at most), the chunk times are dropped
# from it (`-requests-lite.jsonl.gz`); summary.csv, made on the machine, already holds the figures they give.
set -euo pipefail
out=${OUT:?OUT is the folder the device tool brings back}
cp /tmp/gpu-truth.log "$out/gpu-truth.log" 2>/dev/null || true
if [ -d /tmp/gpu-checks ]; then tar -C /tmp -czf "$out/gpu-checks.tgz" gpu-checks; fi
for run in /tmp/gpu-outputs/*/; do
  [ -d "$run" ] || continue
  name=$(basename "$run")
  tar -C /tmp/gpu-outputs -czf "$out/$name.tgz" --exclude='*.ipynb' --exclude=requests.jsonl "$name"
  [ -e "$run/requests.jsonl" ] || continue
  gzip -c "$run/requests.jsonl" > "$out/$name-requests.jsonl.gz"
  if [ "$(stat -c %s "$out/$name-requests.jsonl.gz")" -gt 15728640 ]; then
    rm "$out/$name-requests.jsonl.gz"
    python3 -c 'import json, sys
for line in sys.stdin:
    row = json.loads(line); row.pop("chunk_ns", None); print(json.dumps(row))' < "$run/requests.jsonl" | gzip > "$out/$name-requests-lite.jsonl.gz"
  fi
done
ls -la "$out"
