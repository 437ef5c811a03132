/**
 * MLX's own memory accounting and controls on a GPU device (Metal on Apple silicon), behind one
 * small interface. The worker drives the real one (workers/metal-memory.ts); tests drive the same
 * logic with a fake, since Metal cannot run on the machines the project is built on.
 *
 * Why it matters: on Metal, MLX's allocator keeps freed buffers in a process-wide cache for reuse,
 * and a worker thread's exit does not empty it. So an unload must drop every array, let V8 collect
 * their wrappers (which frees their buffers into the cache) and then clear the cache, all from the
 * thread that owns MLX; and what a model holds is MLX's active memory, not the process's resident
 * set, which counts GPU buffers differently in unified memory. On the CPU build every counter is 0
 * and nothing here acts: the process figures stay the truth there.
 */
import type { Telemetry } from './telemetry.ts';

export interface DeviceMemoryCounters {
  activeBytes: number;
  peakBytes: number;
  cacheBytes: number;
}

export interface DeviceMemorySource {
  /** True when MLX computes on a Metal GPU. */
  readonly gpu: boolean;
  counters(): DeviceMemoryCounters;
  /** deviceInfo()'s max_recommended_working_set_size: what the GPU may hold without paging. */
  workingSetBytes(): number;
  clearCache(): void;
  setCacheLimit(bytes: number): void;
  /** A relaxed limit: beyond it MLX first frees its cache and waits on running work, and never throws. */
  setMemoryLimit(bytes: number): void;
}

export interface DeviceMemorySettings {
  /** Bytes of freed buffers MLX keeps for reuse while serving (--mlx-cache-limit). */
  cacheLimitBytes: number;
  /** --memory-limit; 0: the working set alone bounds MLX. */
  memoryLimitBytes: number;
}

export function publishDeviceMemory(source: DeviceMemorySource, telemetry: Telemetry): void {
  if (!source.gpu) return;
  const counters = source.counters();
  telemetry.write('deviceActiveBytes', counters.activeBytes);
  telemetry.write('devicePeakBytes', counters.peakBytes);
  telemetry.write('deviceCacheBytes', counters.cacheBytes);
}

/** Run once by each fresh worker: bounds MLX by the working set and its cache by the setting, and says so in telemetry. */
export function configureDeviceMemory(source: DeviceMemorySource, settings: DeviceMemorySettings, telemetry: Telemetry): void {
  if (!source.gpu) return;
  const workingSet = source.workingSetBytes();
  const limits = [workingSet, settings.memoryLimitBytes].filter((bytes) => bytes > 0);
  if (limits.length > 0) source.setMemoryLimit(Math.min(...limits));
  source.setCacheLimit(settings.cacheLimitBytes);
  telemetry.write('deviceWorkingSetBytes', workingSet);
  publishDeviceMemory(source, telemetry);
}

export interface DeviceRelease {
  before: DeviceMemoryCounters;
  after: DeviceMemoryCounters;
}

/**
 * The last step before the worker ends, once the caller has dropped its references to the model:
 * collect (node-mlx frees an array's buffer only when V8 collects its wrapper, and the native
 * finalizers run after the collection, hence the yield and the second pass), then empty MLX's cache.
 */
export async function releaseDeviceMemory(source: DeviceMemorySource, telemetry: Telemetry, collect: () => void): Promise<DeviceRelease> {
  const before = source.counters();
  collect();
  await new Promise((resolve) => setImmediate(resolve));
  collect();
  source.clearCache();
  publishDeviceMemory(source, telemetry);
  return { before, after: source.counters() };
}

/** What the main thread knows of the device from telemetry: null when MLX runs on the CPU. */
export function deviceMemory(telemetry: Telemetry): (DeviceMemoryCounters & { workingSetBytes: number }) | null {
  const workingSetBytes = telemetry.read('deviceWorkingSetBytes');
  if (workingSetBytes <= 0) return null;
  return {
    workingSetBytes,
    activeBytes: telemetry.read('deviceActiveBytes'),
    peakBytes: telemetry.read('devicePeakBytes'),
    cacheBytes: telemetry.read('deviceCacheBytes'),
  };
}
