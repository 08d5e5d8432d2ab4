/**
 * An upstream for tests of requests in flight: it holds every request until
 * released, and notes when a caller gives up on one. The tests use it to show that
 * requests run at once, and that a cancelled one stops its upstream call.
 */

import { createServer } from 'node:http';

import { listenOnLoopback } from './tickets-service.js';

/** How long a test waits for something the service should see. */
const WAIT_MS = 10_000;

/**
 * @typedef {object} HeldService
 * @property {string} url
 * @property {() => Promise<void>} received  resolves once a request has arrived
 * @property {() => Promise<void>} abandoned  resolves once a caller has hung up on a held request
 * @property {() => void} release  answers every held request: 200 with {"id": 7}
 * @property {() => Promise<void>} close
 */

/** @returns {Promise<HeldService>} */
export async function startHeldService() {
  /** @type {(() => void)[]} */
  const held = [];
  const received = deferred();
  const abandoned = deferred();
  const server = createServer((request, response) => {
    request.resume();
    response.on('close', () => response.writableFinished || abandoned.note());
    held.push(() => response.writeHead(200, { 'content-type': 'application/json' }).end('{"id": 7}'));
    received.note();
  });

  return {
    ...(await listenOnLoopback(server)),
    received: () => within(received.promise, 'a request to arrive'),
    abandoned: () => within(abandoned.promise, 'a caller to hang up'),
    release: () => held.splice(0).forEach((answer) => answer()),
  };
}

/**
 * `promise`, or a rejection after WAIT_MS: a broken connector fails a test instead of stalling it.
 * @template T
 * @param {Promise<T>} promise
 * @param {string} what  what is awaited, for the message
 * @returns {Promise<T>}
 */
export function within(promise, what) {
  const timeout = new Promise((_, reject) => {
    setTimeout(() => reject(new Error(`waited ${WAIT_MS} ms for ${what}`)), WAIT_MS).unref();
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout]));
}

/** A promise, and `note` that resolves it. */
function deferred() {
  /** @type {(value: void) => void} */
  let note = () => {};
  const promise = new Promise((resolve) => (note = resolve));
  return { promise, note: () => note() };
}
