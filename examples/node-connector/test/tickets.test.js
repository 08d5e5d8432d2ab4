// The tickets commands against a real HTTP upstream on 127.0.0.1: the in-memory
// tickets service, or a one-purpose server where a failure has to be provoked.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { listenOnLoopback, startTicketsService } from '../dev/tickets-service.js';
import { ConnectorError } from '../errors.js';
import { createTicket, getTicket } from '../tickets.js';

const TOKEN = 'tk_live_5ecret';

/**
 * A context as the gateway's environment would give, collecting the log lines.
 * @param {number} [seconds]  time until the deadline
 */
function contextFor(seconds = 5) {
  /** @type {string[]} */
  const lines = [];
  const context = {
    deadline: Date.now() + seconds * 1000,
    requestId: 'req-7',
    log: (/** @type {string} */ line) => lines.push(line),
  };
  return { context, lines };
}

/**
 * A server that answers every request with one status and body.
 * @param {number} status
 * @param {string} body
 * @param {Record<string, string>} [headers]
 */
function answering(status, body, headers = { 'content-type': 'application/json' }) {
  return listenOnLoopback(
    createServer((request, response) => {
      request.resume();
      response.writeHead(status, headers).end(body);
    }),
  );
}

/**
 * Asserts that `promise` rejects with a ConnectorError of this code and status.
 * @param {Promise<unknown>} promise
 * @param {string} code
 * @param {number} status
 * @returns {Promise<ConnectorError>}
 */
async function rejectsWith(promise, code, status) {
  const error = await promise.then(
    (result) => assert.fail(`expected ${code}, got ${JSON.stringify(result)}`),
    (/** @type {unknown} */ thrown) => thrown,
  );
  assert.ok(error instanceof ConnectorError, String(error));
  assert.equal(error.code, code, error.message);
  assert.equal(error.status, status);
  return error;
}

describe('CreateTicket', () => {
  /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
  let service;
  before(async () => {
    service = await startTicketsService({ token: TOKEN });
  });
  after(() => service.close());

  test('posts the ticket and answers it as stored, with status 201', async () => {
    const { context, lines } = contextFor();
    const params = {
      base_url: `${service.url}/`,
      api_token: TOKEN,
      title: 'Printer on fire',
      priority: 1,
      urgent: true,
      labels: ['hardware'],
      fields: { floor: 3, due: { typename: 'datetime', value: '2026-01-01T00:00:00' } },
      spiff__task_id: 'b8e4c0de-0000-4000-8000-000000000001',
      spiff__task_data: { unrelated: true },
    };

    const result = await createTicket(params, context);

    assert.equal(result.status, 201);
    assert.deepEqual(result.body, {
      id: 1,
      status: 'open',
      title: 'Printer on fire',
      priority: 1,
      urgent: true,
      labels: ['hardware'],
      fields: { floor: 3, due: { typename: 'datetime', value: '2026-01-01T00:00:00' } },
    });
    const sent = service.requests.at(-1);
    assert.equal(sent?.url, '/tickets');
    assert.equal(sent?.headers.authorization, `Bearer ${TOKEN}`);
    assert.equal(sent?.headers['idempotency-key'], params.spiff__task_id);
    assert.equal(sent?.headers['x-request-id'], 'req-7');
    assert.equal(lines.length, 1);
    assert.match(lines[0], /^POST http:\/\/127\.0\.0\.1:\d+\/tickets -> 201 in \d+ ms$/);
  });

  test('a retry of the same task answers the ticket already created', async () => {
    const params = { base_url: service.url, api_token: TOKEN, title: 'Retried', spiff__task_id: 't-2' };

    const first = await createTicket(params, contextFor().context);
    const second = await createTicket(params, contextFor().context);

    assert.equal(first.status, 201);
    assert.equal(second.status, 200);
    assert.deepEqual(second.body, first.body);
  });

  test('a duplicate title is TicketConflict 409, with the service reason', async () => {
    const params = { base_url: service.url, api_token: TOKEN, title: 'Twice' };
    await createTicket(params, contextFor().context);

    const error = await rejectsWith(createTicket(params, contextFor().context), 'TicketConflict', 409);

    assert.match(error.message, /^The tickets service refused the new ticket as a conflict: Ticket \d+/);
    assert.deepEqual(Object.keys(/** @type {object} */ (error.body)), ['error']);
  });

  test('every invalid parameter is reported at once, as InvalidTicket 400, without a call', async () => {
    const before = service.requests.length;
    const params = { base_url: 'ftp://files', priority: 9, urgent: 'yes', labels: ['a', 2], fields: [] };

    const error = await rejectsWith(createTicket(params, contextFor().context), 'InvalidTicket', 400);

    assert.deepEqual(/** @type {{problems: string[]}} */ (error.body).problems, [
      "Parameter 'base_url' must be an http or https URL, not 'ftp:'.",
      "Parameter 'title' is required.",
      "Parameter 'priority' must be an integer from 1 to 5, got 9.",
      'Parameter \'urgent\' must be true or false, got "yes".',
      'Parameter \'labels\' must be a list of strings, got ["a",2].',
      "Parameter 'fields' must be an object, got [].",
    ]);
    assert.equal(service.requests.length, before);
  });

  test('credentials are never quoted: not in base_url, not in api_token', async () => {
    const params = { base_url: 'https://me:hunter2@tickets.example', api_token: 'two words', title: 'x' };

    const error = await rejectsWith(createTicket(params, contextFor().context), 'InvalidTicket', 400);

    assert.doesNotMatch(error.message, /hunter2|two words/);
    assert.match(error.message, /'base_url' must not hold a user name or password/);
    assert.match(error.message, /'api_token' must be a string of printable characters/);
  });

  test('a wrong token is TicketAccessDenied with the upstream status, and is not logged', async () => {
    const { context, lines } = contextFor();
    const params = { base_url: service.url, api_token: 'wrong-token', title: 'Denied' };

    const error = await rejectsWith(createTicket(params, context), 'TicketAccessDenied', 401);

    assert.match(error.message, /Check 'api_token'\.$/);
    assert.doesNotMatch([...lines, error.message].join('\n'), /wrong-token/);
  });
});

describe('GetTicket', () => {
  /** @type {Awaited<ReturnType<typeof startTicketsService>>} */
  let service;
  before(async () => {
    service = await startTicketsService();
  });
  after(() => service.close());

  test('answers the stored ticket', async () => {
    const created = await createTicket({ base_url: service.url, title: 'Find me' }, contextFor().context);
    const id = /** @type {{id: number}} */ (created.body).id;

    const result = await getTicket({ base_url: service.url, ticket_id: id }, contextFor().context);

    assert.equal(result.status, 200);
    assert.deepEqual(result.body, created.body);
  });

  test('an unknown id is TicketNotFound 404', async () => {
    const promise = getTicket({ base_url: service.url, ticket_id: 404 }, contextFor().context);

    const error = await rejectsWith(promise, 'TicketNotFound', 404);

    assert.equal(error.message, `Ticket 404 does not exist at ${service.url}/tickets/404.`);
  });

  test('a ticket_id that is not a positive integer is InvalidTicket 400', async () => {
    const promise = getTicket({ base_url: service.url, ticket_id: '7' }, contextFor().context);

    const error = await rejectsWith(promise, 'InvalidTicket', 400);

    assert.equal(error.message, 'Parameter \'ticket_id\' must be a positive integer, got "7".');
  });
});

describe('upstream statuses and failures', () => {
  const ticket = { title: 'Anything' };

  for (const [status, code] of /** @type {const} */ ([
    [422, 'InvalidTicket'],
    [403, 'TicketAccessDenied'],
    [429, 'TicketServiceUnavailable'],
    [500, 'TicketServiceUnavailable'],
    [503, 'TicketServiceUnavailable'],
    [405, 'TicketServiceError'],
  ])) {
    test(`upstream ${status} is ${code} with inner status ${status}`, async () => {
      const upstream = await answering(status, JSON.stringify({ message: 'Upstream says no.' }));
      try {
        const promise = createTicket({ ...ticket, base_url: upstream.url }, contextFor().context);

        const error = await rejectsWith(promise, code, status);

        assert.match(error.message, /: Upstream says no\./);
        assert.deepEqual(error.body, { message: 'Upstream says no.' });
      } finally {
        await upstream.close();
      }
    });
  }

  test('a redirect is not followed: TicketServiceError 502', async () => {
    const elsewhere = await startTicketsService();
    const upstream = await answering(302, '', { location: `${elsewhere.url}/tickets` });
    try {
      const params = { ...ticket, base_url: upstream.url, api_token: TOKEN };

      const error = await rejectsWith(createTicket(params, contextFor().context), 'TicketServiceError', 502);

      assert.equal(error.message, `${upstream.url}/tickets answered 302. Check 'base_url'.`);
      assert.equal(elsewhere.requests.length, 0);
    } finally {
      await Promise.all([upstream.close(), elsewhere.close()]);
    }
  });

  test('a body that is not JSON is answered as raw_response', async () => {
    const upstream = await answering(200, '<p>ok</p>', { 'content-type': 'text/html' });
    try {
      const result = await createTicket({ ...ticket, base_url: upstream.url }, contextFor().context);

      assert.deepEqual(result.body, { raw_response: '<p>ok</p>' });
    } finally {
      await upstream.close();
    }
  });

  test('an unreachable service is TicketServiceUnavailable 503, so Arena retries', async () => {
    const closed = await answering(200, '{}');
    await closed.close();
    const { context, lines } = contextFor();

    const promise = createTicket({ ...ticket, base_url: closed.url }, context);

    const error = await rejectsWith(promise, 'TicketServiceUnavailable', 503);
    assert.equal(error.message, `${closed.url}/tickets could not be reached (ECONNREFUSED).`);
    assert.deepEqual(lines, [`POST ${closed.url}/tickets failed: ECONNREFUSED`]);
  });

  test('a silent service is abandoned before the deadline: TicketServiceTimeout 504', async () => {
    const silent = await listenOnLoopback(createServer(() => {}));
    const { context, lines } = contextFor(0.8);
    const started = Date.now();
    try {
      const promise = createTicket({ ...ticket, base_url: silent.url }, context);

      await rejectsWith(promise, 'TicketServiceTimeout', 504);

      assert.ok(Date.now() < context.deadline, `gave up ${Date.now() - context.deadline} ms late`);
      assert.ok(Date.now() - started >= 400, 'gave up too early');
      assert.match(lines[0], /^POST http:\S+\/tickets failed: gave up after \d+ ms$/);
    } finally {
      await silent.close();
    }
  });

  test('no call is made once the deadline has passed', async () => {
    const service = await startTicketsService();
    try {
      const promise = createTicket({ ...ticket, base_url: service.url }, contextFor(-1).context);

      const error = await rejectsWith(promise, 'TicketServiceTimeout', 504);

      assert.match(error.message, /no time left before the deadline/);
      assert.equal(service.requests.length, 0);
    } finally {
      await service.close();
    }
  });
});
