/**
 * The status page in Debian's headless Chromium: it shows two hosts side by side (the second
 * one allows the first's page through --cors-origin), follows the model from unloaded to loaded
 * after a request, fills in latency percentiles and tokens, and marks an unreachable host.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import t from 'tap';
import { freePort } from './helpers/nginx.ts';
import { post, startServer, type TestServer } from './helpers/server.ts';

const CHROMIUM = '/usr/bin/chromium';
/** Without the background-networking flags Chromium keeps dialling Google, which this network refuses. */
const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** What one host's card shows, read from the page. */
async function card(page: Page, host: string): Promise<Record<string, string>> {
  return page.evaluate((origin) => {
    const root = document.querySelector(`[data-host="${origin}"]`);
    if (!root) return {};
    const fields = Object.fromEntries([...root.querySelectorAll<HTMLElement>('[data-field]')].map((el) => [el.dataset.field as string, el.textContent ?? '']));
    const firstToken = root.querySelector('[data-latency="time_to_first_token"]');
    return { ...fields, down: String(root.classList.contains('down')), firstTokenRow: firstToken?.textContent ?? '' };
  }, host);
}

async function waitForCard(page: Page, host: string, field: string, expected: (value: string) => boolean): Promise<Record<string, string>> {
  const deadline = Date.now() + 90_000;
  for (;;) {
    const shown = await card(page, host);
    if (expected(shown[field] ?? '')) return shown;
    if (Date.now() > deadline) throw new Error(`${host}: ${field} never matched; the card shows ${JSON.stringify(shown)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Without a browser the page goes untested: said on stderr and as a named skip in tap's summary, so no run passes quietly without it. */
const noBrowser = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing, so the status page was NOT tested (sudo apt-get install -y chromium)`;
if (noBrowser) process.stderr.write(`\nSKIPPED ${noBrowser}\n\n`);

let browser: Browser | null = null;
const servers: TestServer[] = [];
t.teardown(async () => {
  await browser?.close();
  await Promise.all(servers.map((server) => server.stop()));
});

t.test('the status page shows live state for several hosts', { skip: noBrowser }, async (t) => {
  const [home, other] = await Promise.all([startServer(), startServer(['--cors-origin', '*'])]);
  servers.push(home, other);
  const missing = `http://127.0.0.1:${await freePort()}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS });
  const page = await browser.newPage();
  await page.goto(`${home.url}/dashboard?interval=250&hosts=${encodeURIComponent([home.url, other.url, missing].join(','))}`);

  const before = await waitForCard(page, home.url, 'model-state', (state) => state === 'unloaded');
  t.match(before.active, '0', 'no request is active yet');
  t.equal((await waitForCard(page, other.url, 'model-state', (state) => state === 'unloaded')).down, 'false', 'the second host is read across origins');

  const answer = await post(`${home.url}/v1/completions`, { prompt: 'Hello', max_tokens: 12 });
  t.equal(answer.status, 200, 'a completion on the first host');

  const after = await waitForCard(page, home.url, 'model-state', (state) => state === 'loaded');
  t.equal(after['model-name'], 'tiny-qwen3', 'shows the loaded model');
  t.match(after.served, /^1 requests, 0 failed/, 'counts the request');
  t.match(after.memory, /GiB resident/, 'shows memory');
  const latency = await waitForCard(page, home.url, 'firstTokenRow', (row) => row.endsWith('1'));
  t.match(latency.firstTokenRow, /^first token\d/, 'shows time-to-first-token percentiles from one sample');
  t.match(latency['tokens-per-second'], /^\d+(\.\d)?$/, 'shows a token rate');

  t.equal((await card(page, other.url))['model-state'], 'unloaded', 'the idle host still shows unloaded');
  const down = await waitForCard(page, missing, 'error', (error) => error.startsWith('unreachable'));
  t.equal(down.down, 'true', 'an unreachable host is marked down');
});
