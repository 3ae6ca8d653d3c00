#!/usr/bin/env bash
# On the lent GPU machine (no network), after /tmp/site is set up (papermill and the rest, as gpu_session.sh does):
# llama.cpp on the GPU, the third column (issue #20 item 3). Unpacks the CUDA llama-server carried in
# .lcb/llama-server-cuda.tgz (scripts/build-llama-server-cuda.sh) to /tmp/lcb, installs the gguf wheel from .lcb
# into /tmp/site, finds the machine's CUDA 13 pip libraries (libcudart.so.13, libcublas.so.13) for
# LD_LIBRARY_PATH, then runs gpu_truth.py on params/h200-llamacpp-tinyllama.yaml with that path written in.
# Everything goes to /tmp/gpu-llamacpp.log; /tmp/gpu-llamacpp.done appears at the end, with the exit status.
#   usage: bash benchmarks/gpu_llamacpp.sh            (detached: setsid nohup bash benchmarks/gpu_llamacpp.sh &)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
log=/tmp/gpu-llamacpp.log
params_name=h200-llamacpp-tinyllama.yaml
rm -f /tmp/gpu-llamacpp.done
exec > >(tee -a "$log") 2>&1
finish() { echo "gpu_llamacpp: exit $1"; echo "$1" > /tmp/gpu-llamacpp.done; exit "$1"; }
echo "gpu_llamacpp: $(date -u +%FT%TZ) from $repo"

# A copy of our own: each device call copies the working tree over the repository again.
rm -rf /tmp/servelab-repo-lcb && cp -a "$repo" /tmp/servelab-repo-lcb && repo=/tmp/servelab-repo-lcb
mkdir -p /tmp/lcb && tar -xzf "$repo/.lcb/llama-server-cuda.tgz" -C /tmp/lcb || { echo "cannot unpack .lcb/llama-server-cuda.tgz"; finish 2; }
if ! python3 -c 'import sys; sys.path.insert(0, "/tmp/site"); import gguf' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$repo"/.lcb/gguf-*.whl \
    || { echo "cannot install the gguf wheel"; finish 2; }
fi

# The folders holding each library: pip's nvidia wheels first (CUDA 13's put them in nvidia/cu13/lib), then anywhere.
library_dir() {
  local name=$1 found
  found=$(python3 - "$name" <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = [p for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()] + sys.path) if os.path.isdir(p)]
for root in roots:
    hits = sorted(glob.glob(os.path.join(root, "nvidia", "**", sys.argv[1]), recursive=True))
    if hits:
        print(os.path.dirname(os.path.realpath(hits[0])))
        break
EOF
)
  [ -n "$found" ] || found=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$1" -print 2>/dev/null | head -n 1 | xargs -r dirname)
  echo "$found"
}
dirs=()
for name in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
  dir=$(library_dir "$name")
  [ -n "$dir" ] || { echo "no $name on this machine"; finish 3; }
  echo "found $name in $dir"
  [[ " ${dirs[*]} " == *" $dir "* ]] || dirs+=("$dir")
done
LD_LIBRARY_PATH=$(IFS=:; echo "${dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
/tmp/lcb/bin/llama-server --version 2>&1 | head -n 12
ldd /tmp/lcb/bin/llama-server
if ldd /tmp/lcb/bin/llama-server | grep -q 'not found'; then echo "llama-server lacks a library (above)"; finish 4; fi

# The params with this machine's library path in place of the placeholder, in the copy (same file name: same run id).
sed -i "s|FILLED_ON_THE_DEVICE|$LD_LIBRARY_PATH|" "$repo/params/$params_name"
grep -n 'LD_LIBRARY_PATH' "$repo/params/$params_name"

export JUPYTER_PATH=/tmp/site/share/jupyter
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export PYTHONPATH="$repo/lib:/tmp/site:/tmp/vsite${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
python3 benchmarks/gpu_truth.py "params/$params_name" --outputs /tmp/gpu-outputs --no-bench
status=$?
ls -t /tmp/gpu-outputs | head -n 3
finish "$status"
