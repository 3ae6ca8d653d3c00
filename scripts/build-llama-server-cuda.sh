#!/usr/bin/env bash
# Builds llama.cpp's llama-server with CUDA for the H200 (sm_90 only), from the same llama-cpp-python sdist
# as the CPU engine (scripts/install-engine.sh), once, into the cache. It is built here, on a machine without
# a GPU, and carried to the GPU machine (benchmarks/gpu_llamacpp.sh), so it links by soname only:
#   libcudart.so.13, libcublas.so.13 (it loads libcublasLt.so.13) -> the GPU machine's pip wheels (LD_LIBRARY_PATH);
#   libcuda.so.1                                                  -> its driver.
# What this machine lacks comes from elsewhere: cuBLAS's headers and libraries from PyPI's nvidia-cublas
# wheel (linked against, never shipped), and libcuda.so from a stub made here from cuda.h's names
# (every driver function returns 0; it only satisfies the linker). ggml is static inside the binary.
# The full log is kept beside the binary (build.log), and BUILD.txt what it needs; on 2 shared cores the build took
# 36 minutes (2026-12-03: 348 steps, 141 of them CUDA). 61.8 MB, 26 MB packed.
#   usage: scripts/build-llama-server-cuda.sh                 -> prints the path of llama-server
#          scripts/build-llama-server-cuda.sh --pack OUT.tgz  -> also packs bin/llama-server and BUILD.txt for carrying
#   env:   LLAMA_CPP_PYTHON_VERSION (0.3.36), CUDA_HOME (/usr/local/cuda-13.0), CUBLAS_VERSION (13.0.0.19),
#          SERVELAB_CACHE (~/.cache/servelab), BUILD_JOBS (nproc)
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cuda=${CUDA_HOME:-/usr/local/cuda-13.0}
cublas_version=${CUBLAS_VERSION:-13.0.0.19}
cache=${SERVELAB_CACHE:-$HOME/.cache/servelab}
jobs=${BUILD_JOBS:-$(nproc)}
dest="$cache/llama.cpp-$version-cuda-sm90"
binary="$dest/bin/llama-server"
log="$dest/build.log"
python=$(command -v python3)
pack=""
if [ "${1:-}" = "--pack" ]; then
  pack=${2:?"--pack needs the tarball's path"}
  pack=$(realpath -m "$pack")
fi
# BUILD.txt: what the GPU machine must supply, and proof that only sm_90 code is inside.
# cuobjdump: the toolkit's, else PyPI's nvidia-cuda-cuobjdump wheel (a minimal toolkit may lack it).
cuobjdump_path() {
  local wheel_dir="$cache/cuda/cuobjdump"
  if [ -x "$cuda/bin/cuobjdump" ]; then echo "$cuda/bin/cuobjdump"; return; fi
  if [ ! -x "$wheel_dir/nvidia/cu13/bin/cuobjdump" ]; then
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
      -d "$wheel_dir" "nvidia-cuda-cuobjdump==13.2.51" >>"$log" 2>&1 || return 0
    "$python" -m zipfile -e "$wheel_dir"/nvidia_cuda_cuobjdump-*.whl "$wheel_dir" >>"$log" 2>&1 || return 0
    chmod +x "$wheel_dir/nvidia/cu13/bin/cuobjdump"
  fi
  echo "$wheel_dir/nvidia/cu13/bin/cuobjdump"
}
describe() {
  local cubins ptx tool
  tool=$(cuobjdump_path)
  cubins=$([ -n "$tool" ] && "$tool" --list-elf "$binary" 2>&1 | grep '^ELF file' || true)
  ptx=$([ -n "$tool" ] && "$tool" --list-ptx "$binary" 2>&1 | grep -c '^PTX file' || true)
  {
    echo "llama-server from llama-cpp-python $version's llama.cpp; CUDA $("$cuda/bin/nvcc" --version | tail -n 1)"
    echo "cuBLAS $cublas_version headers, linked by soname; CMAKE_CUDA_ARCHITECTURES=90-real"
    readelf -d "$binary" | grep NEEDED
    echo "highest glibc symbol version: $(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
    echo "cubins (cuobjdump --list-elf): $(grep -c 'sm_90' <<<"$cubins") for sm_90, $(grep -vc 'sm_90' <<<"$cubins") for any other arch; $ptx PTX files"
  } >"$dest/BUILD.txt" 2>&1
}
packed() {
  [ -s "$dest/BUILD.txt" ] || describe
  if [ -n "$pack" ]; then
    mkdir -p "$(dirname "$pack")"
    tar -czf "$pack" -C "$dest" bin/llama-server BUILD.txt
    printf 'servelab: packed %s (%s)\n' "$pack" "$(du -h "$pack" | cut -f1)" >&2
  fi
  echo "$binary"
  exit 0
}
if [ -x "$binary" ]; then
  packed
fi
mkdir -p "$cache/src" "$cache/cuda" "$dest/bin"
work=$(mktemp -d "$cache/src/build-cuda.XXXXXX")
trap 'rm -rf "$work"' EXIT
: >"$log"

say() { printf '%s\n' "$*" >&2; }
failed() {
  say "servelab: building llama-server $version (CUDA sm_90) failed at: $1. The last lines of its log ($log):"
  tail -n 25 "$log" >&2
  exit 1
}
[ -x "$cuda/bin/nvcc" ] || failed "finding nvcc at $cuda/bin/nvcc (set CUDA_HOME to a CUDA 13 toolkit)"

# cuBLAS: headers to compile against, libraries to link against by soname.
cublas="$cache/cuda/cublas-$cublas_version"
if [ ! -s "$cublas/lib/libcublas.so.13" ]; then
  say "servelab: fetching nvidia-cublas $cublas_version (headers and link libraries) from PyPI"
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$work/dl" "nvidia-cublas==$cublas_version" >>"$log" 2>&1 || failed "downloading nvidia-cublas $cublas_version"
  rm -rf "$cublas.tmp" && mkdir -p "$cublas.tmp"
  "$python" -m zipfile -e "$work"/dl/nvidia_cublas-*.whl "$work/wheel" >>"$log" 2>&1 || failed "unpacking the cuBLAS wheel"
  mv "$work"/wheel/nvidia/cu13/include "$work"/wheel/nvidia/cu13/lib "$cublas.tmp"/
  rm -rf "$cublas" && mv "$cublas.tmp" "$cublas"
fi

# libcuda stub: one symbol for every driver function cuda.h declares or renames (cuMemGetInfo -> _v2).
stubs="$cache/cuda/stubs"
if [ ! -s "$stubs/libcuda.so" ]; then
  mkdir -p "$stubs"
  { grep -oE 'CUDAAPI[[:space:]]+cu[A-Za-z0-9_]+' "$cuda/include/cuda.h" | awk '{print $2}'
    grep -oE '^#define[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]+__CUDA_API_[A-Z0-9_]*\(cu[A-Za-z0-9_]+\)' "$cuda/include/cuda.h" \
      | grep -oE '\(cu[A-Za-z0-9_]+\)' | tr -d '()'
    grep -oE '^#define[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]+cu[A-Za-z0-9_]+' "$cuda/include/cuda.h" | awk '{print $3}'
  } | sort -u | awk '{printf "int %s(void) { return 0; }\n", $1}' >"$work/cuda_stub.c"
  gcc -shared -fPIC -o "$stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$work/cuda_stub.c" >>"$log" 2>&1 \
    || failed "making the libcuda stub"
fi

say "servelab: building llama-server $version with CUDA (sm_90) once; full log: $log"
sdist="$cache/src/llama_cpp_python-$version.tar.gz"
if [ ! -s "$sdist" ]; then
  "$python" -m pip download -q --no-deps --no-binary :all: -d "$work/dl" "llama-cpp-python==$version" >>"$log" 2>&1 \
    || failed "downloading the llama-cpp-python $version sdist"
  mv "$work/dl"/llama_cpp_python-"$version".tar.gz "$sdist"
fi
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp" >>"$log" 2>&1 || failed "unpacking $sdist"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# 90-real: SASS for sm_90 only, no PTX. FA kernels for the f16 KV cache only (the cache type servelab runs).
# No OpenMP and no OpenSSL, so the binary needs nothing the GPU machine's image may lack (libgomp, libssl):
# with every layer on the GPU the CPU threads only feed it, and ggml's own thread pool does that.
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA_QUANTS=f16-f16 -DGGML_CUDA_NCCL=OFF \
  -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF \
  -DCMAKE_CUDA_COMPILER="$cuda/bin/nvcc" -DCUDAToolkit_ROOT="$cuda" \
  -DCUDA_cublas_LIBRARY="$cublas/lib/libcublas.so.13" -DCUDA_cublasLt_LIBRARY="$cublas/lib/libcublasLt.so.13" \
  -DCUDA_cuda_driver_LIBRARY="$stubs/libcuda.so" \
  -DCMAKE_CUDA_FLAGS="-I$cublas/include" -DCMAKE_CXX_FLAGS="-I$cublas/include" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$cublas/lib" -DCMAKE_SKIP_RPATH=ON >>"$log" 2>&1 || failed "configuring (cmake)"
start=$(date +%s)
cmake --build "$work/build" --target llama-server -j "$jobs" >>"$log" 2>&1 || failed "compiling (cmake --build)"
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
describe
say "servelab: llama-server $version (CUDA sm_90) built in $(( ($(date +%s) - start) / 60 )) min: $binary"
packed
