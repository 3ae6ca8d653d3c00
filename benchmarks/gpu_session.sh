#!/usr/bin/env bash
# On the lent GPU machine (no network): unpack the vLLM bundle gathered in /tmp/vb and the wheels in .whl,
# then run benchmarks/gpu_truth.py for each params file given, detached (setsid) so it outlives the call
# that starts it. Progress goes to /tmp/gpu-truth.log; /tmp/gpu-truth.done appears when all are finished.
#   usage: [GPU_TRUTH_ARGS="--concurrency 16 64"] bash benchmarks/gpu_session.sh params/h100-seed-colocated.yaml [more ...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d /tmp/vsite/vllm ]; then
  mkdir -p /tmp/vsite
  cat /tmp/vb/vb.* | tar xzf - -C /tmp/vsite
fi
if [ ! -d /tmp/site/papermill ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$repo"/.whl/*.whl
fi
export PYTHONPATH="$repo/lib:/tmp/site:/tmp/vsite" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 MPLBACKEND=Agg
rm -f /tmp/gpu-truth.done
# Each device call copies the working tree over the repository again, which deletes the folder a running
# process stands in (papermill then fails in os.getcwd()): run from a copy of our own.
rm -rf /tmp/servelab-repo && cp -a "$repo" /tmp/servelab-repo && repo=/tmp/servelab-repo
export PYTHONPATH="$repo/lib:/tmp/site:/tmp/vsite"
cd "$repo"
setsid nohup bash -c '
  for params in "$@"; do
    python3 benchmarks/gpu_truth.py "$params" --outputs /tmp/gpu-outputs ${GPU_TRUTH_ARGS:-}
  done
  touch /tmp/gpu-truth.done
' gpu-truth "$@" > /tmp/gpu-truth.log 2>&1 < /dev/null &
echo "started: tail -f /tmp/gpu-truth.log"
