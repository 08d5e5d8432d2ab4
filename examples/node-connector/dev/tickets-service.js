/**
 * A small in-memory issue tracker with the JSON API the tickets connector calls:
 * POST /tickets and GET /tickets/{id}. The tests run it as the real upstream, and
 * `node dev/tickets-service.js [port]` runs it by hand to try the connector.
 */

import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

/**
 * @typedef {object} Recorded
 * @property {string} method
 * @property {string} url
 * @property {import('node:http').IncomingHttpHeaders} headers
 * @property {unknown} body
 */

/**
 * @typedef {object} Service
 * @property {string} url  base URL, e.g. http://127.0.0.1:41234
 * @property {Recorded[]} requests  every request received, oldest first
 * @property {() => Promise<void>} close
 */

/**
 * Starts the tickets API on 127.0.0.1.
 * @param {{token?: string, port?: number}} [options]  token: the bearer token it demands
 * @returns {Promise<Service>}
 */
export function startTicketsService({ token, port = 0 } = {}) {
  /** @type {Map<number, Record<string, unknown>>} */
  const tickets = new Map();
  /** @type {Map<string, Record<string, unknown>>} */
  const byIdempotencyKey = new Map();
  /** @type {Recorded[]} */
  const requests = [];

  return listen(port, requests, (method, path, headers, body) => {
    if (token !== undefined && headers.authorization !== `Bearer ${token}`) {
      return [401, { error: 'A valid bearer token is required.' }];
    }
    const match = /^\/tickets\/(\d+)$/.exec(path);
    if (method === 'GET' && match) {
      const ticket = tickets.get(Number(match[1]));
      return ticket ? [200, ticket] : [404, { error: `No ticket ${match[1]}.` }];
    }
    if (method === 'POST' && path === '/tickets') {
      const key = headers['idempotency-key'];
      const earlier = typeof key === 'string' ? byIdempotencyKey.get(key) : undefined;
      if (earlier) {
        return [200, earlier];
      }
      const [status, ticket] = create(tickets, body);
      if (typeof key === 'string' && status === 201) {
        byIdempotencyKey.set(key, ticket);
      }
      return [status, ticket];
    }
    return [404, { error: `No route ${method} ${path}.` }];
  });
}

/**
 * @param {Map<number, Record<string, unknown>>} tickets
 * @param {any} fields  the parsed request body
 * @returns {[number, Record<string, unknown>]}
 */
function create(tickets, fields) {
  if (typeof fields?.title !== 'string' || fields.title === '') {
    return [422, { error: 'A ticket needs a title.' }];
  }
  const same = [...tickets.values()].find((ticket) => ticket.title === fields.title);
  if (same) {
    return [409, { error: `Ticket ${same.id} already has the title '${fields.title}'.` }];
  }
  const id = tickets.size + 1;
  const ticket = { id, title: '', priority: 3, urgent: false, labels: [], fields: {}, ...fields };
  Object.assign(ticket, { id, status: 'open' });
  tickets.set(id, ticket);
  return [201, ticket];
}

/**
 * @callback Route
 * @param {string} method
 * @param {string} path
 * @param {import('node:http').IncomingHttpHeaders} headers
 * @param {unknown} body  parsed JSON, or undefined when absent or not JSON
 * @returns {[number, unknown]}  status and JSON body
 */

/**
 * Serves `route` and records each request.
 * @param {number} port
 * @param {Recorded[]} requests
 * @param {Route} route
 * @returns {Promise<Service>}
 */
async function listen(port, requests, route) {
  const server = createServer(async (request, response) => {
    let text = '';
    for await (const chunk of request) {
      text += chunk;
    }
    const body = parseOrUndefined(text);
    const method = request.method ?? 'GET';
    const url = request.url ?? '/';
    requests.push({ method, url, headers: request.headers, body });

    const path = new URL(url, 'http://service').pathname;
    const [status, answer] = route(method, path, request.headers, body);
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(JSON.stringify(answer));
  });
  return { ...(await listenOnLoopback(server, port)), requests };
}

/**
 * Starts any HTTP server on 127.0.0.1; `close` also drops connections still open.
 * @param {import('node:http').Server} server
 * @param {number} [port]  0 for any free port
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export function listenOnLoopback(server, port = 0) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const address = /** @type {import('node:net').AddressInfo} */ (server.address());
      resolve({
        url: `http://127.0.0.1:${address.port}`,
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

/**
 * @param {string} text
 * @returns {unknown}
 */
function parseOrUndefined(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const service = await startTicketsService({ port: Number(process.argv[2] ?? 8700) });
  console.log(`Tickets service listening on ${service.url}`);
}
