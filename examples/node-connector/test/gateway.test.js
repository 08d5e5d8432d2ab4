// The connector under the real gateway, as spiff-arena calls it: discovery, a
// success, a failure of the connector's own, a request the gateway refuses,
// requests at once and a caller that hangs up. Everything runs twice: with the
// example's manifest (worker mode) and with the spawn-mode manifest the README shows.
// The gateway runs as `$GATEWAY_PYTHON -m gateway serve` (GATEWAY_PYTHON defaults
// to python3); these tests are skipped only when GATEWAY_PYTHON is unset and
// python3 has no gateway module.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { startHeldService } from '../dev/held-service.js';
import { startTicketsService } from '../dev/tickets-service.js';

const DIRECTORY = fileURLToPath(new URL('..', import.meta.url));
const PYTHON = process.env.GATEWAY_PYTHON || 'python3';
const TOKEN = 'tk_live_5ecret';
const STARTUP_MS = 20_000;
const REQUEST_MS = 15_000;
const SHUTDOWN_MS = 10_000;

/** @returns {string | false}  why the tests cannot run, or false */
function skipReason() {
  if (process.env.GATEWAY_PYTHON) {
    return false;
  }
  const probe = spawnSync(PYTHON, ['-c', 'import gateway'], { timeout: 10_000 });
  return probe.status === 0 ? false : `${PYTHON} cannot import gateway; set GATEWAY_PYTHON`;
}

/** @returns {Promise<number>}  a port free on 127.0.0.1 a moment ago */
function freePort() {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

/**
 * The README's spawn-mode manifest, in a new directory: this directory's manifest
 * without `mode` and `workers`, each command with its own `run`, by absolute path.
 * @returns {{directory: string, remove: () => void}}
 */
function spawnModeManifest() {
  const connector = join(DIRECTORY, 'connector.js');
  let text = readFileSync(join(DIRECTORY, 'manifest.yaml'), 'utf8');
  for (const line of ['  run: [node, connector.js]\n', '  mode: worker\n']) {
    assert.ok(text.includes(line), `manifest.yaml no longer has the line ${JSON.stringify(line)}`);
    text = text.replace(line, '');
  }
  text = text.replace(/^ {2}workers: .*\n/m, '');
  const runOwn = (/** @type {string} */ line, /** @type {string} */ name) =>
    `${line}    run: [node, ${connector}, ${name}]\n`;
  text = text.replace(/^ {2}- name: (\w+)\n/gm, runOwn);
  assert.doesNotMatch(text, /^ *(mode|workers):/m);

  const directory = mkdtempSync(join(tmpdir(), 'tickets-spawn-'));
  writeFileSync(join(directory, 'manifest.yaml'), text);
  return { directory, remove: () => rmSync(directory, { recursive: true, force: true }) };
}

/**
 * Starts the gateway on one directory's manifests and waits until it is live.
 * @param {string} manifests  the directory
 * @returns {Promise<{url: string, log: () => string, stop: () => Promise<void>}>}
 */
async function startGateway(manifests) {
  const port = await freePort();
  const env = { ...process.env };
  // The tests speak to it without a key and with its default settings.
  for (const name of Object.keys(env)) {
    if (name === 'CONNECTOR_PROXY_API_KEY' || name.startsWith('CONNECTOR_GATEWAY_')) {
      delete env[name];
    }
  }
  const args = ['--host', '127.0.0.1', '--port', String(port), '--manifests', manifests];
  const child = spawn(PYTHON, ['-m', 'gateway', 'serve', ...args], {
    cwd: DIRECTORY,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (/** @type {Buffer} */ chunk) => (output = (output + chunk).slice(-20_000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', resolve));

  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), SHUTDOWN_MS);
    await exited;
    clearTimeout(timer);
  };

  const giveUp = Date.now() + STARTUP_MS;
  while (Date.now() < giveUp) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`The gateway exited at startup (${child.exitCode ?? child.signalCode}):\n${output}`);
    }
    const live = await fetch(`${url}/v1/liveness`, { signal: AbortSignal.timeout(1000) }).then(
      (response) => response.status === 200,
      () => false,
    );
    if (live) {
      return { url, log: () => output, stop };
    }
    await sleep(100);
  }
  await stop();
  throw new Error(`The gateway was not live within ${STARTUP_MS} ms:\n${output}`);
}

/** The reserved keys Arena adds to every request body. */
function spiffKeys() {
  return {
    spiff__task_data: { customer: 'ACME', notes: 'x'.repeat(10_000) },
    spiff__process_instance_id: 42,
    spiff__process_model_identifier: 'support/escalate',
    spiff__task_id: randomUUID(),
    spiff__callback_url: 'http://127.0.0.1:7000/v1.0/tasks/callback',
  };
}

/** Each way to run the example: its own manifest, and the spawn-mode one its README shows. */
const MODES = [
  { mode: 'worker', manifests: () => ({ directory: DIRECTORY, remove: () => {} }) },
  { mode: 'spawn', manifests: spawnModeManifest },
];
const SKIP = skipReason();

for (const { mode, manifests } of MODES) {
  describe(`under the gateway, ${mode} mode`, { skip: SKIP }, () => {
    /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
    let service;
    /** @type {Awaited<ReturnType<typeof startGateway>>} */
    let gateway;
    /** @type {ReturnType<typeof spawnModeManifest>} */
    let manifest;
    before(async () => {
      service = await startTicketsService({ token: TOKEN });
      manifest = manifests();
      gateway = await startGateway(manifest.directory);
    });
    after(async () => {
      await gateway?.stop();
      await service?.close();
      manifest?.remove();
    });

    /**
     * @param {string} command  e.g. "CreateTicket"
     * @param {Record<string, unknown>} params
     * @param {AbortSignal} [signal]  for a caller that hangs up
     */
    async function call(command, params, signal = AbortSignal.timeout(REQUEST_MS)) {
      const response = await fetch(`${gateway.url}/v1/do/tickets/${command}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'spiffworkflow-backend' },
        body: JSON.stringify({ ...params, ...spiffKeys() }),
        signal,
      });
      return { status: response.status, answer: await response.json() };
    }

    test('discovery lists both commands with their parameter types', async () => {
      const response = await fetch(`${gateway.url}/v1/commands`, { signal: AbortSignal.timeout(REQUEST_MS) });
      const commands = await response.json();

      assert.equal(response.status, 200);
      const create = commands.find((/** @type {{id: string}} */ c) => c.id === 'tickets/CreateTicket');
      assert.deepEqual(
        create.parameters.map((/** @type {{id: string, type: string, required: boolean}} */ p) => [
          p.id,
          p.type,
          p.required,
        ]),
        [
          ['base_url', 'str', true],
          ['api_token', 'str', false],
          ['title', 'str', true],
          ['description', 'str', false],
          ['priority', 'int', false],
          ['urgent', 'bool', false],
          ['labels', 'any', false],
          ['fields', 'any', false],
        ],
      );
      assert.ok(commands.some((/** @type {{id: string}} */ c) => c.id === 'tickets/GetTicket'));
    });

    test('CreateTicket answers the new ticket in the envelope, with its log line', async () => {
      const params = { base_url: service.url, api_token: TOKEN, title: 'Via gateway', labels: ['ops'] };

      const { status, answer } = await call('CreateTicket', params);

      assert.equal(status, 200, JSON.stringify(answer));
      assert.equal(answer.error, null);
      assert.equal(answer.command_response_version, 2);
      assert.equal(answer.command_response.http_status, 201);
      assert.deepEqual(answer.command_response.body, {
        id: 1,
        status: 'open',
        title: 'Via gateway',
        priority: 3, // the manifest's default
        urgent: false,
        labels: ['ops'],
        fields: {},
      });
      const logs = /** @type {string[]} */ (answer.spiff__logs);
      // Once: from stderr in spawn mode, from the answer's "logs" in worker mode.
      assert.deepEqual(
        logs.map((line) => line.replace(/\d+ ms$/, 'N ms')),
        [`POST ${service.url}/tickets -> 201 in N ms`],
      );
      assert.doesNotMatch(JSON.stringify(answer), new RegExp(TOKEN));
      assert.match(String(service.requests.at(-1)?.headers['idempotency-key']), /^[0-9a-f-]{36}$/);
    });

    test('a missing ticket is the connector\'s own TicketNotFound, inner 404', async () => {
      const params = { base_url: service.url, api_token: TOKEN, ticket_id: 31 };

      const { status, answer } = await call('GetTicket', params);

      assert.equal(status, 200, JSON.stringify(answer));
      assert.equal(answer.error.error_code, 'TicketNotFound');
      assert.equal(answer.error.message, `Ticket 31 does not exist at ${service.url}/tickets/31.`);
      assert.equal(answer.command_response.http_status, 404);
    });

    test('a missing required parameter is refused by the gateway: outer 400', async () => {
      const { status, answer } = await call('CreateTicket', { base_url: service.url, priority: 2 });

      assert.equal(status, 400, JSON.stringify(answer));
      assert.equal(answer.error.error_code, 'missing_parameter');
      assert.match(answer.error.message, /title/);
    });

    test('a request is answered while another waits on the tickets service', async () => {
      const slow = await startHeldService();
      try {
        const waiting = call('GetTicket', { base_url: slow.url, ticket_id: 7 });
        await slow.received();

        const missing = { base_url: service.url, api_token: TOKEN, ticket_id: 32 };
        const { answer } = await call('GetTicket', missing);
        slow.release();

        assert.equal(answer.error.error_code, 'TicketNotFound');
        assert.deepEqual((await waiting).answer.command_response.body, { id: 7 });
      } finally {
        await slow.close();
      }
    });

    test('a caller that hangs up stops the call to the tickets service', async () => {
      const slow = await startHeldService();
      const caller = new AbortController();
      try {
        const hungUp = call('GetTicket', { base_url: slow.url, ticket_id: 7 }, caller.signal);
        await slow.received();

        caller.abort();

        await assert.rejects(hungUp, { name: 'AbortError' });
        await slow.abandoned();
      } finally {
        await slow.close();
      }
    });

    if (mode === 'worker') {
      test('one pool of workers serves both commands', async () => {
        await call('GetTicket', { base_url: service.url, api_token: TOKEN, ticket_id: 33 });
        await call('CreateTicket', { base_url: service.url, api_token: TOKEN, title: 'Pooled' });

        // Two pools would each have started a worker for their first request.
        const started = [...gateway.log().matchAll(/Started worker \d+ of connector 'tickets'/g)];
        assert.equal(started.length, 1, gateway.log());
      });
    }
  });
}
