/**
 * llama-server on the very CPU kernels our llama.cpp engine runs. node-llama-cpp's prebuilt
 * package ships one libggml-cpu per CPU family and loads the one that scores best on this CPU,
 * while build-llama-server.sh builds llama-server's own for this CPU (GGML_NATIVE). The two can
 * differ in more than speed: on an Intel Xeon with AMX the native build died with an illegal
 * instruction on a Q4_0 file that the prebuilt `sapphirerapids` library ran. Both come from the
 * same llama.cpp revision, so llama-server can load the library our server mapped instead: a
 * folder holding it as `libggml-cpu.so.0`, first on LD_LIBRARY_PATH. Its `libggml-base.so` link
 * makes that library bind to the ggml-base llama-server has already loaded, not to the package's copy.
 */
import { mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** The libggml-cpu a process has mapped (from its /proc/PID/maps text), or null. */
export function ggmlCpuLibraryIn(maps: string): string | null {
  for (const line of maps.split('\n')) {
    const path = line.indexOf('/') >= 0 ? line.slice(line.indexOf('/')) : '';
    if (/^libggml-cpu[^/]*\.so/.test(basename(path))) return path;
  }
  return null;
}

/** The libggml-cpu process `pid` runs, or null (no such process, not Linux, or no llama.cpp loaded). */
export function mappedGgmlCpuLibrary(pid: number): string | null {
  try {
    return ggmlCpuLibraryIn(readFileSync(`/proc/${pid}/maps`, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * The environment that makes the llama-server `binary` (built with its shared ggml libraries
 * beside it) run `library`: a folder next to the build's bin/, named after the library. Null when
 * the build has no libggml-base.so.0 beside the binary (not a build this recipe fits).
 */
export function sameCpuLibraryEnv(binary: string, library: string): { LD_LIBRARY_PATH: string } | null {
  const bin = dirname(realpathSync(binary));
  const base = readdirSync(bin).find((name) => name === 'libggml-base.so.0');
  if (!base) return null;
  const folder = join(bin, '..', `same-cpu-${basename(library).replace(/\.so.*$/, '')}`);
  rmSync(folder, { recursive: true, force: true });
  mkdirSync(folder, { recursive: true });
  symlinkSync(realpathSync(library), join(folder, 'libggml-cpu.so.0'));
  symlinkSync(realpathSync(join(bin, base)), join(folder, 'libggml-base.so'));
  return { LD_LIBRARY_PATH: folder };
}
