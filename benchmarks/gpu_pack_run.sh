#!/usr/bin/env bash
# On the GPU machine: pack one run folder of OUTPUTS into OUT as <run>.tgz (everything but the notebooks' .ipynb and
# requests.jsonl) and <run>-requests.jsonl.gz. A compiled engine at high concurrency writes tens of MB of requests
# (every chunk's arrival time): where the gzip passes 15 MiB (a returned file holds 16 MiB at most), the chunk times
# are dropped (`-requests-lite.jsonl.gz`); summary.csv, made on the machine, already holds the figures they give.
#   usage: bash benchmarks/gpu_pack_run.sh OUTPUTS RUN OUT
set -euo pipefail
outputs=$1 name=$2 out=$3
tar -C "$outputs" -czf "$out/$name.tgz" --exclude='*.ipynb' --exclude=requests.jsonl "$name"
[ -e "$outputs/$name/requests.jsonl" ] || exit 0
gzip -c "$outputs/$name/requests.jsonl" > "$out/$name-requests.jsonl.gz"
if [ "$(stat -c %s "$out/$name-requests.jsonl.gz")" -gt 15728640 ]; then
  rm "$out/$name-requests.jsonl.gz"
  python3 -c 'import json, sys
for line in sys.stdin:
    row = json.loads(line); row.pop("chunk_ns", None); print(json.dumps(row))' < "$outputs/$name/requests.jsonl" | gzip > "$out/$name-requests-lite.jsonl.gz"
fi
