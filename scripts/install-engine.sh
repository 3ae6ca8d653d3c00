#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the embedded CPU engine) from the llama.cpp sources vendored in the sdist
# of PyPI's llama-cpp-python, once, into the cache. Later runs find the binary there and return at once.
#   usage: scripts/install-engine.sh            -> prints the path of llama-server
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${SERVELAB_CACHE:-$HOME/.cache/servelab}
dest="$cache/llama.cpp-$version"
binary="$dest/bin/llama-server"
if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
  echo "$binary"
  exit 0
fi
mkdir -p "$cache/src" "$dest/bin"
work=$(mktemp -d "$cache/src/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "servelab: building llama-server $version once (about 6 minutes on 2 cores); cached in $dest" >&2
sdist="$cache/src/llama_cpp_python-$version.tar.gz"
if [ ! -s "$sdist" ]; then
  python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work/dl" \
    "llama-cpp-python==$version" >&2 2>/dev/null \
    || python3 -m pip download -q --no-deps --no-binary :all: -d "$work/dl" "llama-cpp-python==$version" >&2
  mv "$work/dl"/llama_cpp_python-"$version".tar.gz "$sdist"
fi
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "$binary"
