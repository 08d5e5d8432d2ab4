/**
 * The failures a command reports in its own terms: each carries the error code a
 * modeler can catch with a BPMN boundary event and the inner HTTP status that tells
 * Arena whether a retry can help (429 and 5xx: yes; other 4xx: no).
 */

export class ConnectorError extends Error {
  /**
   * @param {string} code  error code shown to the modeler, e.g. "TicketNotFound"
   * @param {string} message  one sentence that names the thing and says the fix
   * @param {number} status  inner http_status of the answer
   * @param {unknown} [body]  command_response.body, e.g. the upstream's error document
   */
  constructor(code, message, status, body = {}) {
    super(message);
    this.name = 'ConnectorError';
    this.code = code;
    this.status = status;
    this.body = body;
  }
}
