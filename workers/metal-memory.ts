/** The device memory source the worker uses: node-mlx's Metal memory API (all zeros and no-ops on the CPU build). */
import type { DeviceMemorySource } from '../core/device-memory.ts';
import { mx } from './architectures/mx.ts';

export const metalMemory: DeviceMemorySource = {
  gpu: mx.metal.isAvailable(),
  counters: () => ({ activeBytes: mx.metal.getActiveMemory(), peakBytes: mx.metal.getPeakMemory(), cacheBytes: mx.metal.getCacheMemory() }),
  workingSetBytes: () => Number(mx.metal.deviceInfo().max_recommended_working_set_size ?? 0),
  clearCache: () => mx.metal.clearCache(),
  setCacheLimit: (bytes) => void mx.metal.setCacheLimit(bytes),
  setMemoryLimit: (bytes) => void mx.metal.setMemoryLimit(bytes, true),
};
