/**
 * Write a connector as one async handler and serve it in both modes of the connector
 * protocol (docs/connector-protocol.md): spawn mode reads one request on stdin and exits;
 * worker mode (CONNECTOR_MODE=worker) serves newline-delimited JSON until stdin closes.
 * No dependencies; Node 20 or later.
 */

import { createInterface } from 'node:readline';

/** Exit statuses: the gateway answers 1 as connector_failed (502), 75 as connector_unavailable (503). */
const EXIT = Object.freeze({ OK: 0, FAILED: 1, TEMPFAIL: 75 });

/** Used when the connector runs by hand, without the gateway's CONNECTOR_DEADLINE. */
const DEFAULT_TIMEOUT_MS = 30_000;

/** A failure the handler understands; a temporary one tells Arena that a retry may help. */
export class Failure extends Error {
  /**
   * @param {string} message  one sentence for the modeler: what failed and what to do
   * @param {{temporary?: boolean}} [options]
   */
  constructor(message, { temporary = false } = {}) {
    super(message);
    this.name = 'Failure';
    this.temporary = temporary;
  }
}

/**
 * What a handler knows about its request besides the payload.
 * @typedef {object} Context
 * @property {string} command  the command id, e.g. "tickets/CreateTicket"
 * @property {string} requestId  the gateway's id for this request, also in its log lines
 * @property {number} deadline  Unix time in milliseconds by which the answer must be out
 * @property {() => number} remaining  milliseconds left before the deadline, never below zero
 * @property {AbortSignal} signal  aborted when the gateway cancels the request (worker mode only)
 * @property {(line: string) => void} log  writes one line to the answer's spiff__logs; never log credentials
 */

/** @typedef {(payload: any, context: Context) => unknown} Handler */

/**
 * Serves the handler in the mode the gateway started this process in, then exits.
 * @param {Handler} handler  answers a JSON value (the body) or a version 2 envelope, or throws Failure
 * @returns {Promise<void>}
 */
export async function run(handler) {
  // stdout carries answers only: a stray console.log becomes a log line instead.
  console.log = console.info = console.debug = console.error;
  const status = process.env.CONNECTOR_MODE === 'worker' ? await serve(handler) : await answerOnce(handler);
  // Exit even if the handler left sockets or timers open; stdout is flushed first.
  process.stdout.write('', () => process.exit(status));
}

/**
 * Spawn mode: one payload on stdin, the answer on stdout, the outcome in the exit status.
 * @param {Handler} handler
 * @returns {Promise<number>}
 */
async function answerOnce(handler) {
  const { env } = process;
  const deadline = secondsToMs(env.CONNECTOR_DEADLINE);
  const context = makeContext(env.CONNECTOR_COMMAND, env.CONNECTOR_REQUEST_ID, deadline, new AbortController().signal);
  let payload;
  try {
    payload = JSON.parse(await readAll(process.stdin));
  } catch {
    // JSON.parse's message quotes the text, which may hold credentials.
    logLine('Stdin is not one JSON value.');
    return EXIT.FAILED;
  }

  try {
    process.stdout.write(`${toJson(await handler(payload, context))}\n`);
    return EXIT.OK;
  } catch (error) {
    logLine(describe(error));
    return error instanceof Failure && error.temporary ? EXIT.TEMPFAIL : EXIT.FAILED;
  }
}

/**
 * Worker mode: requests and cancellations on stdin, answers on stdout, until stdin closes.
 * @param {Handler} handler
 * @returns {Promise<number>}
 */
async function serve(handler) {
  const concurrency = Math.max(1, Number.parseInt(process.env.CONNECTOR_CONCURRENCY ?? '', 10) || 1);
  const slots = semaphore(concurrency);
  /** @type {Map<string, AbortController>} */
  const inFlight = new Map();
  /** @type {Set<Promise<void>>} */
  const tasks = new Set();

  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    const request = parse(line);
    if (request === undefined) {
      continue;
    }
    if (typeof request.cancel === 'string') {
      inFlight.get(request.cancel)?.abort();
      continue;
    }

    const { id } = request;
    const controller = new AbortController();
    // With several requests at once the gateway cannot tell whose stderr line is whose: keep them.
    const logs = concurrency > 1 ? [] : null;
    const context = makeContext(request.command, id, secondsToMs(request.deadline), controller.signal, logs);
    inFlight.set(id, controller);
    const task = slots
      .acquire()
      .then(() => answer(handler, request.payload, context, logs))
      .finally(() => {
        slots.release();
        inFlight.delete(id);
        tasks.delete(task);
      });
    tasks.add(task);
  }
  await Promise.all(tasks);
  return EXIT.OK;
}

/**
 * Runs one request and writes its answer line, unless the gateway cancelled it.
 * @param {Handler} handler
 * @param {unknown} payload
 * @param {Context} context
 * @param {string[] | null} logs  the lines logged for this request, when they travel in its answer
 */
async function answer(handler, payload, context, logs) {
  if (context.signal.aborted) {
    return;
  }
  let outcome;
  try {
    outcome = { result: await handler(payload, context) };
  } catch (error) {
    outcome = { failed: describe(error), ...(error instanceof Failure ? { temporary: error.temporary } : {}) };
  }
  if (context.signal.aborted) {
    return;
  }

  const logged = logs?.length ? { logs } : {};
  let line;
  try {
    line = toJson({ id: context.requestId, ...outcome, ...logged });
  } catch (error) {
    line = toJson({ id: context.requestId, failed: describe(error), ...logged });
  }
  process.stdout.write(`${line}\n`);
}

/**
 * @param {string | undefined} command
 * @param {string | undefined} requestId
 * @param {number} deadline  Unix time in milliseconds
 * @param {AbortSignal} signal
 * @param {string[] | null} [logs]  where to keep log lines for the answer, if anywhere
 * @returns {Context}
 */
function makeContext(command, requestId, deadline, signal, logs = null) {
  return {
    command: String(command ?? ''),
    requestId: String(requestId ?? ''),
    deadline,
    remaining: () => Math.max(0, deadline - Date.now()),
    signal,
    log: (line) => {
      const oneLine = String(line).split(/\r?\n/).join(' ');
      logs?.push(oneLine);
      logLine(oneLine);
    },
  };
}

/**
 * @param {unknown} seconds  Unix time in seconds, as a number or a string
 * @returns {number}  Unix time in milliseconds
 */
function secondsToMs(seconds) {
  const value = Number(seconds);
  return seconds === undefined || seconds === '' || !Number.isFinite(value)
    ? Date.now() + DEFAULT_TIMEOUT_MS
    : value * 1000;
}

/**
 * A request (string `id`) or a cancellation (string `cancel`); undefined, with a line on stderr, otherwise.
 * @param {string} line
 * @returns {Record<string, any> | undefined}
 */
function parse(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    // JSON.parse's message quotes the line, which may hold credentials: name the problem only.
  }
  if (typeof request?.id === 'string' || typeof request?.cancel === 'string') {
    return request;
  }
  const problem = request === undefined ? 'not JSON' : "no string 'id' or 'cancel'";
  logLine(`Ignored a line on stdin that is not a request (${problem}).`);
  return undefined;
}

/**
 * At most `size` holders at once; the others wait in order.
 * @param {number} size
 */
function semaphore(size) {
  let free = size;
  /** @type {Array<() => void>} */
  const waiting = [];
  return {
    /** @returns {Promise<void>} */
    acquire: () => (free > 0 ? ((free -= 1), Promise.resolve()) : new Promise((resolve) => waiting.push(resolve))),
    release: () => {
      const next = waiting.shift();
      if (next) {
        next();
      } else {
        free += 1;
      }
    },
  };
}

/**
 * @param {unknown} value
 * @returns {string}  JSON text; undefined becomes null
 */
function toJson(value) {
  return JSON.stringify(value) ?? 'null';
}

/**
 * The error's name and message for the modeler, a Failure's message alone; never a stack or the payload.
 * @param {unknown} error
 * @returns {string}
 */
function describe(error) {
  if (error instanceof Failure) {
    return error.message;
  }
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** @param {string} line */
function logLine(line) {
  process.stderr.write(`${line}\n`);
}

/**
 * @param {AsyncIterable<Buffer>} stream
 * @returns {Promise<string>}
 */
async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
