/**
 * A connector written with connector-kit, served by the kit's tests in both modes.
 * The payload's `action` picks a behaviour; every other key is ignored.
 */

import { setTimeout as sleep } from 'node:timers/promises';

import { Failure, run } from '../connector-kit.js';

/** @type {import('../connector-kit.js').Handler} */
async function handle(payload, context) {
  switch (payload.action ?? 'greet') {
    case 'greet':
      context.log(`Greeting ${payload.name}`);
      return { greeting: `Hello ${payload.name}` };
    case 'context':
      return {
        command: context.command,
        requestId: context.requestId,
        deadline: context.deadline,
        remaining: context.remaining(),
      };
    case 'envelope':
      return { command_response_version: 2, command_response: { body: { id: 42 }, http_status: 201 } };
    case 'refuse':
      throw new Failure('Invoice INV-7 is already paid.');
    case 'unavailable':
      throw new Failure('The ledger is down for maintenance; try again later.', { temporary: true });
    case 'crash':
      return { first: payload.items[0] };
    case 'not_json':
      return { count: 10n };
    case 'print':
      console.log('a stray console.log');
      return 'printed';
    case 'wait':
      return wait(payload, context);
    default:
      throw new Failure(`Unknown action '${payload.action}'.`);
  }
}

/**
 * Waits `seconds`, or less if the gateway cancels the request.
 * @param {{seconds: number, label?: string}} payload
 * @param {import('../connector-kit.js').Context} context
 */
async function wait(payload, context) {
  try {
    await sleep(payload.seconds * 1000, undefined, { signal: context.signal });
  } catch {
    context.log(`Request ${context.requestId} was cancelled`);
  }
  return { waited: payload.seconds, label: payload.label ?? null };
}

run(handle);
