/** What the supervisor starts, bundled into dist/server.js (src/cli/bundle.ts). */
import { main } from './main.ts';

await main(process.argv.slice(2));
