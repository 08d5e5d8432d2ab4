// The kit alone, on example/greeter.js: a spawned run fed one request on stdin, and a
// worker fed request lines by hand, as the gateway would.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, test } from 'node:test';

const EXAMPLE = fileURLToPath(new URL('../example/', import.meta.url));
const SECRET = 'tk_live_do_not_log';

/**
 * This environment without its CONNECTOR_* variables, plus `extra`.
 * @param {Record<string, string>} extra
 */
function connectorEnv(extra = {}) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('CONNECTOR_')));
  return { ...env, ...extra };
}

/**
 * Runs the example once, as the gateway does in spawn mode.
 * @param {unknown} payload  sent as JSON, or as is when a string
 * @param {Record<string, string>} [env]
 */
function runOnce(payload, env = {}) {
  const result = spawnSync(process.execPath, ['greeter.js'], {
    cwd: EXAMPLE,
    env: connectorEnv(env),
    input: typeof payload === 'string' ? payload : JSON.stringify(payload),
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe('spawn mode', () => {
  test('prints the result and logs on stderr', () => {
    const { status, stdout, stderr } = runOnce({ name: 'Ada' });

    assert.deepEqual([status, JSON.parse(stdout), stderr], [0, { greeting: 'Hello Ada' }, 'Greeting Ada\n']);
  });

  test('passes an envelope on as it is', () => {
    const { stdout } = runOnce({ action: 'envelope' });

    assert.deepEqual(JSON.parse(stdout), {
      command_response_version: 2,
      command_response: { body: { id: 42 }, http_status: 201 },
    });
  });

  for (const [action, exit, line] of [
    ['refuse', 1, 'Invoice INV-7 is already paid.'],
    ['unavailable', 75, 'The ledger is down for maintenance; try again later.'],
    ['crash', 1, "TypeError: Cannot read properties of undefined (reading '0')"],
    ['not_json', 1, 'TypeError: Do not know how to serialize a BigInt'],
  ]) {
    test(`${action} exits ${exit} with its message on stderr`, () => {
      const { status, stdout, stderr } = runOnce({ action, api_token: SECRET });

      assert.deepEqual([status, stdout, stderr], [exit, '', `${line}\n`]);
    });
  }

  test('refuses stdin that is not JSON without quoting it', () => {
    const { status, stderr } = runOnce(`{"api_token": "${SECRET}"`);

    assert.deepEqual([status, stderr], [1, 'Stdin is not one JSON value.\n']);
  });

  test('keeps stdout for the answer', () => {
    const { status, stdout, stderr } = runOnce({ action: 'print' });

    assert.deepEqual([status, stdout, stderr], [0, '"printed"\n', 'a stray console.log\n']);
  });

  test('takes its context from the environment', () => {
    const env = {
      CONNECTOR_COMMAND: 'sdk-node/Spawn',
      CONNECTOR_REQUEST_ID: 'r-1',
      CONNECTOR_DEADLINE: '1796310000.25',
    };
    const context = JSON.parse(runOnce({ action: 'context' }, env).stdout);

    assert.deepEqual(
      [context.command, context.requestId, context.deadline],
      ['sdk-node/Spawn', 'r-1', 1796310000250],
    );
  });

  test('gives thirty seconds when run by hand', () => {
    const before = Date.now();
    const { deadline } = JSON.parse(runOnce({ action: 'context' }).stdout);

    assert.ok(before + 30_000 <= deadline && deadline <= Date.now() + 30_000, `deadline ${deadline}`);
  });
});

/** The example in worker mode, with its answers collected as they come. */
class Worker {
  /** @param {number} concurrency */
  constructor(concurrency) {
    this.child = spawn(process.execPath, ['greeter.js'], {
      cwd: EXAMPLE,
      env: connectorEnv({ CONNECTOR_MODE: 'worker', CONNECTOR_CONCURRENCY: String(concurrency) }),
    });
    this.closed = once(this.child, 'close');
    /** @type {Record<string, any>[]} */
    this.answers = [];
    /** @type {Array<(answer: Record<string, any>) => void>} */
    this.waiting = [];
    this.stderr = '';
    this.child.stderr.setEncoding('utf8').on('data', (chunk) => (this.stderr += chunk));
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const answer = JSON.parse(line);
      const receiver = this.waiting.shift();
      receiver ? receiver(answer) : this.answers.push(answer);
    });
  }

  /** @param {Record<string, unknown> | string} message  a string is sent as it is */
  send(message) {
    this.child.stdin.write(`${typeof message === 'string' ? message : JSON.stringify(message)}\n`);
  }

  /**
   * @param {string} id
   * @param {Record<string, unknown>} payload
   * @param {number} [deadline]  Unix time in seconds
   */
  request(id, payload, deadline = Date.now() / 1000 + 10) {
    this.send({ id, command: 'sdk-node/Worker', deadline, payload });
  }

  /** @returns {Promise<Record<string, any>>} */
  receive() {
    const answer = this.answers.shift();
    return answer ? Promise.resolve(answer) : new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Closes stdin; answers the exit status, the answers not received yet and stderr. */
  async close() {
    this.child.stdin.end();
    const [status] = await this.closed;
    return { status, unanswered: this.answers.splice(0), stderr: this.stderr };
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
    }
  }
}

describe('worker mode', { timeout: 20_000 }, () => {
  /** @type {Worker} */
  let worker;
  beforeEach(() => {
    worker = new Worker(2);
  });
  afterEach(() => worker.kill());

  test('answers each request with its id', async () => {
    worker.request('a', { name: 'Ada' });
    worker.request('b', { action: 'refuse' });
    worker.request('c', { action: 'unavailable' });
    worker.request('d', { action: 'crash', api_token: SECRET });
    worker.request('e', { action: 'not_json' });
    const answers = await Promise.all([1, 2, 3, 4, 5].map(() => worker.receive()));

    assert.deepEqual(Object.fromEntries(answers.map((answer) => [answer.id, answer])), {
      a: { id: 'a', result: { greeting: 'Hello Ada' }, logs: ['Greeting Ada'] },
      b: { id: 'b', failed: 'Invoice INV-7 is already paid.', temporary: false },
      c: { id: 'c', failed: 'The ledger is down for maintenance; try again later.', temporary: true },
      d: { id: 'd', failed: "TypeError: Cannot read properties of undefined (reading '0')" },
      e: { id: 'e', failed: 'TypeError: Do not know how to serialize a BigInt' },
    });
    const { status, stderr } = await worker.close();
    assert.deepEqual([status, stderr], [0, 'Greeting Ada\n']);
  });

  test('taking one request at a time, logs on stderr only', async () => {
    worker.kill();
    worker = new Worker(1);
    worker.request('a', { name: 'Ada' });

    assert.deepEqual(await worker.receive(), { id: 'a', result: { greeting: 'Hello Ada' } });
    assert.deepEqual(await worker.close(), { status: 0, unanswered: [], stderr: 'Greeting Ada\n' });
  });

  test('passes the request line as context', async () => {
    worker.request('r-7', { action: 'context' }, 1796310000.25);
    const context = (await worker.receive()).result;

    assert.deepEqual(
      [context.command, context.requestId, context.deadline],
      ['sdk-node/Worker', 'r-7', 1796310000250],
    );
  });

  test('serves two at once and never answers a cancelled request', async () => {
    worker.request('slow', { action: 'wait', seconds: 8 });
    worker.request('fast', { name: 'Bo' });
    assert.equal((await worker.receive()).id, 'fast');

    worker.send({ cancel: 'slow' });

    const { status, unanswered, stderr } = await worker.close();
    assert.deepEqual([status, unanswered], [0, []]);
    assert.match(stderr, /^Request slow was cancelled$/m);
  });

  test('finishes what is in flight when stdin closes', async () => {
    worker.request('a', { action: 'wait', seconds: 0.3, label: 'done' });

    const { status, unanswered } = await worker.close();

    assert.deepEqual([status, unanswered], [0, [{ id: 'a', result: { waited: 0.3, label: 'done' } }]]);
  });

  for (const [line, problem] of [
    [`{"api_token": "${SECRET}"`, 'not JSON'],
    ['["a"]', "no string 'id' or 'cancel'"],
    ['{"id": 7, "payload": {}}', "no string 'id' or 'cancel'"],
  ]) {
    test(`skips the line ${line}`, async () => {
      worker.send(line);
      worker.send({ cancel: 'never-sent' });
      worker.request('a', { name: 'Ada' });

      assert.equal((await worker.receive()).id, 'a');
      const { status, stderr } = await worker.close();
      assert.deepEqual(
        [status, stderr],
        [0, `Ignored a line on stdin that is not a request (${problem}).\nGreeting Ada\n`],
      );
    });
  }

  test('keeps stdout for answers', async () => {
    worker.request('a', { action: 'print' });

    assert.deepEqual(await worker.receive(), { id: 'a', result: 'printed' });
    assert.deepEqual(await worker.close(), { status: 0, unanswered: [], stderr: 'a stray console.log\n' });
  });
});
