#!/usr/bin/env bash
# On the lent GPU machine (no network): unpack the vLLM bundle gathered in /tmp/vb and the wheels in .whl,
# optionally measure the host first, then run benchmarks/gpu_truth.py for each params file given, detached
# (setsid) so it outlives the call that starts it. SGLang's bundle, gathered in /tmp/sb, is unpacked just before
# the first run that follows its arrival. Progress goes to /tmp/gpu-truth.log; /tmp/gpu-truth.done appears
# when all are finished.
#   usage: [GPU_CHECKS="nvml streams"] [GPU_TRUTH_ARGS="--concurrency 16 64"] bash benchmarks/gpu_session.sh params/a.yaml [more ...]
# GPU_CHECKS runs, before any engine starts and on an idle GPU: `nvml`, the sampler's cost at 100 Hz
# (nvml_overhead.py, variants from NVML_VARIANTS); `streams`, the measurement issue's 64-stream check
# (client_ceiling.py), whose emitter gets cores of its own here. Their JSON goes to /tmp/gpu-checks and $OUT.
# A params argument may name a fallback after a comma, `a.yaml,b.yaml`: b runs if a fails before its sweep starts
# (say a server that does not come up with CUDA graphs), and not after.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d /tmp/vsite/vllm ]; then
  mkdir -p /tmp/vsite
  cat /tmp/vb/vb.* | tar xzf - -C /tmp/vsite
fi
if [ ! -d /tmp/site/papermill ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$repo"/.whl/*.whl
fi
# nbconvert finds its templates in the share/ that pip --target wrote
export JUPYTER_PATH=/tmp/site/share/jupyter
# No MPLBACKEND here: the notebooks' kernels would take it over their inline backend and show no figures, so the
# report would come back without them. The scripts themselves draw on Agg, matplotlib's choice on a host with no display.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
rm -f /tmp/gpu-truth.done
# The host's CPU time, steal included (a guest's vCPU waiting for the hypervisor), once a second: an eager engine
# runs every decode step from Python, so a host that slows down shows in its speed.
if [ ! -e /tmp/gpu-checks/cpu-stat.log ]; then
  mkdir -p /tmp/gpu-checks
  setsid nohup bash -c 'while :; do echo "$(date +%s.%N) $(head -1 /proc/stat)"; sleep 1; done' > /tmp/gpu-checks/cpu-stat.log 2>&1 < /dev/null &
fi
# Each device call copies the working tree over the repository again, which deletes the folder a running
# process stands in (papermill then fails in os.getcwd()): run from a copy of our own.
rm -rf /tmp/servelab-repo && cp -a "$repo" /tmp/servelab-repo && repo=/tmp/servelab-repo
export PYTHONPATH="$repo/lib:/tmp/site:/tmp/vsite"
cd "$repo"
mkdir -p /tmp/gpu-checks
if [[ " ${GPU_CHECKS:-} " == *" nvml "* ]]; then
  # shellcheck disable=SC2086 # the variants are words
  python3 benchmarks/nvml_overhead.py --hz 100 --window-s 4 --rounds 2 \
    --variants ${NVML_VARIANTS:-default floor-sleep} --json "/tmp/gpu-checks/nvml_overhead-$(date +%H%M%S).json" || true
fi
if [[ " ${GPU_CHECKS:-} " == *" streams "* ]]; then
  for i in 1 2 3 4 5; do
    python3 benchmarks/client_ceiling.py --levels 64 --rounds 16 --tools servelab --json "/tmp/gpu-checks/stream64-$i.json" | tail -3 || true
  done
fi
# SGLang's chunks may still be arriving (carried during the polls): unpack them just before each run, or wait for
# the unpack a poll started (gpu_unpack_sglang.sh holds a lock).
setsid nohup bash -c 'set -o pipefail
  for pair in "$@"; do
    params=${pair%%,*} fallback=${pair#*,}
    bash benchmarks/gpu_unpack_sglang.sh
    log=/tmp/gpu-truth-$(basename "$params" .yaml).log
    if ! python3 benchmarks/gpu_truth.py "$params" --outputs /tmp/gpu-outputs ${GPU_TRUTH_ARGS:-} 2>&1 | tee "$log"; then
      if [ "$fallback" != "$pair" ] && ! grep -q "executing 02_sweep" "$log"; then
        echo "$params failed before its sweep: running $fallback"
        python3 benchmarks/gpu_truth.py "$fallback" --outputs /tmp/gpu-outputs ${GPU_TRUTH_ARGS:-} || true
      fi
    fi
  done
  touch /tmp/gpu-truth.done
' gpu-truth "$@" > /tmp/gpu-truth.log 2>&1 < /dev/null &
echo "started: tail -f /tmp/gpu-truth.log"
