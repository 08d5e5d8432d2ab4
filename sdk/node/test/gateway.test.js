// The kit under the real gateway: example/greeter.yaml serves one handler per request
// (sdk-node/Spawn) and from a worker taking two requests at once (sdk-node/Worker).
// The gateway runs as `$GATEWAY_PYTHON -m gateway serve` (GATEWAY_PYTHON defaults to
// python3); these tests are skipped only when GATEWAY_PYTHON is unset and python3 has
// no gateway module.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

const EXAMPLE = fileURLToPath(new URL('../example/', import.meta.url));
const PYTHON = process.env.GATEWAY_PYTHON || 'python3';
const STARTUP_MS = 20_000;
const REQUEST_MS = 15_000;
const SHUTDOWN_MS = 10_000;
/** The example manifest's time limit of each command, in seconds. */
const TIMEOUTS = { Spawn: 7, Worker: 3 };

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
 * Starts the gateway on the example's manifest and waits until it is live.
 * @returns {Promise<{url: string, output: () => string, stop: () => Promise<void>}>}
 */
async function startGateway() {
  const port = await freePort();
  // Default settings and no key: nothing of this environment's CONNECTOR_* variables.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('CONNECTOR_')));
  const args = ['-m', 'gateway', 'serve', '--host', '127.0.0.1', '--port', String(port), '--manifests', EXAMPLE];
  const child = spawn(PYTHON, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (/** @type {Buffer} */ chunk) => (output = (output + chunk).slice(-50_000));
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
      return { url, output: () => output, stop };
    }
    await sleep(100);
  }
  await stop();
  throw new Error(`The gateway was not live within ${STARTUP_MS} ms:\n${output}`);
}

describe('under the gateway', { skip: skipReason() }, () => {
  /** @type {Awaited<ReturnType<typeof startGateway>>} */
  let gateway;
  before(async () => {
    gateway = await startGateway();
  });
  after(async () => {
    await gateway?.stop();
  });

  /**
   * @param {string} command  "Spawn" or "Worker"
   * @param {Record<string, unknown>} payload
   * @returns {Promise<Record<string, any>>}  the envelope
   */
  async function call(command, payload) {
    const response = await fetch(`${gateway.url}/v1/do/sdk-node/${command}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(REQUEST_MS),
    });
    assert.equal(response.status, 200);
    return response.json();
  }

  for (const command of /** @type {const} */ (['Spawn', 'Worker'])) {
    describe(command, () => {
      test('answers the result as the body, with the logs', async () => {
        const answer = await call(command, { name: 'Ada' });

        assert.deepEqual(answer.command_response.body, { greeting: 'Hello Ada' });
        assert.deepEqual([answer.command_response.http_status, answer.error], [200, null]);
        assert.deepEqual(answer.spiff__logs, ['Greeting Ada']);
      });

      test('passes a returned envelope on', async () => {
        const { command_response: response } = await call(command, { action: 'envelope' });

        assert.deepEqual([response.body, response.http_status], [{ id: 42 }, 201]);
      });

      for (const [action, code, status, message] of [
        ['refuse', 'connector_failed', 502, 'Invoice INV-7 is already paid.'],
        ['unavailable', 'connector_unavailable', 503, 'The ledger is down for maintenance; try again later.'],
        ['crash', 'connector_failed', 502, "TypeError: Cannot read properties of undefined (reading '0')"],
      ]) {
        test(`answers ${action} as ${code}`, async () => {
          const answer = await call(command, { action });

          assert.deepEqual([answer.error.error_code, answer.command_response.http_status], [code, status]);
          assert.ok(answer.error.message.endsWith(message), answer.error.message);
        });
      }

      test('passes the deadline', async () => {
        const before = Date.now();
        const context = (await call(command, { action: 'context' })).command_response.body;
        const after = Date.now();

        const timeout = TIMEOUTS[command] * 1000;
        assert.equal(context.command, `sdk-node/${command}`);
        assert.ok(context.requestId.length >= 16, context.requestId);
        assert.ok(before + timeout - 10 <= context.deadline && context.deadline <= after + timeout + 10);
        assert.ok(context.remaining > 0 && context.remaining <= timeout, `remaining ${context.remaining}`);
      });
    });
  }

  test('a worker serves two requests at once', async () => {
    let slowDone = false;
    const slow = call('Worker', { action: 'wait', seconds: 1.5, label: 'slow' }).finally(() => (slowDone = true));
    await sleep(200);
    const fast = await call('Worker', { name: 'Bo' });

    assert.equal(slowDone, false);
    assert.deepEqual(fast.command_response.body, { greeting: 'Hello Bo' });
    assert.deepEqual((await slow).command_response.body, { waited: 1.5, label: 'slow' });
  });

  test("a worker's request past its deadline is cancelled and the worker keeps serving", async () => {
    const answer = await call('Worker', { action: 'wait', seconds: 30 });

    assert.deepEqual(
      [answer.error.error_code, answer.command_response.http_status],
      ['connector_timeout', 504],
    );
    const giveUp = Date.now() + 5000;
    while (!gateway.output().includes('was cancelled') && Date.now() < giveUp) {
      await sleep(20);
    }
    assert.match(gateway.output(), /Request \w+ was cancelled/);
    assert.equal((await call('Worker', { name: 'Ada' })).error, null);
  });
});
