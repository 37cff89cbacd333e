'use strict';
// An independent ChatStream client in Node.js (@grpc/grpc-js + @grpc/proto-loader), loading the
// contract from proto/ at run time: no generated code, no Python. It proves the dispatcher speaks
// the contract to a second gRPC stack.
//
// usage: node interop/node/interop.js [--ca-file FILE [--cert-file FILE --key-file FILE]] HOST:PORT [BLOCKED_TEXT]
//
// With --ca-file the client speaks TLS and checks the dispatcher's certificate against FILE; with
// --cert-file/--key-file it also presents a client certificate (mutual TLS).
//
// The dispatcher must have been started with a --block-pattern matching BLOCKED_TEXT (default
// "launch codes"). Two sessions run one after the other:
//   full  Hello/Welcome, thought and content packets, two tool calls (echo, calculator) with
//         call ids, results matched by call id, finish, half-close: status OK, x-session-id.
//   stop  content with the blocked text: a StopSignal (code, reason, path, stop id), our
//         StopConfirm and half-close: status PERMISSION_DENIED with the x-stop-* trailers.
// Every check is a node:assert; the first failure prints a message and exits 1.

const assert = require('node:assert/strict');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = 'southwest/ai/agent/v1/agent.proto';
const WAIT_MS = 10000; // every wait for the dispatcher is bounded by this
const RUN_LIMIT_MS = 60000; // and the whole run by this

function loadContract() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (tool_name, call_id), not camelCase
    longs: String,
    enums: String, // enum values by name: 'STOP_CODE_POLICY_VIOLATION'
    defaults: true,
    oneofs: true, // packet.signal names the oneof member that is set
  });
  return grpc.loadPackageDefinition(definition).southwest.ai.agent.v1;
}

// A failure that is not an assertion but needs no stack trace either (e.g. the dispatcher is unreachable).
class Failure extends Error {}

const openCalls = new Set(); // cancelled on the way out, so a failed check does not wait for a deadline

function log(line) {
  process.stdout.write(`${line}\n`);
}

// One ChatStream call: upstream writes, every downstream packet recorded, bounded waits.
class Session {
  constructor(client, name) {
    this.name = name;
    this.packets = [];
    this.initialMetadata = null;
    this.status = null; // {code, details, metadata} once the call has ended
    this.waiters = new Set();
    this.seq = 0;
    this.call = client.ChatStream({ deadline: Date.now() + WAIT_MS * 3 });
    openCalls.add(this.call);
    this.call.on('metadata', (metadata) => {
      this.initialMetadata = metadata;
      this.changed();
    });
    this.call.on('data', (packet) => {
      this.packets.push(packet);
      this.changed();
    });
    this.call.on('status', (status) => {
      openCalls.delete(this.call);
      this.status = status;
      this.changed();
    });
    // A non-OK status also arrives as an 'error' event; the 'status' event is what we check.
    this.call.on('error', () => {});
  }

  changed() {
    for (const waiter of [...this.waiters]) waiter();
  }

  // Resolves with predicate()'s first truthy value; rejects after WAIT_MS naming `what`.
  waitFor(predicate, what, hint = '') {
    return new Promise((resolve, reject) => {
      const check = () => {
        let value;
        try {
          value = predicate();
        } catch (err) {
          finish();
          reject(err);
          return;
        }
        if (value) {
          finish();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new assert.AssertionError({
          message: `[${this.name}] no ${what} within ${WAIT_MS} ms${hint ? ` (${hint})` : ''}; ` +
            `downstream so far: ${this.describe()}`,
        }));
      }, WAIT_MS);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  describe() {
    const kinds = this.packets.map((p) => p.signal);
    const status = this.status ? ` status=${grpc.status[this.status.code]} "${this.status.details}"` : '';
    return `[${kinds.join(', ')}]${status}`;
  }

  send(payload) {
    this.seq += 1;
    this.call.write({ seq: this.seq, timestamp: Date.now(), ...payload });
    return this.seq;
  }

  of(kind) {
    return this.packets.filter((p) => p.signal === kind).map((p) => p[kind]);
  }

  async hello(agentName) {
    this.send({ hello: { agent_name: agentName, agent_version: '1.0.0', features: ['seq', 'call_id', 'stop_confirm'] } });
    await this.waitFor(() => this.packets.length > 0, 'first downstream packet');
    assert.equal(this.packets[0].signal, 'welcome', `[${this.name}] the first downstream packet must be the Welcome`);
    const welcome = this.packets[0].welcome;
    assert.ok(welcome.session_id, `[${this.name}] Welcome.session_id is empty`);
    return welcome;
  }

  async end() {
    this.call.end(); // half-close
    return this.waitFor(() => this.status, 'end of the stream after half-close');
  }
}

function metadataValue(metadata, key) {
  const values = metadata ? metadata.get(key) : [];
  assert.equal(values.length, 1, `metadata ${key}: expected one value, got ${JSON.stringify(values)}`);
  return decodeURIComponent(String(values[0])); // non-ASCII values are percent-encoded
}

async function fullSession(client) {
  const s = new Session(client, 'full');
  const welcome = await s.hello('node-interop');
  log(`full: welcome session_id=${welcome.session_id} dispatcher_id=${welcome.dispatcher_id}`);
  await s.waitFor(() => s.initialMetadata, 'initial metadata');
  assert.equal(metadataValue(s.initialMetadata, 'x-session-id'), welcome.session_id,
    'x-session-id header differs from Welcome.session_id');

  s.send({ thought: { step_name: 'plan', delta: 'echo the greeting, then compute 2+3*4' } });
  s.send({ content: { text: 'Let me check. ' } });
  const calls = {
    'node-echo-1': { tool: 'echo', args: { text: 'hi' }, expected: { text: 'hi' } },
    'node-calc-1': { tool: 'calculator', args: { expression: '2+3*4' }, expected: { expression: '2+3*4', value: 14 } },
  };
  for (const [callId, c] of Object.entries(calls)) {
    s.send({ tool_call: { tool_name: c.tool, arguments_json: JSON.stringify(c.args), call_id: callId, timeout_ms: 5000 } });
  }
  const results = await s.waitFor(() => {
    const byId = new Map(s.of('tool_result').map((r) => [r.call_id, r]));
    return Object.keys(calls).every((id) => byId.has(id)) && byId;
  }, 'tool results for both call ids');
  for (const [callId, c] of Object.entries(calls)) {
    const result = results.get(callId);
    assert.equal(result.tool_name, c.tool, `${callId}: tool_name`);
    assert.equal(result.error, null, `${callId}: unexpected tool error ${JSON.stringify(result.error)}`);
    assert.deepEqual(JSON.parse(result.result_json), c.expected, `${callId}: result_json`);
    log(`full: tool ${c.tool} [${callId}] -> ${result.result_json}`);
  }
  const value = JSON.parse(results.get('node-calc-1').result_json).value;
  s.send({ content: { text: `The answer is ${value}.` } });
  const lastSeq = s.send({ content: { text: '', is_finish: true } });

  const status = await s.end();
  assert.equal(status.code, grpc.status.OK, `full: status ${grpc.status[status.code]} "${status.details}"`);
  assert.equal(metadataValue(status.metadata, 'x-session-id'), welcome.session_id, 'trailer x-session-id');
  assert.equal(metadataValue(status.metadata, 'x-session-state'), 'FINISHED', 'trailer x-session-state');
  assert.equal(s.of('stop').length, 0, 'full: unexpected StopSignal');
  const acked = s.of('ack').map((a) => Number(a.seq));
  assert.ok(acked.length > 0 && Math.max(...acked) <= lastSeq, `full: acks ${acked} (last seq sent ${lastSeq})`);
  log(`full: status OK, x-session-state FINISHED, ${s.packets.length} downstream packets, highest ack ${Math.max(...acked)}`);
}

async function stopSession(client, blockedText) {
  const s = new Session(client, 'stop');
  const welcome = await s.hello('node-interop-stop');
  s.send({ thought: { step_name: 'plan', delta: 'answer the question' } });
  s.send({ content: { text: 'Sure. ' } });
  s.send({ content: { text: `Here are the ${blockedText}: ` } });
  const stop = await s.waitFor(() => s.of('stop')[0], 'StopSignal',
    `was the dispatcher started with a --block-pattern matching "${blockedText}"?`);
  assert.ok(stop.reason, 'StopSignal.reason is empty (the original contract\'s field must always be filled)');
  assert.equal(stop.code, 'STOP_CODE_POLICY_VIOLATION', 'StopSignal.code');
  assert.ok(stop.stop_id, 'StopSignal.stop_id is empty');
  assert.equal(stop.path[0], 'policy:content_blocklist', `StopSignal.path ${stop.path}`);
  assert.ok(stop.grace_ms > 0, `StopSignal.grace_ms ${stop.grace_ms}`);
  log(`stop: StopSignal ${stop.code} reason="${stop.reason}" path=${stop.path.join(',')}`);

  // The agent has halted: confirm with the last seq actually sent, then half-close.
  s.send({ stop_confirm: { stop_id: stop.stop_id, last_seq: s.seq, pending_tool_calls: [], halt_us: 1, discarded_packets: 0 } });
  const status = await s.end();
  assert.equal(status.code, grpc.status.PERMISSION_DENIED,
    `stop: status ${grpc.status[status.code]} "${status.details}" (POLICY_VIOLATION ends with PERMISSION_DENIED)`);
  const trailer = (key) => metadataValue(status.metadata, key);
  assert.equal(trailer('x-session-id'), welcome.session_id, 'trailer x-session-id');
  assert.equal(trailer('x-session-state'), 'STOPPED', 'trailer x-session-state');
  assert.equal(trailer('x-stop-code'), 'POLICY_VIOLATION', 'trailer x-stop-code');
  assert.equal(trailer('x-stop-reason'), stop.reason, 'trailer x-stop-reason');
  assert.equal(trailer('x-stop-path'), stop.path.join(','), 'trailer x-stop-path');
  assert.equal(trailer('x-stop-id'), stop.stop_id, 'trailer x-stop-id');
  assert.equal(trailer('x-stop-confirmed'), 'true', 'trailer x-stop-confirmed');
  log(`stop: status PERMISSION_DENIED, x-stop-code POLICY_VIOLATION, x-stop-confirmed true, ` +
    `stop->confirm ${trailer('x-stop-to-confirm-ms')} ms`);
}

const USAGE = 'usage: node interop/node/interop.js [--ca-file FILE [--cert-file FILE --key-file FILE]] HOST:PORT [BLOCKED_TEXT]\n';

// Options first, then the positional arguments; null when the command line is wrong.
function parseArgs(argv) {
  const options = {};
  const rest = [...argv];
  while (rest.length && rest[0].startsWith('--')) {
    const flag = rest.shift();
    if (!['--ca-file', '--cert-file', '--key-file'].includes(flag) || !rest.length) return null;
    options[flag.slice(2)] = rest.shift();
  }
  if (rest.length < 1 || rest.length > 2) return null;
  if (Boolean(options['cert-file']) !== Boolean(options['key-file'])) return null;
  if (options['cert-file'] && !options['ca-file']) return null;
  return { options, target: rest[0], blockedText: rest[1] || 'launch codes' };
}

function credentials(options) {
  if (!options['ca-file']) return { creds: grpc.credentials.createInsecure(), mode: 'plaintext' };
  const fs = require('node:fs');
  const root = fs.readFileSync(options['ca-file']);
  const key = options['key-file'] ? fs.readFileSync(options['key-file']) : null;
  const chain = options['cert-file'] ? fs.readFileSync(options['cert-file']) : null;
  return { creds: grpc.credentials.createSsl(root, key, chain), mode: key ? 'mutual TLS' : 'TLS' };
}

async function main(argv) {
  const args = parseArgs(argv);
  if (args === null) {
    process.stderr.write(USAGE);
    return 2;
  }
  const { options, target, blockedText } = args;
  const pkg = loadContract();
  const { creds, mode } = credentials(options);
  const client = new pkg.AgentInteraction(target, creds);
  try {
    await new Promise((resolve, reject) => {
      client.waitForReady(Date.now() + WAIT_MS, (err) => (err ? reject(new Failure(`cannot reach ${target}: ${err.message}`)) : resolve()));
    });
    log(`interop: @grpc/grpc-js ${require('@grpc/grpc-js/package.json').version} -> ${target} (${mode})`);
    await fullSession(client);
    await stopSession(client, blockedText);
  } finally {
    for (const call of openCalls) call.cancel();
    client.close();
  }
  log('interop: PASS (full, stop)');
  return 0;
}

const guard = setTimeout(() => {
  process.stderr.write(`interop: FAIL: still running after ${RUN_LIMIT_MS} ms\n`);
  process.exit(1);
}, RUN_LIMIT_MS);
guard.unref();

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const expected = err instanceof assert.AssertionError || err instanceof Failure;
    process.stderr.write(`interop: FAIL: ${expected ? err.message : err.stack}\n`);
    process.exitCode = 1;
  },
);
