/**
 * Worker mode (CONNECTOR_MODE=worker): one long-lived process serves many requests,
 * each a line of JSON on stdin, several at once, and answers each with a line of JSON
 * on stdout. Nothing here knows about tickets; copy it as is for a new connector.
 * See "Worker mode" in ../../docs/connector-protocol.md.
 */

import { createInterface } from 'node:readline';

/** @typedef {import('./protocol.js').Context} Context */

/** Used when a request line has no deadline, e.g. when the worker is tried by hand. */
const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Answers one request with what a spawned connector would print on stdout.
 * @callback Handler
 * @param {string} command  the command's name: "CreateTicket" for tickets/CreateTicket
 * @param {Record<string, unknown>} params  the request's payload
 * @param {Context} context
 * @returns {Promise<unknown>}
 */

/**
 * @typedef {object} Request
 * @property {string} id
 * @property {string} command  the command id, e.g. "tickets/CreateTicket"
 * @property {number} [deadline]  Unix time in seconds
 * @property {Record<string, unknown>} payload
 */

/**
 * Serves the request lines of `input` until it ends, then lets the requests in flight finish.
 * @param {Handler} handle
 * @param {number} concurrency  CONNECTOR_CONCURRENCY: how many requests may be in flight at once
 * @param {NodeJS.ReadableStream} [input]
 */
export async function serveWorker(handle, concurrency, input = process.stdin) {
  /** @type {Map<string, AbortController>} the requests in flight, by id */
  const inFlight = new Map();
  /** @type {Set<Promise<void>>} */
  const running = new Set();

  for await (const line of createInterface({ input, crlfDelay: Infinity })) {
    const message = parseLine(line);
    if (message === null) {
      continue;
    }
    if ('cancel' in message) {
      inFlight.get(String(message.cancel))?.abort();
      continue;
    }
    while (running.size >= concurrency) {
      await Promise.race(running);
    }
    const task = serve(/** @type {Request} */ (message), handle, inFlight, concurrency);
    running.add(task);
    task.finally(() => running.delete(task));
  }
  await Promise.all(running);
}

/**
 * Runs one request and prints its answer, unless the gateway gave up on it first.
 * @param {Request} request
 * @param {Handler} handle
 * @param {Map<string, AbortController>} inFlight
 * @param {number} concurrency
 */
async function serve(request, handle, inFlight, concurrency) {
  const { id } = request;
  const deadline = deadlineOf(request);
  const controller = new AbortController();
  // Past its deadline the gateway has answered connector_timeout itself.
  const timer = setTimeout(() => controller.abort(), deadline - Date.now());
  inFlight.set(id, controller);
  /** @type {string[]} */
  const logs = [];
  const log = logger(id, logs, concurrency);
  const context = { deadline, requestId: id, log, signal: controller.signal };

  let answer;
  try {
    answer = await answerLine(request, handle, context, logs);
  } finally {
    clearTimeout(timer);
    inFlight.delete(id);
  }
  if (controller.signal.aborted) {
    // The gateway has answered it already, or its caller has hung up.
    process.stderr.write(`[${id}] Stopped: cancelled, or past its deadline.\n`);
    return;
  }
  process.stdout.write(answer);
}

/**
 * The answer line: {"id", "result", "logs"}, or {"id", "failed", "logs"} when `handle` throws.
 * @param {Request} request
 * @param {Handler} handle
 * @param {Context} context
 * @param {string[]} logs
 * @returns {Promise<string>}
 */
async function answerLine(request, handle, context, logs) {
  const { id } = request;
  try {
    const result = await handle(commandName(request.command), request.payload, context);
    return `${JSON.stringify({ id, result, logs })}\n`;
  } catch (error) {
    if (!context.signal?.aborted) {
      process.stderr.write(`[${id}] ${/** @type {Error} */ (error)?.stack ?? error}\n`);
    }
    const failed = /** @type {Error} */ (error)?.message ?? String(error);
    return `${JSON.stringify({ id, failed, temporary: false, logs })}\n`;
  }
}

/**
 * Where a request's log lines go. With one request at a time the gateway makes this
 * process's stderr the request's spiff__logs, as in spawn mode. With more, it cannot
 * tell whose a stderr line is: the lines travel in the answer's "logs", and stderr,
 * tagged with the request id, only feeds the gateway's log.
 * @param {string} id
 * @param {string[]} logs  collects the lines for the answer
 * @param {number} concurrency
 * @returns {(line: string) => void}
 */
function logger(id, logs, concurrency) {
  if (concurrency === 1) {
    return (line) => process.stderr.write(`${line}\n`);
  }
  return (line) => {
    logs.push(line);
    process.stderr.write(`[${id}] ${line}\n`);
  };
}

/**
 * @param {string} line
 * @returns {Record<string, unknown> | null}  null for a blank line or one that is not a JSON object
 */
function parseLine(line) {
  if (line.trim() === '') {
    return null;
  }
  try {
    const message = JSON.parse(line);
    if (message !== null && typeof message === 'object' && !Array.isArray(message)) {
      return message;
    }
  } catch {
    // Reported below; without an id there is nobody to answer.
  }
  // Not quoted: it may hold a credential.
  process.stderr.write(`Ignored a stdin line of ${line.length} characters that is not a JSON object.\n`);
  return null;
}

/**
 * @param {Request} request
 * @returns {number}  Unix time in milliseconds
 */
function deadlineOf(request) {
  return typeof request.deadline === 'number' ? request.deadline * 1000 : Date.now() + DEFAULT_TIMEOUT_MS;
}

/**
 * @param {unknown} commandId  e.g. "tickets/CreateTicket"
 * @returns {string}  e.g. "CreateTicket"
 */
function commandName(commandId) {
  return String(commandId ?? '').split('/').at(-1) ?? '';
}
