/**
 * Memory on Apple silicon's GPU, checked without a Mac: the logic the MLX worker runs is driven
 * here through the same device-memory interface, with a fake counter source that behaves like
 * MLX's Metal allocator (freed buffers go to a cache and stay there until it is cleared). This
 * machine's CPU build reports zeros, so the fake is the only way to see non-zero counters here.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { memoryStatus } from '../src/api/admin.ts';
import { parseServerConfig } from '../src/config.ts';
import { ServeError } from '../core/errors.ts';
import { estimateLoadBytes, planLoad } from '../src/models/footprint.ts';
import { configureDeviceMemory, publishDeviceMemory, releaseDeviceMemory, type DeviceMemoryCounters, type DeviceMemorySource } from '../core/device-memory.ts';
import { createTelemetryBuffers, Telemetry } from '../core/telemetry.ts';
import { tempDir } from './helpers/server.ts';

const GiB = 1024 ** 3;

/** Buffers in use, and freed ones kept for reuse up to the cache limit, as MLX's Metal allocator keeps them. */
class FakeMetal implements DeviceMemorySource {
  readonly gpu = true;
  memoryLimit = 0;
  cacheLimit = Number.POSITIVE_INFINITY;
  private active = 0;
  private peak = 0;
  private cache = 0;
  /** Bytes whose arrays nothing references any more; freed only when they are collected. */
  private unreachable = 0;

  constructor(private readonly workingSet: number) {}

  allocate(bytes: number): void {
    this.active += bytes;
    this.peak = Math.max(this.peak, this.active);
  }

  drop(bytes: number): void {
    this.unreachable += bytes;
  }

  /** What a garbage collection does to node-mlx arrays: their buffers are freed into the cache. */
  collect(): void {
    this.active -= this.unreachable;
    this.cache = Math.min(this.cacheLimit, this.cache + this.unreachable);
    this.unreachable = 0;
  }

  counters(): DeviceMemoryCounters {
    return { activeBytes: this.active, peakBytes: this.peak, cacheBytes: this.cache };
  }

  workingSetBytes(): number {
    return this.workingSet;
  }

  clearCache(): void {
    this.cache = 0;
  }

  setCacheLimit(bytes: number): void {
    this.cacheLimit = bytes;
  }

  setMemoryLimit(bytes: number): void {
    this.memoryLimit = bytes;
  }
}

/** The CPU build: every counter 0, and deviceInfo() throws, so it must never be asked. */
const cpuBuild: DeviceMemorySource = {
  gpu: false,
  counters: () => ({ activeBytes: 0, peakBytes: 0, cacheBytes: 0 }),
  workingSetBytes: () => {
    throw new Error('[metal::device_info] Cannot get device info without metal backend');
  },
  clearCache: () => undefined,
  setCacheLimit: () => undefined,
  setMemoryLimit: () => undefined,
};

const settings = { cacheLimitBytes: 512 * 1024 ** 2, memoryLimitBytes: 0 };

t.test('a fresh worker on a GPU bounds MLX by the working set and its cache by the setting, and publishes the working set', async (t) => {
  const metal = new FakeMetal(12 * GiB);
  const telemetry = new Telemetry(createTelemetryBuffers());
  configureDeviceMemory(metal, settings, telemetry);
  t.equal(metal.memoryLimit, 12 * GiB);
  t.equal(metal.cacheLimit, settings.cacheLimitBytes);
  t.equal(telemetry.read('deviceWorkingSetBytes'), 12 * GiB);

  const capped = new FakeMetal(12 * GiB);
  configureDeviceMemory(capped, { ...settings, memoryLimitBytes: 8 * GiB }, new Telemetry(createTelemetryBuffers()));
  t.equal(capped.memoryLimit, 8 * GiB, 'a smaller --memory-limit wins over the working set');

  const unknown = new FakeMetal(0);
  unknown.memoryLimit = -1;
  configureDeviceMemory(unknown, settings, new Telemetry(createTelemetryBuffers()));
  t.equal(unknown.memoryLimit, -1, 'a device that reports no working set is not limited to zero bytes');
});

t.test('the cache limit while serving is a flag with an environment twin, 512 MiB unless set', async (t) => {
  t.equal(parseServerConfig([], {}).mlxCacheLimitBytes, 512 * 1024 ** 2);
  t.equal(parseServerConfig(['--mlx-cache-limit', '0'], {}).mlxCacheLimitBytes, 0, 'the flag');
  t.equal(parseServerConfig([], { MLX_SERVER_MLX_CACHE_LIMIT: '1073741824' }).mlxCacheLimitBytes, GiB, 'its twin');
  t.throws(() => parseServerConfig(['--mlx-cache-limit=-1'], {}), /--mlx-cache-limit must be an integer >= 0/);
});

t.test('on the CPU build nothing is configured or published, and deviceInfo is never asked', async (t) => {
  const telemetry = new Telemetry(createTelemetryBuffers());
  configureDeviceMemory(cpuBuild, settings, telemetry);
  publishDeviceMemory(cpuBuild, telemetry);
  t.equal(telemetry.read('deviceWorkingSetBytes'), 0);
  t.equal(telemetry.read('deviceActiveBytes'), 0);
});

t.test('unloading empties the buffer cache once the model arrays are collected', async (t) => {
  const metal = new FakeMetal(12 * GiB);
  const telemetry = new Telemetry(createTelemetryBuffers());
  configureDeviceMemory(metal, { ...settings, cacheLimitBytes: 4 * GiB }, telemetry);
  metal.allocate(3 * GiB);
  publishDeviceMemory(metal, telemetry);
  t.equal(telemetry.read('deviceActiveBytes'), 3 * GiB, 'the loaded model is published as active memory');

  metal.drop(3 * GiB);
  const release = await releaseDeviceMemory(metal, telemetry, () => metal.collect());
  t.equal(release.before.activeBytes, 3 * GiB);
  t.same(release.after, { activeBytes: 0, peakBytes: 3 * GiB, cacheBytes: 0 }, 'nothing is in use and nothing is cached');
  t.equal(telemetry.read('deviceActiveBytes'), 0);
  t.equal(telemetry.read('deviceCacheBytes'), 0, 'status sees the empty cache');
});

t.test('status reports MLX counters when the GPU reports them, the process figure beside them', async (t) => {
  const metal = new FakeMetal(12 * GiB);
  const telemetry = new Telemetry(createTelemetryBuffers());
  configureDeviceMemory(metal, settings, telemetry);
  metal.allocate(2.5 * GiB);
  metal.drop(0.5 * GiB);
  metal.collect();
  publishDeviceMemory(metal, telemetry);
  telemetry.modelState = 'loaded';
  const memory = memoryStatus(telemetry);
  t.equal(memory.active_memory_gb, 2, 'active memory is MLX active memory');
  t.equal(memory.peak_memory_gb, 2.5);
  t.equal(memory.cache_memory_gb, 0.5);
  t.equal(memory.working_set_gb, 12);
  t.equal(memory.device, 'gpu');
  t.type(memory.process_active_memory_gb, 'number', 'the process figure is kept beside it');
  t.type(memory.rss_gb, 'number');
});

t.test('on the CPU status reports the process figures, as before', async (t) => {
  const telemetry = new Telemetry(createTelemetryBuffers());
  configureDeviceMemory(cpuBuild, settings, telemetry);
  telemetry.write('baselineRssBytes', 1);
  telemetry.write('modelLoads', 1);
  telemetry.modelState = 'loaded';
  const memory = memoryStatus(telemetry);
  t.equal(memory.device, 'cpu');
  t.equal(memory.cache_memory_gb, 0);
  t.equal(memory.active_memory_gb, memory.process_active_memory_gb);
  t.ok((memory.active_memory_gb as number) > 0, 'the resident set above the baseline');
});

/** A model folder whose one safetensors header declares a 4-bit quantized matrix of `rows` x 4096. */
function quantizedModel(rows: number): string {
  const dir = join(tempDir('mlx-device-guard-'), 'q4');
  mkdirSync(dir, { recursive: true });
  const header = JSON.stringify({
    'mlp.weight': { dtype: 'U32', shape: [rows, 512], data_offsets: [0, 0] },
    'mlp.scales': { dtype: 'F16', shape: [rows, 64], data_offsets: [0, 0] },
    'mlp.biases': { dtype: 'F16', shape: [rows, 64], data_offsets: [0, 0] },
  });
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([length, Buffer.from(header)]));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', quantization: { group_size: 64, bits: 4 } }));
  return dir;
}

t.test("the load guard on a GPU measures against the device's working set, not the OS's free memory", async (t) => {
  const budget = { reserveBytes: 0, limitBytes: 0, promptCacheBytes: 0, prefillChunk: 1 };
  const small = quantizedModel(4096);
  const native = estimateLoadBytes(small, false).native;
  t.equal(planLoad('q4', small, 'auto', budget, 1024 * GiB).placement, 'native', 'auto keeps quantized weights as stored on a GPU, however much room there is');
  t.equal(planLoad('q4', small, 'auto', budget, native).placement, 'native', 'a working set of exactly the estimate is enough');
  t.equal(planLoad('q4', small, 'auto', budget, 0).placement, 'dequantized', 'and dequantizes them on a CPU where they fit');
  const refused = (() => {
    try {
      planLoad('q4', small, 'auto', budget, native - 1);
      return null;
    } catch (error) {
      return error as ServeError;
    }
  })();
  t.equal(refused?.code, 'insufficient_memory', 'one byte short of the working set is refused, whatever the OS has free');
  t.match(refused?.message ?? '', /recommended working set/);

  const huge = quantizedModel(2 ** 26);
  const hugeBytes = estimateLoadBytes(huge, false).native;
  t.ok(hugeBytes > 64 * GiB, `a model of ${(hugeBytes / GiB).toFixed(0)} GiB, more than this machine has`);
  t.equal(planLoad('huge', huge, 'auto', budget, hugeBytes * 2).placement, 'native', 'fits a GPU whose working set holds it');
  t.throws(() => planLoad('huge', huge, 'auto', budget, 0), { code: 'insufficient_memory' }, 'the same model is refused on the CPU');
});
