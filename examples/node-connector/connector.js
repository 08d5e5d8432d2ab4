/**
 * The executable the manifest runs: `node connector.js <Command>`. It reads the
 * request on stdin, runs the command and prints one version 2 envelope on stdout.
 * A failure the command understands is an envelope with its own error code and exit
 * status 0; a wrong command line, unreadable stdin or a bug is a non-zero exit,
 * which the gateway answers as connector_failed.
 *
 * With CONNECTOR_MODE=worker it is instead `node connector.js`, a long-lived worker
 * that answers the same envelopes for request lines of either command (worker.js).
 */

import { ConnectorError } from './errors.js';
import { EXIT, contextFromEnv, errorEnvelope, readRequest, successEnvelope } from './protocol.js';
import { commands } from './tickets.js';
import { serveWorker } from './worker.js';

/** @typedef {import('./tickets.js').Command} Command */

/**
 * @param {string[]} args  the arguments after `node connector.js`
 * @returns {Promise<number>}  the exit status
 */
async function main(args) {
  const name = args[0] ?? '';
  if (!Object.hasOwn(commands, name)) {
    fail(unknownCommand(name));
    return EXIT.USAGE;
  }
  const command = commands[/** @type {keyof typeof commands} */ (name)];

  let params;
  try {
    params = await readRequest(process.stdin);
  } catch (error) {
    fail(/** @type {Error} */ (error).message);
    return EXIT.DATA;
  }

  const envelope = await answer(command, params, contextFromEnv(process.env));
  process.stdout.write(`${JSON.stringify(envelope)}\n`);
  return EXIT.OK;
}

/**
 * @param {Command} command
 * @param {Record<string, unknown>} params
 * @param {import('./protocol.js').Context} context
 */
async function answer(command, params, context) {
  try {
    const result = await command(params, context);
    return successEnvelope(result.body, result.status);
  } catch (error) {
    if (error instanceof ConnectorError) {
      return errorEnvelope(error);
    }
    throw error;
  }
}

/**
 * Worker mode: the envelope for a request line; a bug or an unknown command becomes a "failed" answer.
 * @type {import('./worker.js').Handler}
 */
async function answerRequest(name, params, context) {
  if (!Object.hasOwn(commands, name)) {
    throw new Error(unknownCommand(name));
  }
  return answer(commands[/** @type {keyof typeof commands} */ (name)], params, context);
}

/** @param {string} name */
function unknownCommand(name) {
  return `Unknown command '${name}'; this connector offers ${Object.keys(commands).join(', ')}.`;
}

/** @param {string} line  the last line of stderr, which the modeler sees */
function fail(line) {
  process.stderr.write(`${line}\n`);
}

if (process.env.CONNECTOR_MODE === 'worker') {
  await serveWorker(answerRequest, Number(process.env.CONNECTOR_CONCURRENCY) || 1);
} else {
  main(process.argv.slice(2)).then(
    (status) => {
      process.exitCode = status;
    },
    (error) => {
      process.stderr.write(`${error?.stack ?? error}\n`);
      fail(`Internal error: ${error?.message ?? error}`);
      process.exitCode = EXIT.SOFTWARE;
    },
  );
}
