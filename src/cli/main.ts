/** The `mlx-server` command line. */
import { ConfigError, flagsHelp, parseServerConfig, type ServerConfig } from '../config.ts';
import { ListenError } from '../http/server.ts';
import { createLogger } from '../log.ts';
import { startServer, type RunningServer } from '../server.ts';
import { CLIENT_COMMANDS, CLIENT_USAGE, isUserMessage, runClientCommand } from './client.ts';
import { doctorCommand } from './doctor.ts';
import { CHILD_MARKER, CONFIG_ERROR_EXIT, superviseServer } from './launcher.ts';
import { pullCommand } from './pull.ts';

const USAGE = `mlx-server: serve local LLMs with MLX over OpenAI- and Ollama-compatible HTTP

usage:
  mlx-server serve [flags]     start the server (under a supervisor that restarts it on a crash)
  mlx-server pull ORG/NAME     download a model from the Hugging Face Hub into its cache (no server needed)
  mlx-server doctor [flags]    print the platform and MLX device, then load and unload a model and
                               show how much memory came back (docs/platforms.md)
  mlx-server help              this text

client commands (they talk to a running server):
${CLIENT_USAGE}

flags (each has an environment twin):
${flagsHelp()}
`;

/**
 * Exit when the supervisor is gone, so a killed launcher never leaves an orphan holding the port.
 * The supervisor's pid comes from the environment: one killed while this process was still
 * starting has already handed it to another parent, so the first ppid seen can be the wrong one.
 */
function exitWithParent(): void {
  const parent = Number(process.env[CHILD_MARKER]) || process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) process.exit(0);
  }, 1000).unref();
}

/** What a person at a terminal needs from the start-up; the JSON log says it for machines. */
function servingLine(config: ServerConfig, server: RunningServer): string {
  const { ports } = server;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const where = ports.main === null ? `http://${host}:${ports.admin}` : `http://${host}:${ports.main} (admin on :${ports.admin})`;
  const model = server.context.engine.loadedModel?.name ?? server.context.registry.defaultName;
  return `serving on ${where} — model ${model} loads on first request\n`;
}

async function serveInProcess(args: string[]): Promise<void> {
  let config;
  try {
    config = parseServerConfig(args);
  } catch (error) {
    process.stderr.write(`mlx-server: ${(error as Error).message}\n(mlx-server --help lists the flags)\n`);
    process.exit(CONFIG_ERROR_EXIT);
  }
  const logger = createLogger(config.logLevel, config.logFile);
  exitWithParent();
  let server;
  try {
    server = await startServer(config, logger);
  } catch (error) {
    logger.fatal({ err: error }, 'cannot start');
    logger.flush();
    if (error instanceof ListenError) process.stderr.write(`mlx-server: ${error.message}\n`);
    setTimeout(() => process.exit(CONFIG_ERROR_EXIT), 100);
    return;
  }
  if (process.stdout.isTTY) process.stdout.write(servingLine(config, server));
  let closing = false;
  const shutdown = (signal: string): void => {
    if (closing) return;
    closing = true;
    logger.info({ event: 'shutdown', signal }, 'shutting down');
    void server.close().finally(() => {
      logger.flush();
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGHUP', () => shutdown('SIGHUP'));
}

export async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  switch (command) {
    case 'serve':
      if (process.env[CHILD_MARKER]) await serveInProcess(args);
      else {
        try {
          const { hostNotice } = parseServerConfig(args);
          if (hostNotice) process.stderr.write(`mlx-server: ${hostNotice}\n`);
        } catch (error) {
          if (!(error instanceof ConfigError) && !(error instanceof TypeError)) throw error;
          process.stderr.write(`mlx-server: ${error.message}\n(mlx-server --help lists the flags)\n`);
          process.exit(CONFIG_ERROR_EXIT);
        }
        await superviseServer(args);
      }
      return;
    case 'pull':
      await pullCommand(args);
      return;
    case 'doctor':
      await doctorCommand(args);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return;
    default:
      if (CLIENT_COMMANDS.includes(command)) {
        try {
          await runClientCommand(command, args);
        } catch (error) {
          if (!isUserMessage(error) && !(error instanceof TypeError)) throw error;
          process.stderr.write(`mlx-server: ${error.message}\n`);
          process.exit(1);
        }
        return;
      }
      process.stderr.write(`mlx-server: unknown command '${command}'\n\n${USAGE}`);
      process.exit(CONFIG_ERROR_EXIT);
  }
}
