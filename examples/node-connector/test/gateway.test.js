// The connector under the real gateway, as spiff-arena calls it: discovery, a
// success, a failure of the connector's own, and a request the gateway refuses.
// The gateway runs as `$GATEWAY_PYTHON -m gateway serve` (GATEWAY_PYTHON defaults
// to python3); these tests are skipped only when GATEWAY_PYTHON is unset and
// python3 has no gateway module.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

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
 * Starts the gateway on this directory's manifest and waits until it is live.
 * @returns {Promise<{url: string, stop: () => Promise<void>}>}
 */
async function startGateway() {
  const port = await freePort();
  const env = { ...process.env };
  // The tests speak to it without a key and with its default settings.
  for (const name of Object.keys(env)) {
    if (name === 'CONNECTOR_PROXY_API_KEY' || name.startsWith('CONNECTOR_GATEWAY_')) {
      delete env[name];
    }
  }
  const args = ['--host', '127.0.0.1', '--port', String(port), '--manifests', DIRECTORY];
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
      return { url, stop };
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

describe('under the gateway', { skip: skipReason() }, () => {
  /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
  let service;
  /** @type {Awaited<ReturnType<typeof startGateway>>} */
  let gateway;
  before(async () => {
    service = await startTicketsService({ token: TOKEN });
    gateway = await startGateway();
  });
  after(async () => {
    await gateway?.stop();
    await service?.close();
  });

  /**
   * @param {string} command  e.g. "CreateTicket"
   * @param {Record<string, unknown>} params
   */
  async function call(command, params) {
    const response = await fetch(`${gateway.url}/v1/do/tickets/${command}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': 'spiffworkflow-backend' },
      body: JSON.stringify({ ...params, ...spiffKeys() }),
      signal: AbortSignal.timeout(REQUEST_MS),
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
    assert.ok(
      logs.some((line) => line.includes(`POST ${service.url}/tickets -> 201 in `)),
      JSON.stringify(logs),
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
});
