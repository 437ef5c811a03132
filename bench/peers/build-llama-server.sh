#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the source node-llama-cpp's npm package carries
# (a git bundle), so the bench compares our server with llama.cpp at the very same revision.
# Threads as in node-llama-cpp's prebuilt CPU binaries (built with GGML_OPENMP=OFF): ggml's own
# thread pool, so both sides wait for each other's threads the same way.
# Prints the binary's path. The clone and build live outside the repo, in a cache directory.
# With --no-build, only prints the path of one already built (exit 1 when there is none).
set -euo pipefail
build=yes
[ "${1:-}" = "--no-build" ] && build=no

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
package_llama="$repo_root/node_modules/node-llama-cpp/llama"
bundle="$package_llama/gitRelease.bundle"
[ -f "$bundle" ] || { echo "no $bundle: install node-llama-cpp first (npm ci)" >&2; exit 1; }

revision="$(git bundle list-heads "$bundle" | awk 'NR==1 {print $1}')"
cache="${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlx-inference-server/llama.cpp-$revision}"
binary="$cache/build/bin/llama-server"

if [ ! -x "$binary" ]; then
  [ "$build" = yes ] || { echo "llama-server is not built yet: run $0" >&2; exit 1; }
  if [ ! -d "$cache/src/.git" ]; then
    mkdir -p "$cache"
    git clone --quiet "$bundle" "$cache/src" >&2
  fi
  cmake -S "$cache/src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
  cmake --build "$cache/build" --config Release --target llama-server -j "${LLAMA_BUILD_JOBS:-2}" >&2
fi
echo "$binary"
