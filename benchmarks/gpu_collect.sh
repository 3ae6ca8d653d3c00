#!/usr/bin/env bash
# On the GPU machine, after gpu_session.sh: copy each run's report, tables and samples to $OUT (8 files at most).
# Each run comes back as gpu_pack_run.sh packs it: <run>.tgz and its requests.
set -euo pipefail
out=${OUT:?OUT is the folder the device tool brings back}
cp /tmp/gpu-truth.log "$out/gpu-truth.log" 2>/dev/null || true
if [ -d /tmp/gpu-checks ]; then tar -C /tmp -czf "$out/gpu-checks.tgz" gpu-checks; fi
for run in /tmp/gpu-outputs/*/; do
  [ -d "$run" ] || continue
  bash "$(dirname "$0")/gpu_pack_run.sh" /tmp/gpu-outputs "$(basename "$run")" "$out"
done
ls -la "$out"
