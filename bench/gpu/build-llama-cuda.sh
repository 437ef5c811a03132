#!/bin/bash
# On the GPU machine, from the checkout root: builds llama.cpp's CUDA backend, as a ggml backend
# module of the kind node-llama-cpp loads, and llama-server, both from node-llama-cpp's own
# llama.cpp source (.gpu/llama-src.tar.xz, from bench/gpu/stage-llama-source.sh) for the GPU it
# finds, into /root/llama-cuda/. The prebuilt CUDA backend in @node-llama-cpp/linux-x64-cuda needs a
# CUDA 13.1 driver; one built here by the machine's own nvcc runs on the driver it has. The
# server then loads this libggml-cuda.so (device.sh puts it into the prebuilt package in place of
# the shipped one) and llama-server loads the very same file: one build, two front ends.
# Incremental: a build stopped by its time limit (exit 124) goes on where it stopped when run again.
set -euo pipefail
B=/root/llama-cuda  # outside the checkout: kept between calls while the machine is
mkdir -p "$B"
mkdir -p "$B/src" && tar -xJf .gpu/llama-src.tar.xz -C "$B/src"  # the files keep their times: unchanged ones are not rebuilt
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
[ -f "$B/build/CMakeCache.txt" ] || cmake -S "$B/src" -B "$B/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF > "$B/configure.log"
timeout "${BUILD_SECONDS:-480}" cmake --build "$B/build" --target llama-server ggml-cpu ggml-cuda -j "$(nproc)" > "$B/build.log" 2>&1 || { status=$?; tail -5 "$B/build.log"; exit $status; }
ls -la "$B/build/bin"
