/**
 * Ollama's POST /api/pull over the Hugging Face Hub: `{"model": "ORG/NAME"}` downloads the
 * repository into the Hugging Face cache, streaming Ollama's progress objects as NDJSON
 * (`stream: false`: one object at the end). A client that goes away does not stop the download.
 */
import { badRequest } from '../../core/errors.ts';
import type { PullEvent } from '../hub/download.ts';
import type { ModelPuller } from '../hub/puller.ts';
import { parseRepoId } from '../hub/settings.ts';
import { parseJsonObject, type Route } from '../http/server.ts';
import type { ServeContext } from './context.ts';
import { ollamaError } from './errors.ts';
import { Fields } from './fields.ts';

/** One of Ollama's progress objects for a pull event, or null for events it has none for. */
function ollamaProgress(event: PullEvent): Record<string, unknown> | null {
  switch (event.phase) {
    case 'manifest':
    case 'done':
      return null;
    case 'download':
      return { status: `pulling ${event.file}`, digest: event.digest, total: event.fileTotal, completed: event.fileCompleted };
    case 'verify':
      return { status: `verifying ${event.digest.split(':')[0]} digest`, digest: event.digest };
    case 'link':
      return { status: 'writing manifest' };
  }
}

export function pullRoutes(ctx: ServeContext, puller: ModelPuller): Route[] {
  return [
    {
      method: 'POST',
      path: '/api/pull',
      errors: ollamaError,
      handler: async (exchange) => {
        const fields = Fields.strict(parseJsonObject(await exchange.readBody(ctx.config.maxBodyBytes)), ['model', 'name', 'insecure', 'stream']);
        fields.boolean('insecure');
        const model = fields.string('model') ?? fields.string('name');
        if (model === undefined) throw badRequest("'model' is required", 'model');
        const repo = parseRepoId(model);
        if (fields.boolean('stream') === false) {
          await puller.pull(repo);
          exchange.json(200, { status: 'success' });
          return;
        }
        exchange.startStream('application/x-ndjson');
        exchange.write(`${JSON.stringify({ status: 'pulling manifest' })}\n`);
        try {
          await puller.pull(repo, (event) => {
            const progress = ollamaProgress(event);
            if (progress) exchange.write(`${JSON.stringify(progress)}\n`);
          });
          exchange.write(`${JSON.stringify({ status: 'success' })}\n`);
        } catch (error) {
          exchange.write(`${JSON.stringify({ error: (error as Error).message })}\n`);
        }
        exchange.end();
      },
    },
  ];
}
