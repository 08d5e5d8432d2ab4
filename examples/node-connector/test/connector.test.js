// connector.js as the gateway runs it: a child process with the request on stdin,
// the CONNECTOR_* environment, the envelope on stdout and diagnostics on stderr.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import { listenOnLoopback, startTicketsService } from '../dev/tickets-service.js';

const DIRECTORY = fileURLToPath(new URL('..', import.meta.url));
const TOKEN = 'tk_live_5ecret';

/**
 * @typedef {object} Run
 * @property {number | null} status  exit status
 * @property {string} stdout
 * @property {string[]} stderr  its lines
 */

/**
 * Runs `node connector.js ...args` in this directory with the gateway's environment.
 * @param {string[]} args
 * @param {string} input  written to stdin
 * @param {number} [timeout]  seconds, as CONNECTOR_TIMEOUT
 * @returns {Promise<Run>}
 */
function runConnector(args, input, timeout = 5) {
  const child = spawn(process.execPath, ['connector.js', ...args], {
    cwd: DIRECTORY,
    env: {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      CONNECTOR_PROTOCOL: '1',
      CONNECTOR_COMMAND: `tickets/${args[0]}`,
      CONNECTOR_REQUEST_ID: 'req-42',
      CONNECTOR_TIMEOUT: String(timeout),
      CONNECTOR_DEADLINE: String(Date.now() / 1000 + timeout),
    },
    // A hung connector fails the test instead of stalling it.
    timeout: (timeout + 5) * 1000,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  child.stdin.on('error', () => {}); // the connector may exit before reading everything
  child.stdin.end(input);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr: stderr.split('\n').filter(Boolean) }));
  });
}

describe('connector.js', () => {
  /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
  let service;
  before(async () => {
    service = await startTicketsService({ token: TOKEN });
  });
  after(() => service.close());

  test('prints the created ticket as a v2 envelope and logs one line', async () => {
    const request = { base_url: service.url, api_token: TOKEN, title: 'From stdin', priority: 2 };

    const run = await runConnector(['CreateTicket'], JSON.stringify(request));

    assert.equal(run.status, 0, run.stderr.join('\n'));
    const envelope = JSON.parse(run.stdout);
    assert.deepEqual(envelope, {
      command_response_version: 2,
      command_response: {
        body: {
          id: 1,
          status: 'open',
          title: 'From stdin',
          priority: 2,
          urgent: false,
          labels: [],
          fields: {},
        },
        mimetype: 'application/json',
        http_status: 201,
        headers: {},
      },
      error: null,
      spiff__logs: [],
    });
    assert.deepEqual(run.stderr.map((line) => line.replace(/\d+ ms$/, 'N ms')), [
      `POST ${service.url}/tickets -> 201 in N ms`,
    ]);
    assert.equal(service.requests.at(-1)?.headers['x-request-id'], 'req-42');
    assert.doesNotMatch(run.stdout + run.stderr.join('\n'), new RegExp(TOKEN));
  });

  test('a failure of its own is an envelope with its error code, and exit status 0', async () => {
    const request = { base_url: service.url, api_token: TOKEN, ticket_id: 999 };

    const run = await runConnector(['GetTicket'], JSON.stringify(request));

    assert.equal(run.status, 0);
    const envelope = JSON.parse(run.stdout);
    assert.deepEqual(envelope.error, {
      error_code: 'TicketNotFound',
      message: `Ticket 999 does not exist at ${service.url}/tickets/999.`,
    });
    assert.equal(envelope.command_response.http_status, 404);
    assert.deepEqual(envelope.command_response.body, { error: 'No ticket 999.' });
  });

  test('stops before CONNECTOR_DEADLINE when the service is silent', async () => {
    const silent = await listenOnLoopback(createServer(() => {}));
    const started = Date.now();
    try {
      const request = JSON.stringify({ base_url: silent.url, title: 'Slow' });

      const run = await runConnector(['CreateTicket'], request, 1.5);

      assert.ok(Date.now() - started < 1500, `took ${Date.now() - started} ms`);
      assert.equal(run.status, 0);
      const envelope = JSON.parse(run.stdout);
      assert.equal(envelope.error.error_code, 'TicketServiceTimeout');
      assert.equal(envelope.command_response.http_status, 504);
    } finally {
      await silent.close();
    }
  });

  test('an unknown command exits 64, saying which commands exist', async () => {
    const run = await runConnector(['DeleteTicket'], '{}');

    assert.equal(run.status, 64);
    assert.equal(run.stdout, '');
    assert.equal(
      run.stderr.at(-1),
      "Unknown command 'DeleteTicket'; this connector offers CreateTicket, GetTicket.",
    );
  });

  test('stdin that is not a JSON object exits 65', async () => {
    for (const input of ['', 'title=x', '["a"]']) {
      const run = await runConnector(['CreateTicket'], input);

      assert.equal(run.status, 65, input);
      assert.match(run.stderr.at(-1) ?? '', /^Stdin (is not JSON|must hold one JSON object of parameters\.)/);
    }
  });
});
