#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the embedded CPU engine) from the llama.cpp sources vendored in the sdist
# of PyPI's llama-cpp-python, once, into the cache. Later runs find the binary there and return at once.
# The build prints one progress line; its full log is kept in the cache (build.log beside the binary).
#   usage: scripts/install-engine.sh            -> prints the path of llama-server
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
cache=${SERVELAB_CACHE:-$HOME/.cache/servelab}
dest="$cache/llama.cpp-$version"
binary="$dest/bin/llama-server"
log="$dest/build.log"
if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
  echo "$binary"
  exit 0
fi
mkdir -p "$cache/src" "$dest/bin"
work=$(mktemp -d "$cache/src/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
: >"$log"

say() { printf '%s\n' "$*" >&2; }
failed() {
  say "servelab: building llama-server $version failed at: $1. The last lines of its log ($log):"
  tail -n 25 "$log" >&2
  exit 1
}
# One line that moves: cmake's own [ NN%] from the log, rewritten in place on a terminal.
progress() {
  local pid=$1 percent=""
  while kill -0 "$pid" 2>/dev/null; do
    percent=$(grep -o '^\[ *[0-9]*%\]' "$log" 2>/dev/null | tail -n 1 | tr -dc '0-9' || true)
    if [ -t 2 ] && [ -n "$percent" ]; then
      printf '\rservelab: building llama-server %s: %s %%' "$version" "$percent" >&2
    fi
    sleep 2
  done
  [ -t 2 ] && printf '\r\033[K' >&2
  return 0
}

say "servelab: building llama-server $version once (about 6 minutes on 2 cores); full log: $log"
sdist="$cache/src/llama_cpp_python-$version.tar.gz"
if [ ! -s "$sdist" ]; then
  { python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work/dl" "llama-cpp-python==$version" \
    || python3 -m pip download -q --no-deps --no-binary :all: -d "$work/dl" "llama-cpp-python==$version"; } >>"$log" 2>&1 \
    || failed "downloading the llama-cpp-python $version sdist"
  mv "$work/dl"/llama_cpp_python-"$version".tar.gz "$sdist"
fi
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp" >>"$log" 2>&1 || failed "unpacking $sdist"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >>"$log" 2>&1 || failed "configuring (cmake)"
cmake --build "$work/build" --target llama-server -j "$(nproc)" >>"$log" 2>&1 &
build=$!
progress "$build"
wait "$build" || failed "compiling (cmake --build)"
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
say "servelab: llama-server $version built: $binary"
echo "$binary"
