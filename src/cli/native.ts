/**
 * node-mlx's native binary: the registry tarball holds the Linux x86-64 CPU build, and its
 * install script (skipped here by .npmrc, since it downloads from GitHub) fetches the Metal
 * build on a Mac: mlx-mac-arm64.node and mlx-mac-arm64.metallib from the release matching the
 * package version. Before serving, make sure both are there and the binary loads, and say
 * plainly what is missing.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const packageDir = dirname(require.resolve('@frost-beta/mlx/package.json'));
const binary = join(packageDir, 'build', 'Release', 'mlx.node');

function binaryFormat(): 'elf' | 'mach-o' | 'unknown' {
  const header = Buffer.alloc(4);
  try {
    const fd = openSync(binary, 'r');
    readSync(fd, header, 0, 4, 0);
    closeSync(fd);
  } catch {
    return 'unknown';
  }
  if (header.toString('latin1') === '\x7fELF') return 'elf';
  const magic = header.readUInt32LE(0);
  return magic === 0xfeedfacf || magic === 0xcafebabe ? 'mach-o' : 'unknown';
}

const SYSTEM_PACKAGES: Record<string, string> = {
  'libblas.so.3': 'libopenblas0-pthread',
  'liblapack.so.3': 'libopenblas0-pthread',
  'libopenblas.so.0': 'libopenblas0-pthread',
  'libgfortran.so.5': 'libgfortran5',
};

/** On Apple silicon the Metal build is two files: the addon and its GPU kernels, which MLX loads from beside it. */
const metalLibrary = join(packageDir, 'build', 'Release', 'mlx.metallib');
const needsMetalLibrary = process.platform === 'darwin' && process.arch === 'arm64';

/** Returns null when node-mlx loads, else one line saying what to do. */
export function checkNativeRuntime(): string | null {
  const wanted = process.platform === 'darwin' ? 'mach-o' : 'elf';
  if (binaryFormat() !== wanted || (needsMetalLibrary && !existsSync(metalLibrary))) {
    const fetched = spawnSync(process.execPath, [join(packageDir, 'install.js')], { stdio: 'inherit' });
    if (fetched.status !== 0) return `node-mlx has no ${process.platform} binary and fetching it failed; run: npm rebuild @frost-beta/mlx --ignore-scripts=false`;
  }
  const probe = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(binary)})`], { encoding: 'utf8' });
  if (probe.status === 0) return null;
  const missing = /(lib[\w.+-]+\.so[\d.]*): cannot open shared object file/.exec(probe.stderr)?.[1];
  if (missing) {
    const pkg = SYSTEM_PACKAGES[missing];
    return `node-mlx cannot load: ${missing} is missing. Install it with: sudo apt-get install -y ${pkg ?? 'the package that provides ' + missing}`;
  }
  return `node-mlx cannot load: ${probe.stderr.trim().split('\n').find((l) => l.includes('Error')) ?? probe.stderr.trim()}`;
}
