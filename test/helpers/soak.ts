/** Runs the soak command line (`soak/main.ts`) as an operator would, and captures what it prints. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../soak/main.ts', import.meta.url));

export interface SoakRun {
  code: number | null;
  output: string;
}

export function runSoak(args: string[]): Promise<SoakRun> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, output })));
}

/** The check titles a run printed, in order, e.g. ['1. Health Check - ...', ...]. */
export const testLines = (output: string): string[] => [...output.matchAll(/^\[TEST\] (.*)$/gm)].map((m) => m[1] as string);
