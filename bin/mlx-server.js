#!/usr/bin/env node
// The command is TypeScript run through tsx; the server child is started with tsx's loader
// in its execArgv, which its worker threads inherit.
import { register } from 'tsx/esm/api';

if (!process.env.MLX_SERVER_CHILD) register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv.slice(2));
