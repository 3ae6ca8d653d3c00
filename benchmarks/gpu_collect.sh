#!/usr/bin/env bash
# On the GPU machine, after gpu_session.sh: copy each run's report, tables and samples to $OUT (8 files at most).
set -euo pipefail
out=${OUT:?OUT is the folder the device tool brings back}
cp /tmp/gpu-truth.log "$out/gpu-truth.log" 2>/dev/null || true
if [ -d /tmp/gpu-checks ]; then tar -C /tmp -czf "$out/gpu-checks.tgz" gpu-checks; fi
for run in /tmp/gpu-outputs/*/; do
  [ -d "$run" ] || continue
  name=$(basename "$run")
  tar -C /tmp/gpu-outputs -czf "$out/$name.tgz" --exclude='*.ipynb' "$name"
  cp "$run/report.html" "$out/$name-report.html" 2>/dev/null || true
done
ls -la "$out"
