// connector.js in worker mode, as the gateway's pool runs it: one long-lived child
// process reading request lines on stdin and printing answer lines on stdout.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { after, afterEach, before, describe, test } from 'node:test';

import { startHeldService, within } from '../dev/held-service.js';
import { listenOnLoopback, startTicketsService } from '../dev/tickets-service.js';

const DIRECTORY = fileURLToPath(new URL('..', import.meta.url));
const TOKEN = 'tk_live_5ecret';

/**
 * @typedef {object} Answer
 * @property {string} id
 * @property {any} [result]
 * @property {string} [failed]
 * @property {boolean} [temporary]
 * @property {string[]} [logs]
 */

/**
 * Starts `node connector.js` with the environment the gateway gives a worker.
 * @param {number} concurrency  CONNECTOR_CONCURRENCY
 */
function startWorker(concurrency) {
  const child = spawn(process.execPath, ['connector.js'], {
    cwd: DIRECTORY,
    env: {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      CONNECTOR_PROTOCOL: '1',
      CONNECTOR_MODE: 'worker',
      CONNECTOR_CONCURRENCY: String(concurrency),
    },
  });
  /** @type {Answer[]} every answer line, in the order printed */
  const answers = [];
  /** @type {Map<string, (answer: Answer) => void>} */
  const waiting = new Map();
  createInterface({ input: child.stdout }).on('line', (line) => {
    const answer = JSON.parse(line);
    answers.push(answer);
    waiting.get(answer.id)?.(answer);
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  // 'close' rather than 'exit': by then stdout and stderr have been read to the end.
  const exited = once(child, 'close');

  return {
    answers,
    stderr: () => stderr.split('\n').filter(Boolean),
    /**
     * Writes one request line; resolves with its answer.
     * @param {string} id
     * @param {string} command  e.g. "tickets/GetTicket"
     * @param {Record<string, unknown>} payload
     * @param {number} [seconds]  time until the request's deadline
     * @returns {Promise<Answer>}
     */
    request(id, command, payload, seconds = 5) {
      const answered = within(new Promise((resolve) => waiting.set(id, resolve)), `the answer to ${id}`);
      this.send({ id, command, deadline: Date.now() / 1000 + seconds, payload });
      return answered;
    },
    /** @param {object} message */
    send(message) {
      child.stdin.write(`${JSON.stringify(message)}\n`);
    },
    /** End of file on stdin; resolves with the exit status once the worker has exited, its output read. */
    async close() {
      child.stdin.end();
      const [status] = await exited;
      return status;
    },
    kill: () => child.kill('SIGKILL'),
  };
}

describe('connector.js in worker mode', () => {
  /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
  let service;
  /** @type {ReturnType<typeof startWorker> | undefined} */
  let worker;
  before(async () => {
    service = await startTicketsService({ token: TOKEN });
  });
  afterEach(() => worker?.kill());
  after(() => service.close());

  /** GetTicket parameters for a ticket the service does not have: a quick 404. */
  const missing = () => ({ base_url: service.url, api_token: TOKEN, ticket_id: 99 });

  test('answers each request line with the envelope spawn mode prints, logs included', async () => {
    worker = startWorker(4);
    const params = { base_url: service.url, api_token: TOKEN, title: 'Via a worker', spiff__task_id: 'w-1' };

    const answer = await worker.request('r-1', 'tickets/CreateTicket', params);

    assert.equal(answer.id, 'r-1');
    assert.equal(answer.result.command_response_version, 2);
    assert.equal(answer.result.command_response.http_status, 201);
    assert.equal(answer.result.command_response.body.title, 'Via a worker');
    assert.equal(answer.result.error, null);
    const line = `POST ${service.url}/tickets -> 201 in N ms`;
    assert.deepEqual(answer.logs?.map((text) => text.replace(/\d+ ms$/, 'N ms')), [line]);
    await worker.close();
    assert.ok(worker.stderr().some((text) => text.startsWith(`[r-1] POST ${service.url}/tickets -> 201`)));
    assert.equal(service.requests.at(-1)?.headers['x-request-id'], 'r-1');
    assert.doesNotMatch(JSON.stringify(answer) + worker.stderr().join('\n'), new RegExp(TOKEN));
  });

  test('serves two requests at once: a fast one is answered while a slow one waits', async () => {
    const slow = await startHeldService();
    worker = startWorker(2);
    try {
      const first = worker.request('slow', 'tickets/GetTicket', { base_url: slow.url, ticket_id: 7 });
      await slow.received();

      const second = await worker.request('fast', 'tickets/GetTicket', missing());
      slow.release();
      const answer = await first;

      assert.equal(second.result.error.error_code, 'TicketNotFound');
      assert.deepEqual(answer.result.command_response.body, { id: 7 });
      assert.deepEqual(worker.answers.map((each) => each.id), ['fast', 'slow']);
    } finally {
      await slow.close();
    }
  });

  test('stops before the deadline of the request line, not of its environment', async () => {
    const silent = await listenOnLoopback(createServer(() => {}));
    worker = startWorker(2);
    await worker.request('ready', 'tickets/GetTicket', missing()); // Node has started: the second counts
    const started = Date.now();
    try {
      const params = { base_url: silent.url, title: 'x' };

      const answer = await worker.request('late', 'tickets/CreateTicket', params, 1);

      assert.ok(Date.now() - started < 1000, `answered after ${Date.now() - started} ms`);
      assert.equal(answer.result.error.error_code, 'TicketServiceTimeout');
      assert.equal(answer.result.command_response.http_status, 504);
    } finally {
      await silent.close();
    }
  });

  test('never runs more requests at once than CONNECTOR_CONCURRENCY', async () => {
    const slow = await startHeldService();
    worker = startWorker(1);
    try {
      const first = worker.request('first', 'tickets/GetTicket', { base_url: slow.url, ticket_id: 7 });
      await slow.received();

      const second = worker.request('second', 'tickets/GetTicket', missing());
      await sleep(300);
      assert.deepEqual(worker.answers, []);
      slow.release();
      await Promise.all([first, second]);

      assert.deepEqual(worker.answers.map((each) => each.id), ['first', 'second']);
    } finally {
      await slow.close();
    }
  });

  test('a cancelled request stops its upstream call and is never answered', async () => {
    const slow = await startHeldService();
    worker = startWorker(2);
    try {
      void worker.request('gone', 'tickets/GetTicket', { base_url: slow.url, ticket_id: 7 }).catch(() => {});
      await slow.received();

      worker.send({ cancel: 'gone' });
      await slow.abandoned();
      const next = await worker.request('next', 'tickets/GetTicket', missing());

      assert.equal(next.result.error.error_code, 'TicketNotFound');
      assert.deepEqual(worker.answers.map((each) => each.id), ['next']);
      await worker.close();
      const stopped = '[gone] Stopped: cancelled, or past its deadline.';
      assert.ok(worker.stderr().includes(stopped), worker.stderr().join('\n'));
    } finally {
      await slow.close();
    }
  });

  test('an unknown command is a failed answer, and the worker goes on', async () => {
    worker = startWorker(2);

    const answer = await worker.request('bad', 'tickets/DeleteTicket', {});
    const next = await worker.request('good', 'tickets/GetTicket', missing());

    assert.deepEqual(answer, {
      id: 'bad',
      failed: "Unknown command 'DeleteTicket'; this connector offers CreateTicket, GetTicket.",
      temporary: false,
      logs: [],
    });
    assert.equal(next.result.command_response.http_status, 404);
  });

  test('at end of input it answers what is in flight, then exits 0', async () => {
    const slow = await startHeldService();
    worker = startWorker(2);
    try {
      const pending = worker.request('last', 'tickets/GetTicket', { base_url: slow.url, ticket_id: 7 });
      await slow.received();

      const exited = worker.close();
      slow.release();
      const released = Date.now();

      assert.equal((await pending).result.command_response.http_status, 200);
      assert.equal(await exited, 0);
      // Long before the request's deadline: nothing is left to keep the process alive.
      assert.ok(Date.now() - released < 2000, `exited ${Date.now() - released} ms after its last answer`);
    } finally {
      await slow.close();
    }
  });

  test('one request at a time: log lines go to stderr only, which the gateway attaches', async () => {
    worker = startWorker(1);

    const answer = await worker.request('solo', 'tickets/GetTicket', missing());

    assert.deepEqual(answer.logs, []);
    await worker.close();
    assert.match(worker.stderr().at(-1) ?? '', /^GET http:\S+\/tickets\/99 -> 404 in \d+ ms$/);
  });
});
