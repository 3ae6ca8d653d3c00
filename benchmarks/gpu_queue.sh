#!/usr/bin/env bash
# One GPU session as a queue of stages, run in turn by one detached runner on the lent machine, so that the calls
# that carry the bundles and the polls that bring results back never hold up the measurements, and a result comes
# back as soon as its stage ends (a machine lost later keeps what was already brought back).
#
#   bash .gpu/src/benchmarks/gpu_queue.sh start STAGE...   first call: carries .whl and .gpu/src; starts the runner
#   bash benchmarks/gpu_queue.sh carry FOLDER              each carry call: FOLDER is .sb/dN, .vb/dN or .lcb
#   bash benchmarks/gpu_queue.sh poll SECONDS              wait until a stage ends (or SECONDS), then collect
#
# Stages, in the order given to `start`:
#   clients   #17: client processes 1/2/4/8 against the emitter on this host's 16 cores; `plan` and `run --dry-run`
#             against the real GPU's free memory (#19)
#   sglang    #20 item 2: the seed's three models co-located under SGLang, through the notebooks
#   vllm      #20 items 4 and 5: a vLLM started here outside servelab; `servelab bench` on it, memory found through
#             its port; then benchmarks/client_past_engine.py at c = 256 and 512 with `vllm bench serve` beside, once
#             per count in CLIENT_PROCESSES (default "4"; "1 4 8" sets the counts against each other)
#   llamacpp  #20 item 3: llama.cpp's llama-server built for sm_90 (benchmarks/gpu_llamacpp.sh), if .lcb came
# A stage that waits for a bundle waits at most BUNDLE_WAIT_S (default 900 s), then is skipped; a poll can skip a
# stage not yet begun with `touch /tmp/queue/skip-STAGE` (when the device time runs short).
# Each stage's commands have a time limit, so that one that hangs leaves the device time to the next.
# Everything lives in /tmp/queue; the runner's own log is /tmp/queue/runner.log.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
queue=/tmp/queue
repo=/tmp/servelab-repo
outputs=/tmp/gpu-outputs
checks=/tmp/gpu-checks

# How many chunks each bundle has, and where it unpacks (the folder a complete unpack leaves, checked by name).
declare -A CHUNKS=([sb]=4 [vb]=5) SITE=([sb]=/tmp/ssite [vb]=/tmp/vsite) INSIDE=([sb]=sglang [vb]=vllm)

log() { echo "$(date +%H:%M:%S) $*" | tee -a "$queue/runner.log"; }

environment() {
  export JUPYTER_PATH=/tmp/site/share/jupyter PYTHONPATH="$repo/lib:/tmp/site:/tmp/vsite"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  cd "$repo"
}

unpack() {  # unpack BUNDLE once all its chunks are here; under a lock, so a stage waiting for it waits for the unpack
  local bundle=$1
  exec 9>"/tmp/$bundle.lock"
  flock 9
  local have
  have=$(ls "/tmp/$bundle" 2>/dev/null | wc -l)
  if [ -d "${SITE[$bundle]}/${INSIDE[$bundle]}" ] || [ "$have" -lt "${CHUNKS[$bundle]}" ]; then return 0; fi
  rm -rf "${SITE[$bundle]}.part" && mkdir -p "${SITE[$bundle]}.part"
  if cat "/tmp/$bundle/$bundle".* | nice -n 19 tar xzf - -C "${SITE[$bundle]}.part"; then
    mv "${SITE[$bundle]}.part" "${SITE[$bundle]}" && log "unpacked $bundle"
  else
    log "bundle $bundle in /tmp/$bundle did not unpack ($(ls "/tmp/$bundle" | tr '\n' ' '))"
  fi
}

wait_for() {  # wait_for BUNDLE: true once it is unpacked, false after BUNDLE_WAIT_S
  local bundle=$1 waited=0
  while [ ! -d "${SITE[$bundle]}/${INSIDE[$bundle]}" ]; do
    unpack "$bundle"
    [ -d "${SITE[$bundle]}/${INSIDE[$bundle]}" ] && break
    if [ "$waited" -ge "${BUNDLE_WAIT_S:-900}" ]; then return 1; fi
    sleep 5; waited=$((waited + 5))
  done
}

stage_clients() {
  # 128 streams a process (25.6k chunks/s asked of each) as the issue names it; 64 (12.8k), well inside one core's
  # 12k to 49k chunks/s, in case a core of this host cannot hold 128 within the accuracy criterion
  for streams in 128 64; do
    python3 benchmarks/client_processes.py --processes 1 2 4 8 --streams-per-process "$streams" --rounds 8 \
      --json "$checks/client_processes-$streams.json"
  done
  # The plan against this GPU's real free memory, and a dry run that must accept what fits and refuse what does not.
  python3 -m servelab.cli plan params/h200-seed-vllm-compiled.yaml > "$checks/plan.txt" 2>&1; echo "plan exit $?" >> "$checks/plan.txt"
  python3 -m servelab.cli run params/h200-seed-vllm-compiled.yaml --dry-run > "$checks/dry-run-fits.txt" 2>&1
  echo "dry run exit $?" >> "$checks/dry-run-fits.txt"
  sed 's/gpu_memory_utilization: 0.50/gpu_memory_utilization: 0.75/' params/h200-seed-vllm-compiled.yaml > /tmp/too-big.yaml
  python3 -m servelab.cli run /tmp/too-big.yaml --dry-run > "$checks/dry-run-too-big.txt" 2>&1
  echo "dry run exit $?" >> "$checks/dry-run-too-big.txt"
  cat "$checks"/plan.txt "$checks"/dry-run-*.txt
}

stage_sglang() {
  wait_for sb || { log "SGLang's bundle never came: sglang skipped"; return 1; }
  timeout 1200 python3 benchmarks/gpu_truth.py params/h200-seed-sglang-colocated.yaml --outputs "$outputs" --no-bench
}

stage_vllm() {
  wait_for vb || { log "vLLM's bundle never came: vllm skipped"; return 1; }
  local model
  model=$(python3 -c 'from pathlib import Path; from servelab.serve.models import resolve_shape, write_shape
print(write_shape(resolve_shape("tinyllama-1.1b"), Path("/tmp/shapes")))') || return 1
  # Started as anyone starts vLLM, outside servelab: compiled (vLLM's defaults), 256 sequences in a batch.
  VLLM_USE_FLASHINFER_SAMPLER=0 setsid python3 -m vllm.entrypoints.cli.main serve "$model" --host 127.0.0.1 --port 8000 \
    --served-model-name tinyllama --load-format dummy --dtype float16 --max-model-len 1024 --max-num-seqs 256 \
    --gpu-memory-utilization 0.15 > "$checks/vllm-external.log" 2>&1 < /dev/null &
  local server=$! waited=0
  trap "kill -9 -- -$server 2>/dev/null" EXIT  # the stage runs in a subshell: its server ends with it, however it ends
  until python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=2)' 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null || [ "$waited" -ge 420 ]; then log "vLLM did not come up"; tail -20 "$checks/vllm-external.log"; return 1; fi
    sleep 2; waited=$((waited + 2))
  done
  log "vLLM outside servelab ready after ${waited} s (pid $server)"
  timeout 240 python3 -m servelab.cli bench http://127.0.0.1:8000 --model tinyllama --metrics vllm --concurrency 4 16 64 \
    --input-tokens 256 --output-tokens 128 --requests 128 --outputs "$outputs" --save-params "$checks/bench-params.yaml"
  echo "servelab bench exit $?"
  # one run per client-process count (CLIENT_PROCESSES, default 4), each with vllm bench's turns beside its own
  for processes in ${CLIENT_PROCESSES:-4}; do
    timeout 360 python3 benchmarks/client_past_engine.py --url http://127.0.0.1:8000 --model tinyllama --tokenizer "$model" \
      --concurrency 256 512 --client-processes "$processes" --rounds 2 --outputs "$outputs" \
      --json "$checks/client_past_engine-$processes.json"
    echo "client_past_engine over $processes process(es): exit $?"
  done
  kill -- -"$server" 2>/dev/null; sleep 5; kill -9 -- -"$server" 2>/dev/null
  # the next stage sizes its servers from the memory free when they start: wait until this one's is given back
  for _ in $(seq 30); do [ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader)" ] && break; sleep 1; done
}

stage_llamacpp() {
  [ -e /tmp/lcb-carry/llama-server-cuda.tgz ] || { log "no llama.cpp build was carried: llamacpp skipped"; return 1; }
  # from the tree laid by the call that carried the build, which holds its scripts
  cd /tmp/lcb-src && PYTHONPATH="/tmp/lcb-src/lib:/tmp/site:/tmp/vsite" timeout 600 bash benchmarks/gpu_llamacpp.sh
}

runner() {  # the stages in turn; each leaves STAGE.done or STAGE.failed, and STAGE.runs (the run folders it made)
  environment
  for stage in "$@"; do
    ls "$outputs" 2>/dev/null | sort > "$queue/before"
    if [ -e "$queue/skip-$stage" ]; then log "stage $stage skipped (asked)"; touch "$queue/$stage.failed"; continue; fi
    log "stage $stage begins"
    # a subshell: a stage that dies (set -u, exit) ends as failed, and the queue goes on
    if ( "stage_$stage" ) > "$queue/$stage.log" 2>&1; then status=done; else status=failed; fi
    ls "$outputs" 2>/dev/null | sort | comm -13 "$queue/before" - > "$queue/$stage.runs"
    touch "$queue/$stage.$status"
    log "stage $stage $status: runs $(tr '\n' ' ' < "$queue/$stage.runs")"
  done
  touch "$queue/all.done"
}

collect() {  # into $OUT: the logs and checks every time; each finished stage's runs once (2 files a run)
  local out=${OUT:?OUT is the folder the device tool brings back} files=1
  tar -C /tmp -czf "$out/queue-$(date +%H%M%S).tgz" queue gpu-checks 2>/dev/null
  touch "$queue/collected"
  for runs in "$queue"/*.runs; do
    [ -e "$runs" ] || continue
    while read -r name; do
      [ -n "$name" ] && ! grep -qx "$name" "$queue/collected" || continue
      [ "$files" -le 6 ] || break
      bash "$repo/benchmarks/gpu_pack_run.sh" "$outputs" "$name" "$out"
      echo "$name" >> "$queue/collected"
      files=$((files + 2))
    done < "$runs"
  done
  ls -la "$out"
}

case ${1:-} in
  start)
    shift
    mkdir -p "$queue" "$outputs" "$checks" /tmp/sb /tmp/vb
    if [ ! -d /tmp/site/papermill ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    fi
    # Each device call lays the working tree anew, deleting the folder a running process stands in: run from a copy.
    rm -rf "$repo" && cp -a "$here" "$repo"
    # The host's CPU time, steal included, once a second: a slow host shows in an engine's speed.
    setsid nohup bash -c 'while :; do echo "$(date +%s.%N) $(head -1 /proc/stat)"; sleep 1; done' \
      > "$checks/cpu-stat.log" 2>&1 < /dev/null &
    nvidia-smi > "$checks/nvidia-smi-start.txt" 2>&1
    echo "$*" > "$queue/stages"
    setsid nohup bash "$repo/benchmarks/gpu_queue.sh" runner "$@" > "$queue/runner.out" 2>&1 < /dev/null &
    echo "$(date +%s)" > "$queue/started"
    echo "queue started: $*"
    ;;
  runner)
    shift
    runner "$@"
    ;;
  carry)  # copy a carried chunk folder in; a bundle complete with it starts unpacking at once, detached
    test -e "$queue/started" || { echo "fresh machine: no queue here"; exit 3; }
    folder=$2
    case $folder in
      *.lcb*) mkdir -p /tmp/lcb-carry && cp "$folder"/* /tmp/lcb-carry/ && rm -rf /tmp/lcb-src && cp -a . /tmp/lcb-src ;;
      *) bundle=$(basename "$(dirname "$folder")"); bundle=${bundle#.}; cp "$folder"/* "/tmp/$bundle/"
         # unpacking takes cores: not while the client benchmark measures (its stage unpacks when it needs to)
         if ! grep -qw clients "$queue/stages" || ls "$queue"/clients.done "$queue"/clients.failed > /dev/null 2>&1; then
           setsid nohup bash "$repo/benchmarks/gpu_queue.sh" unpack "$bundle" >> "$queue/unpack.log" 2>&1 < /dev/null &
         fi ;;
    esac
    ls -la /tmp/sb /tmp/vb /tmp/lcb-carry 2>/dev/null | grep -v '^total'
    tail -3 "$queue/runner.log" 2>/dev/null
    ;;
  unpack)
    mkdir -p "$queue"; unpack "$2"
    ;;
  poll)  # wait until one more stage has ended, or SECONDS; then collect
    test -e "$queue/started" || { echo "fresh machine: no queue here"; exit 3; }
    limit=${2:-480} start=$SECONDS
    ended() { ls "$queue"/*.done "$queue"/*.failed 2>/dev/null | wc -l; }
    before=$(ended)
    while [ $((SECONDS - start)) -lt "$limit" ] && [ "$(ended)" -eq "$before" ]; do
      sleep 10
      if [ $(((SECONDS - start) % 60)) -lt 10 ]; then
        echo "--- $(date +%H:%M:%S), $(( $(date +%s) - $(cat "$queue/started") )) s since start"
        tail -2 "$queue/runner.log"; tail -q -n 2 "$queue"/*.log 2>/dev/null | grep -v '^$' | tail -3
      fi
    done
    cat "$queue/runner.log"
    collect
    ;;
  *)
    sed -n '2,20p' "$0"; exit 2
    ;;
esac
