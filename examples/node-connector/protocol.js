/**
 * The connector protocol seen from inside the executable: the request on stdin,
 * the CONNECTOR_* environment, the version 2 envelope on stdout and the exit
 * statuses. Nothing here knows about tickets; copy it as is for a new connector.
 * See ../../docs/connector-protocol.md.
 */

/** @typedef {import('./errors.js').ConnectorError} ConnectorError */

/** Exit statuses; the gateway answers each non-zero one but 75 as connector_failed, inner 502. */
export const EXIT = Object.freeze({
  OK: 0,
  /** Wrong command line: the manifest's `run` names a command this file does not offer. */
  USAGE: 64,
  /** Stdin was not one JSON object. */
  DATA: 65,
  /** A bug in the connector. */
  SOFTWARE: 70,
});

/** Used when the connector runs by hand, without the gateway's CONNECTOR_DEADLINE. */
const DEFAULT_TIMEOUT_SECONDS = 30;

/**
 * What a command knows about the request it serves besides its parameters.
 * @typedef {object} Context
 * @property {number} deadline  Unix time in milliseconds by which the answer must be printed
 * @property {string} requestId  the gateway's id for this request, for correlating logs
 * @property {(line: string) => void} log  writes one diagnostic line (stderr under the gateway)
 * @property {AbortSignal} [signal]  worker mode: aborted when the gateway gives up on the request
 */

/**
 * @param {Record<string, string | undefined>} env
 * @param {number} [now]  current Unix time in milliseconds
 * @returns {Context}
 */
export function contextFromEnv(env, now = Date.now()) {
  return {
    deadline: deadlineFromEnv(env.CONNECTOR_DEADLINE, now),
    requestId: env.CONNECTOR_REQUEST_ID ?? '',
    log: (line) => process.stderr.write(`${line}\n`),
  };
}

/**
 * @param {string | undefined} value  CONNECTOR_DEADLINE: Unix time in seconds with a fraction
 * @param {number} now
 * @returns {number}
 */
function deadlineFromEnv(value, now) {
  if (value === undefined || value === '') {
    return now + DEFAULT_TIMEOUT_SECONDS * 1000;
  }
  const seconds = Number(value);
  if (!Number.isFinite(seconds)) {
    throw new Error(`CONNECTOR_DEADLINE must be Unix time in seconds, got '${value}'.`);
  }
  return seconds * 1000;
}

/**
 * Reads all of stdin and parses it as the request's JSON object.
 * @param {AsyncIterable<Buffer>} stream
 * @returns {Promise<Record<string, unknown>>}
 */
export async function readRequest(stream) {
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');

  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new Error(`Stdin is not JSON: ${/** @type {Error} */ (error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error('Stdin must hold one JSON object of parameters.');
  }
  return value;
}

/**
 * @typedef {object} CommandResponse
 * @property {unknown} body
 * @property {string} mimetype
 * @property {number} http_status
 * @property {Record<string, string>} headers
 */

/**
 * @typedef {object} Envelope
 * @property {2} command_response_version
 * @property {CommandResponse} command_response
 * @property {{error_code: string, message: string} | null} error
 * @property {string[]} spiff__logs
 */

/**
 * @param {unknown} body
 * @param {number} [status]
 * @returns {Envelope}
 */
export function successEnvelope(body, status = 200) {
  return envelope(body, status, null);
}

/**
 * @param {ConnectorError} failure
 * @returns {Envelope}
 */
export function errorEnvelope(failure) {
  return envelope(failure.body, failure.status, {
    error_code: failure.code,
    message: failure.message,
  });
}

/**
 * @param {unknown} body
 * @param {number} status
 * @param {Envelope['error']} error
 * @returns {Envelope}
 */
function envelope(body, status, error) {
  return {
    command_response_version: 2,
    command_response: { body, mimetype: 'application/json', http_status: status, headers: {} },
    error,
    // The gateway appends this process's stderr lines here.
    spiff__logs: [],
  };
}
