/**
 * The tickets commands, against an issue tracker's JSON API:
 * CreateTicket (POST {base_url}/tickets) and GetTicket (GET {base_url}/tickets/{id}).
 * Each checks its parameters, makes one upstream call and answers the upstream's
 * result, or throws a ConnectorError with one of the codes listed in the README.
 */

import { ConnectorError } from './errors.js';
import { UpstreamError, printable, sendJson } from './http.js';

/** @typedef {import('./protocol.js').Context} Context */
/** @typedef {import('./http.js').UpstreamResponse} UpstreamResponse */
/** @typedef {Record<string, unknown>} Params */
/** @typedef {{status: number, body: unknown}} Result */
/** @typedef {(params: Params, context: Context) => Promise<Result>} Command */

/**
 * The ticket fields sent upstream, each with its check and what it expects.
 * @type {Record<string, [(value: unknown) => boolean, string]>}
 */
const TICKET_FIELDS = {
  title: [(v) => typeof v === 'string' && v.trim() !== '', 'a non-empty string'],
  description: [(v) => typeof v === 'string', 'a string'],
  priority: [(v) => Number.isInteger(v) && v >= 1 && v <= 5, 'an integer from 1 to 5'],
  urgent: [(v) => typeof v === 'boolean', 'true or false'],
  labels: [(v) => Array.isArray(v) && v.every((l) => typeof l === 'string'), 'a list of strings'],
  fields: [(v) => typeof v === 'object' && v !== null && !Array.isArray(v), 'an object'],
};

/** @type {Command} */
export async function createTicket(params, context) {
  const problems = [];
  const url = endpoint(params.base_url, '/tickets', problems);
  const auth = authorization(params.api_token, problems);
  const ticket = ticketFrom(params, problems);
  rejectIfAny(problems);

  const response = await call(
    {
      method: 'POST',
      url,
      // Arena retries a task after a 5xx; the same key lets the service return the
      // ticket it already created instead of opening a second one.
      headers: { ...auth, ...tracing(context), ...idempotencyKey(params) },
      json: ticket,
    },
    context,
  );

  return resultOf(response, 'the new ticket', url);
}

/** @type {Command} */
export async function getTicket(params, context) {
  const problems = [];
  const id = params.ticket_id;
  if (!Number.isInteger(id) || /** @type {number} */ (id) < 1) {
    problems.push(`Parameter 'ticket_id' must be a positive integer, got ${show(id)}.`);
  }
  const url = endpoint(params.base_url, `/tickets/${id}`, problems);
  const auth = authorization(params.api_token, problems);
  rejectIfAny(problems);

  const headers = { ...auth, ...tracing(context) };
  const response = await call({ method: 'GET', url, headers }, context);

  if (response.status === 404) {
    const message = `Ticket ${id} does not exist at ${printable(url)}.`;
    throw new ConnectorError('TicketNotFound', message, 404, response.body);
  }
  return resultOf(response, `ticket ${id}`, url);
}

/** The commands by the name the manifest's `run` passes as the first argument. */
export const commands = Object.freeze({ CreateTicket: createTicket, GetTicket: getTicket });

/**
 * @param {Params} params
 * @param {string[]} problems  collects what is wrong
 * @returns {Params}  the fields to send, without absent ones
 */
function ticketFrom(params, problems) {
  if (params.title === undefined || params.title === null) {
    problems.push("Parameter 'title' is required.");
  }
  /** @type {Params} */
  const ticket = {};
  for (const [name, [isValid, expected]] of Object.entries(TICKET_FIELDS)) {
    const value = params[name];
    if (value === undefined || value === null) {
      continue;
    }
    if (isValid(value)) {
      ticket[name] = value;
    } else {
      problems.push(`Parameter '${name}' must be ${expected}, got ${show(value)}.`);
    }
  }
  return ticket;
}

/**
 * @param {unknown} baseUrl  the base_url parameter
 * @param {string} path  appended to the base URL's own path
 * @param {string[]} problems  collects what is wrong
 * @returns {URL}  meaningless when a problem was added
 */
function endpoint(baseUrl, path, problems) {
  const url = typeof baseUrl === 'string' && URL.canParse(baseUrl) ? new URL(baseUrl) : null;
  if (url === null) {
    problems.push(`Parameter 'base_url' must be an http or https URL, got ${show(baseUrl)}.`);
  } else if (!['http:', 'https:'].includes(url.protocol)) {
    problems.push(`Parameter 'base_url' must be an http or https URL, not '${url.protocol}'.`);
  } else if (url.username !== '' || url.password !== '') {
    // Quoting it would log the password; credentials belong in api_token.
    problems.push("Parameter 'base_url' must not hold a user name or password; use 'api_token'.");
  } else {
    url.pathname = `${url.pathname.replace(/\/+$/, '')}${path}`;
    return url;
  }
  return new URL('http://invalid');
}

/**
 * The Authorization header for the api_token parameter; the token is never quoted.
 * @param {unknown} token
 * @param {string[]} problems
 * @returns {Record<string, string>}
 */
function authorization(token, problems) {
  if (token === undefined || token === null || token === '') {
    return {};
  }
  if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
    problems.push("Parameter 'api_token' must be a string of printable characters without spaces.");
    return {};
  }
  return { authorization: `Bearer ${token}` };
}

/**
 * @param {string[]} problems
 */
function rejectIfAny(problems) {
  if (problems.length > 0) {
    throw new ConnectorError('InvalidTicket', problems.join(' '), 400, { problems });
  }
}

/**
 * Lets the service's logs be matched with the gateway's.
 * @param {Context} context
 * @returns {Record<string, string>}
 */
function tracing(context) {
  return context.requestId === '' ? {} : { 'x-request-id': context.requestId };
}

/**
 * @param {Params} params
 * @returns {Record<string, string>}
 */
function idempotencyKey(params) {
  const taskId = params.spiff__task_id;
  return typeof taskId === 'string' && taskId !== '' ? { 'idempotency-key': taskId } : {};
}

/**
 * @param {import('./http.js').UpstreamRequest} request
 * @param {Context} context
 * @returns {Promise<UpstreamResponse>}
 */
async function call(request, context) {
  try {
    return await sendJson(request, context);
  } catch (error) {
    if (!(error instanceof UpstreamError)) {
      throw error;
    }
    // Both are worth a retry: inner 503 and 504 let Arena retry the task.
    if (error.kind === 'timeout') {
      throw new ConnectorError('TicketServiceTimeout', error.message, 504);
    }
    throw new ConnectorError('TicketServiceUnavailable', error.message, 503);
  }
}

/**
 * The upstream's answer as a result, or the ConnectorError that its status means.
 * @param {UpstreamResponse} response
 * @param {string} subject  what the request was about, e.g. "ticket 42"
 * @param {URL} url
 * @returns {Result}
 */
function resultOf({ status, body }, subject, url) {
  if (status >= 200 && status < 300) {
    return { status, body };
  }
  const said = detail(body);
  if (status === 400 || status === 422) {
    const message = `The tickets service rejected ${subject}${said}.`;
    throw new ConnectorError('InvalidTicket', message, status, body);
  }
  if (status === 401 || status === 403) {
    const message = `The tickets service refused access (${status})${said}. Check 'api_token'.`;
    throw new ConnectorError('TicketAccessDenied', message, status, body);
  }
  if (status === 409) {
    const message = `The tickets service refused ${subject} as a conflict${said}.`;
    throw new ConnectorError('TicketConflict', message, 409, body);
  }
  if (status === 429 || status >= 500) {
    const message = `The tickets service is unavailable (${status})${said}. A retry may succeed.`;
    throw new ConnectorError('TicketServiceUnavailable', message, status, body);
  }
  // A redirect or an unexpected 4xx usually means base_url points at the wrong place.
  const message = `${printable(url)} answered ${status}${said}. Check 'base_url'.`;
  throw new ConnectorError('TicketServiceError', message, status >= 400 ? status : 502, body);
}

/**
 * The upstream's own explanation from an error body, as ': explanation', or ''.
 * @param {unknown} body
 * @returns {string}
 */
function detail(body) {
  const document = /** @type {{error?: unknown, message?: unknown} | null} */ (body);
  const text = document?.error ?? document?.message;
  if (typeof text !== 'string' || text === '') {
    return '';
  }
  return `: ${text.slice(0, 200).replace(/\.+$/, '')}`;
}

/**
 * A parameter value quoted for a message, cut short.
 * @param {unknown} value
 * @returns {string}
 */
function show(value) {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
