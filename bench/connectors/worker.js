// Worker-mode echo connector for the benchmark: one JSON request per line in, one answer per line out.
'use strict';

const readline = require('node:readline');

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (!line) return;
  const request = JSON.parse(line);
  if ('cancel' in request) return; // nothing to stop: every answer is immediate
  process.stdout.write(JSON.stringify({ id: request.id, result: { echo: request.payload } }) + '\n');
});
