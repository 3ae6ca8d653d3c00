#!/usr/bin/env bash
# Builds an offline bundle of SGLang 0.5.16 for an H100/H200 host with no network whose Python is 3.12 with
# torch 2.11.0+cu130 (sglang 0.5.11-0.5.17 pin torch==2.11.0; 0.5.16 is the one whose flashinfer-python
# 0.6.14, apache-tvm-ffi 0.1.11, nvidia-cutlass-dsl 4.6.0, humming-kernels 0.1.10 and tokenspeed-mla 0.1.8
# are the very versions of vLLM 0.26.0's bundle), split into chunks of at most 60 MB.
#   usage: make-sglang-bundle.sh OUTDIR      -> OUTDIR/c0 .. OUTDIR/cN, each holding one chunk sb.NN
# On the GPU host, gather the chunks in /tmp/sb, then: mkdir -p /tmp/ssite; cat /tmp/sb/sb.* | tar xzf - -C
# /tmp/ssite; export PYTHONPATH=/tmp/ssite (never together with vLLM's /tmp/vsite: openai, xgrammar,
# openai-harmony, llguidance, outlines-core, compressed-tensors and fastapi are pinned differently; and not
# the CuTe DSL's dsl_packages folder, whose `cutlass` fails to import without the CUDA libraries left out
# below), and run `python3 -m sglang.launch_server --attention-backend triton --sampling-backend pytorch ...`
# (FA3, sglang's default on Hopper, is left out, see below, and FlashInfer's kernels would be compiled at
# start-up; the console scripts carry a foreign shebang). It ran so on an H200 on 2026-12-01.
# The closure below is pip's resolution of sglang==0.5.16 for cp312/manylinux x86_64 (2026-11-24), less what
# the GPU image already holds, less optional packages too large to carry (tokenspeed-triton, the CuTe DSL
# cu12/cu13 libraries, humming-kernels' nvcc/nvvm/cccl wheels, tilelang + z3-solver, nvidia-mathdx,
# torchcodec, py-spy). transformers 5.12.1 and tokenizers 0.22.2 are carried because sglang pins them
# (the image has 5.17.0 / 0.23.2); numba==0.65.1 is not (it needs numpy<2.5, the image has 2.5.2).
# docs/results/sglang-offline.md records how this was found, and the run.
set -euo pipefail
out=${1:?usage: make-sglang-bundle.sh OUTDIR}
work=$(mktemp -d)
cat > "$work/closure.txt" <<'EOF'
sglang==0.5.16
sglang-kernel==0.4.5
flashinfer-python==0.6.14
apache-tvm-ffi==0.1.11
transformers==5.12.1
tokenizers==0.22.2
airportsdata==20260905
annotated-types==0.8.0
anthropic==2.12.0
asttokens==3.0.2
blobfile==3.0.0
cffi==2.1.1
compressed-tensors==0.20.0
cryptography==50.0.2
cuda-python==13.4.4
cuda-tile==1.7.0
datasets==5.2.0
dill==0.4.1
diskcache==5.6.3
distro==1.9.0
docstring-parser==0.18.0
easydict==1.14
executing==2.3.0
fastapi==0.165.0
filecheck==1.0.6
flash-attn-4==4.0.0b19
gguf==0.19.0
grpcio-health-checking==1.81.1
grpcio-reflection==1.81.1
helion==0.2.6
httpcore2==2.16.2
httpx2==2.16.2
humming-kernels==0.1.10
interegular==0.3.3
ipython-pygments-lexers==1.1.1
ipython==9.18.1
jedi==0.20.1
jiter==0.19.0
jsonschema-specifications==2025.9.1
jsonschema==4.26.0
kernels-data==0.16.2
kernels==0.14.1
lark==1.3.1
llguidance==1.9.1
loguru==0.7.3
matplotlib-inline==0.2.2
mistral-common==1.13.1
modelscope-hub==0.5.1
modelscope==1.40.2
msgspec==0.22.0
multiprocess==0.70.19
nest-asyncio==1.6.0
nvidia-cudnn-frontend==1.28.0
nvidia-cutlass-dsl-libs-base==4.6.0
nvidia-cutlass-dsl-libs-core==4.6.0
nvidia-cutlass-dsl==4.6.0
openai-harmony==0.0.4
openai==2.6.1
opentelemetry-api==1.45.2
orjson==3.13.0
outlines-core==0.1.26
outlines==0.1.11
parso==0.8.7
partial-json-parser==0.2.1.1.post7
pexpect==4.9.0
prompt-toolkit==3.0.53
ptyprocess==0.7.0
pure-eval==0.2.4
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pycryptodomex==3.24.2
pydantic-core==2.50.4
pydantic-extra-types==2.11.1
pydantic==2.14.3
pyelftools==0.33
python-multipart==0.0.34
pyzmq==27.3.0
quack-kernels==0.6.3
referencing==0.37.0
rpds-py==2026.9.1
setproctitle==1.3.8
sgl-deep-gemm==0.1.4.post1
smg-grpc-proto==0.4.28
smg-grpc-servicer==0.14.1
sniffio==1.3.1
soundfile==0.13.1
stack-data==0.6.3
starlette==1.10.0
tokenspeed-mla==0.1.8
tomlkit==0.15.2
torch-c-dlpack-ext==0.1.5
torch-memory-saver==0.0.10
torchao==0.17.0
traitlets==5.16.1
truststore==0.10.5
typing-inspection==0.4.5
tzdata==2026.6
uvicorn==0.54.0
watchfiles==1.3.0
wcwidth==0.9.4
xgrammar==0.2.1
zstandard==0.25.0
EOF
plat=()
for p in manylinux_2_28 manylinux_2_31 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_34 \
         manylinux_2_35 manylinux_2_24 manylinux_2_26 manylinux1 linux; do plat+=(--platform "${p}_x86_64"); done
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" --platform any --target "$work/site" -r "$work/closure.txt"
# sglang-kernel 0.4.5 is 383 MB packed: 342 MB of it is FA3 (flash_ops.abi3.so, 1.1 GB unpacked), loaded only
# by the fa3 attention backend; sm100/ holds the Blackwell common_ops. Hopper loads sm90/common_ops.abi3.so.
rm -f "$work/site/sgl_kernel/flash_ops.abi3.so"
rm -rf "$work/site/sgl_kernel/sm100"
tar -C "$work/site" -cf - . | gzip -6 > "$work/sbundle.tgz"
split -b 60m -d "$work/sbundle.tgz" "$work/sb."
mkdir -p "$out"
i=0
for f in "$work"/sb.*; do mkdir -p "$out/c$i"; mv "$f" "$out/c$i/"; i=$((i + 1)); done
rm -rf "$work"
ls -l "$out"/c*/
