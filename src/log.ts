import { pino, type Logger } from 'pino';

export function createLogger(level: string, file: string | null): Logger {
  const options = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (!file) return pino(options, pino.destination({ dest: 1, sync: false }));
  return pino(options, pino.multistream([{ level: level as pino.Level, stream: pino.destination({ dest: 1, sync: false }) }, { level: level as pino.Level, stream: pino.destination({ dest: file, mkdir: true, sync: false }) }]));
}
