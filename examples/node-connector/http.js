/**
 * One JSON request to an upstream service: sent with a time limit taken from the
 * request's deadline, logged as one line without credentials, and answered as a
 * status with a parsed body. Transport failures become UpstreamError.
 */

/** Kept free before the deadline so the connector can still print its answer and exit. */
const MARGIN_MS = 250;

/** How the upstream failed to answer: 'timeout' (deadline reached) or 'unreachable'. */
export class UpstreamError extends Error {
  /**
   * @param {'timeout' | 'unreachable'} kind
   * @param {URL} url
   * @param {string} reason  short, e.g. "ECONNREFUSED"
   */
  constructor(kind, url, reason) {
    const problem = kind === 'timeout' ? 'did not answer in time' : 'could not be reached';
    super(`${printable(url)} ${problem} (${reason}).`);
    this.name = 'UpstreamError';
    this.kind = kind;
    this.reason = reason;
  }
}

/**
 * @typedef {object} UpstreamRequest
 * @property {'GET' | 'POST'} method
 * @property {URL} url
 * @property {Record<string, string>} [headers]  sent as is and never logged
 * @property {unknown} [json]  sent as the JSON body when present
 */

/**
 * @typedef {object} UpstreamResponse
 * @property {number} status
 * @property {unknown} body  parsed JSON, `{raw_response: text}` for other text, null when empty
 */

/**
 * @param {UpstreamRequest} request
 * @param {import('./protocol.js').Context} context
 * @returns {Promise<UpstreamResponse>}
 */
export async function sendJson(request, context) {
  const line = `${request.method} ${printable(request.url)}`;
  const started = Date.now();
  const budget = Math.floor(context.deadline - started - MARGIN_MS);
  if (budget <= 0) {
    context.log(`${line} not sent: the deadline has passed`);
    throw new UpstreamError('timeout', request.url, 'no time left before the deadline');
  }

  let response;
  let text;
  try {
    response = await fetch(request.url, {
      method: request.method,
      headers: { accept: 'application/json', ...contentType(request), ...request.headers },
      body: request.json === undefined ? undefined : JSON.stringify(request.json),
      // A redirect would carry the credentials to wherever it points; report it instead.
      redirect: 'manual',
      signal: stopSignal(budget, context),
    });
    text = await response.text();
  } catch (error) {
    const failure = transportFailure(error, request.url, Date.now() - started);
    context.log(`${line} failed: ${failure.reason}`);
    throw failure;
  }

  context.log(`${line} -> ${response.status} in ${Date.now() - started} ms`);
  return { status: response.status, body: parseBody(text, response.headers.get('content-type')) };
}

/**
 * Aborts the call when its time budget runs out or, in worker mode, when the request is cancelled.
 * @param {number} budget  milliseconds
 * @param {import('./protocol.js').Context} context
 * @returns {AbortSignal}
 */
function stopSignal(budget, context) {
  const timeout = AbortSignal.timeout(budget);
  return context.signal === undefined ? timeout : AbortSignal.any([timeout, context.signal]);
}

/**
 * @param {UpstreamRequest} request
 * @returns {Record<string, string>}
 */
function contentType(request) {
  return request.json === undefined ? {} : { 'content-type': 'application/json' };
}

/**
 * @param {unknown} error  what fetch threw
 * @param {URL} url
 * @param {number} elapsed  milliseconds since the request started
 * @returns {UpstreamError}
 */
function transportFailure(error, url, elapsed) {
  if (error instanceof Error && error.name === 'TimeoutError') {
    return new UpstreamError('timeout', url, `gave up after ${elapsed} ms`);
  }
  // fetch reports a network failure as a TypeError whose cause says what happened;
  // any other error is a bug in the request, not in the network.
  const cause = /** @type {{code?: string, message?: string} | undefined} */ (
    error instanceof TypeError ? error.cause : undefined
  );
  if (cause === undefined) {
    throw error;
  }
  return new UpstreamError('unreachable', url, cause.code ?? cause.message ?? 'network error');
}

/**
 * @param {string} text
 * @param {string | null} type  the response's content-type
 * @returns {unknown}
 */
function parseBody(text, type) {
  if (text === '') {
    return null;
  }
  if (type?.includes('json')) {
    try {
      return JSON.parse(text);
    } catch {
      // Mislabelled text is still worth showing to the modeler.
    }
  }
  return { raw_response: text };
}

/**
 * The URL as it may appear in logs and messages: no user info, no query string.
 * @param {URL} url
 * @returns {string}
 */
export function printable(url) {
  return `${url.origin}${url.pathname}`;
}
