#!/bin/bash
# Packs what bench/gpu/build-llama-cuda.sh needs of node-llama-cpp's llama.cpp source (the
# checkout bench/peers/build-llama-server.sh makes from the package's gitRelease.bundle) into
# .gpu/llama-src.tar.xz: the build files, ggml, libllama, common, vendor, tools and scripts; not the
# model vocabularies, docs or tests. Run from the checkout root.
set -euo pipefail
src="$(dirname "$(bench/peers/build-llama-server.sh --no-build)")/../../src"
mkdir -p .gpu
tar -C "$src" -cJf .gpu/llama-src.tar.xz --exclude='tools/ui/tests' --exclude='*.gguf' \
  CMakeLists.txt cmake common ggml include src vendor tools scripts licenses LICENSE
ls -la .gpu/llama-src.tar.xz
