'use strict';
// A seed-era load client in Node.js (@grpc/grpc-js, a separate HTTP/2 stack from the server's):
// the load shape of the capacity benchmark's case 7, as an independent client written against the
// original contract alone drives a server. No Hello, no seq, no call_id, no timeout.
//
// usage: node interop/node/seed_load.js '<LoadSpec as JSON>'   (scripts/bench/streams.py LoadSpec)
//
// Every session opens at spec.start_at (CLOCK_MONOTONIC seconds, the same clock as Python's
// time.monotonic(), so the orchestrator can start several loaders together) plus a random offset
// within one token period; sends one thought, then one 4-byte content chunk per packet at
// spec.tokens_per_s, and an `echo` call every spec.tool_every_s while the tokens go on (the probe:
// write -> the next ToolCallResult read; one outstanding at a time, matched by order); after
// spec.duration_s, is_finish and half-close. A session is OK when its call ends with status OK.
// A write grpc-js cannot take at once (backpressure) holds the session's tokens until 'drain',
// as a blocking client would. Prints one JSON result line, the Python loader's fields.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const TOKEN = 'tok ';
const MAX_SAMPLES = 200000;
const CATCH_UP_S = 0.5;

function monotonicS() {
  return Number(process.hrtime.bigint()) / 1e9;
}

function loadService() {
  const definition = protoLoader.loadSync('southwest/ai/agent/v1/agent.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).southwest.ai.agent.v1.AgentInteraction;
}

function makeRng(seed) {
  // mulberry32: small, seeded, good enough for offsets
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const trace = process.env.SEED_TRACE ? [] : null; // "sent_at rtt_ms" per probe, for profiling

const tally = {
  opened: 0,
  packets: 0,
  tokens: 0,
  window_start: 0,
  window_end: 0,
  completed: 0,
  calls: 0,
  rtt_ms: [],
  errors: {},
};

function error(text) {
  const key = String(text).split('\n')[0].slice(0, 160);
  if (key in tally.errors || Object.keys(tally.errors).length < 20) {
    tally.errors[key] = (tally.errors[key] || 0) + 1;
  }
}

function sample(valueS) {
  if (tally.rtt_ms.length < MAX_SAMPLES) tally.rtt_ms.push(valueS * 1000);
}

function sleepUntil(momentS) {
  const delayMs = (momentS - monotonicS()) * 1000;
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, delayMs)));
}

function runSession(spec, client, offsetS, probeOffsetS, sessionId) {
  return new Promise((resolve) => {
    const call = client.ChatStream();
    const period = 1 / spec.tokens_per_s;
    let probeSentAt = 0;
    let probeOut = false;
    let blocked = false;
    let finished = false;
    let timer = null;
    let started = 0;
    let nextToken = 0;
    let nextProbe = 0;
    let end = 0;
    tally.opened += 1;

    const stamp = (payload) => ({ session_id: sessionId, timestamp: String(Date.now()), ...payload });
    const write = (payload) => {
      if (!call.write(stamp(payload))) {
        blocked = true;
        call.once('drain', () => {
          blocked = false;
          tick();
        });
      }
    };

    call.on('data', (packet) => {
      if (packet.tool_result && probeOut) {
        if (probeSentAt >= started + spec.warmup_s) sample(monotonicS() - probeSentAt);
        if (trace) trace.push(`${probeSentAt.toFixed(4)} ${((monotonicS() - probeSentAt) * 1000).toFixed(2)}\n`);
        tally.calls += 1;
        probeOut = false;
      }
    });
    call.on('error', (err) => {
      // Status other than OK: counted once, in 'status' below (grpc-js emits both).
      if (!finished) clearTimeout(timer);
      finished = true;
      void err;
    });
    call.on('status', (status) => {
      clearTimeout(timer);
      finished = true;
      if (status.code === grpc.status.OK) {
        if (probeOut) error('stream ended with a probe unanswered');
        else tally.completed += 1;
      } else {
        error(`session ended ${grpc.status[status.code] || status.code}: ${status.details}`);
      }
      resolve();
    });

    function tick() {
      timer = null;
      if (finished || blocked) return;
      const now = monotonicS();
      if (now >= end) {
        finished = true;
        call.write(stamp({ content: { text: '', is_finish: true } }));
        call.end();
        return;
      }
      if (nextProbe <= now) {
        nextProbe += spec.tool_every_s;
        if (probeOut) {
          error('probe due while the previous one was still unanswered');
        } else {
          probeOut = true;
          probeSentAt = monotonicS();
          tally.packets += 1;
          write({ tool_call: { tool_name: 'echo', arguments_json: '{"probe": true}' } });
        }
      } else if (nextToken <= now) {
        tally.packets += 1;
        tally.tokens += 1;
        nextToken = Math.max(nextToken + period, now - CATCH_UP_S);
        write({ content: { text: TOKEN } });
      }
      if (blocked) return;
      const due = Math.min(nextToken, nextProbe, end);
      timer = setTimeout(tick, Math.max(0, (due - monotonicS()) * 1000));
    }

    sleepUntil(spec.start_at + offsetS).then(() => {
      write({ thought: { step_name: 'plan', delta: 'planning the answer' } });
      started = monotonicS();
      end = started + spec.duration_s;
      nextToken = started + period;
      nextProbe = started + probeOffsetS;
      if (!blocked) tick();
    });
  });
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const Service = loadService();
  const clients = [];
  for (let i = 0; i < Math.max(1, spec.channels); i += 1) {
    // One TCP connection per client: grpc-js shares subchannels unless the options differ.
    clients.push(new Service(spec.target, grpc.credentials.createInsecure(), { 'grpc.client_index': i }));
  }
  const rng = makeRng(spec.seed || process.pid);
  tally.window_start = spec.start_at;
  tally.window_end = spec.start_at + spec.duration_s;
  const deadline = setTimeout(() => {
    error(`loader deadline of ${spec.deadline_s} s reached; partial results`);
    finish(true);
  }, spec.deadline_s * 1000);
  const sessions = [];
  for (let i = 0; i < spec.sessions; i += 1) {
    const offset = rng() / spec.tokens_per_s;
    const probeOffset = rng() * spec.tool_every_s;
    const id = `seed-${process.pid}-${i}-${Math.floor(rng() * 1e9)}`;
    sessions.push(runSession(spec, clients[i % clients.length], offset, probeOffset, id));
  }
  await Promise.all(sessions);
  clearTimeout(deadline);
  finish(false);

  function finish(cutShort) {
    for (const client of clients) client.close();
    if (trace) require('node:fs').writeFileSync(`${process.env.SEED_TRACE}.${process.pid}`, trace.join(''));
    process.stdout.write(`${JSON.stringify({ event: 'result', ...tally, cut_short: cutShort })}\n`);
    process.exit(0);
  }
}

main().catch((err) => {
  error(err && err.stack ? err.stack : String(err));
  process.stdout.write(`${JSON.stringify({ event: 'result', ...tally, cut_short: true })}\n`);
  process.exit(0);
});
