/**
 * The executable the manifest runs: `node connector.js <Command>`. It reads the
 * request on stdin, runs the command and prints one version 2 envelope on stdout.
 * A failure the command understands is an envelope with its own error code and exit
 * status 0; a wrong command line, unreadable stdin or a bug is a non-zero exit,
 * which the gateway answers as connector_failed.
 */

import { ConnectorError } from './errors.js';
import { EXIT, contextFromEnv, errorEnvelope, readRequest, successEnvelope } from './protocol.js';
import { commands } from './tickets.js';

/** @typedef {import('./tickets.js').Command} Command */

/**
 * @param {string[]} args  the arguments after `node connector.js`
 * @returns {Promise<number>}  the exit status
 */
async function main(args) {
  const name = args[0] ?? '';
  if (!Object.hasOwn(commands, name)) {
    const offered = Object.keys(commands).join(', ');
    fail(`Unknown command '${name}'; this connector offers ${offered}.`);
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

  const envelope = await answer(command, params);
  process.stdout.write(`${JSON.stringify(envelope)}\n`);
  return EXIT.OK;
}

/**
 * @param {Command} command
 * @param {Record<string, unknown>} params
 */
async function answer(command, params) {
  try {
    const result = await command(params, contextFromEnv(process.env));
    return successEnvelope(result.body, result.status);
  } catch (error) {
    if (error instanceof ConnectorError) {
      return errorEnvelope(error);
    }
    throw error;
  }
}

/** @param {string} line  the last line of stderr, which the modeler sees */
function fail(line) {
  process.stderr.write(`${line}\n`);
}

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
