// ringcast.js (src/ringcast.js) in Node, with the `ws` package, against real ringcast
// servers this script starts: subscribe, publish and receive; a steady HTTP publish stream
// on a topic with history while a TCP proxy in front of the server cuts every connection
// twice (the client must see every offset exactly once, in order, with no gap, in both
// binary envelope versions); rewind; a server restart on the same port (the client must
// report `recovery_failed` with `epoch_changed`, not a silent gap); and tokens (auth first,
// refresh, 4001 → a new token and recovery, 4004 → stop, a refused token → one retry, stop).
//
// Usage: node ringcast_node.mjs PATH/TO/ringcast [SERVER ARGS...]
// RINGCAST_NO_HISTORY=1 runs only what needs no history (for a server before history); the
// skipped parts are named in the output. 127.0.0.1 only; every wait is bounded.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { Ringcast } from "../../src/ringcast.js";
import {
  HISTORY_TOML, assertStream, dir, publish, sleep, startProxy, startServer, stopServer, stream, waitFor,
} from "./harness.mjs";

const [bin, ...serverArgs] = process.argv.slice(2);
if (!bin) { console.error("usage: node ringcast_node.mjs PATH/TO/ringcast [SERVER ARGS...]"); process.exit(2); }
const HISTORY = process.env.RINGCAST_NO_HISTORY !== "1";
setTimeout(() => { console.error("ringcast.js node: overall timeout"); process.exit(1); }, 100000).unref();

/** A client through `port` that records its events. */
function client(port, opts = {}) {
  const rc = new Ringcast(`ws://127.0.0.1:${port}/ws`, { WebSocket, minDelay: 25, maxDelay: 200, drainDelay: 100, ...opts });
  const ev = { open: [], close: [], message: [], recovered: [], recovery_failed: [], gap: [], error: [], stopped: [] };
  for (const k of Object.keys(ev)) rc.on(k, (d) => ev[k].push(d));
  const of = (topic) => ev.message.filter((m) => m.topic === topic)
    .map((m) => ({
      ...m,
      text: typeof m.data === "string" ? m.data : m.binary ? Buffer.from(m.data).toString() : JSON.stringify(m.data),
    }));
  return { rc, ev, of };
}

const config = join(dir, "h.toml");
writeFileSync(config, HISTORY ? HISTORY_TOML : "");
const start = (port, args = []) => startServer(bin, port, [...serverArgs, "--config", config, ...args]);

let server = await start(0);
const port = server.port;
const proxy = await startProxy(() => port);

// --- Subscribe, publish, receive, and a reconnect on a topic without history ---------
{
  const { rc, ev, of } = client(proxy.port);
  const got = [];
  const ack = await rc.subscribe("plain", { onMessage: (data, m) => got.push([data, m.offset]) });
  assert.equal(ack.op, "subscribe");
  assert.equal(ack.epoch, undefined, "the default namespace keeps no history");
  await publish(port, "plain", "hello");
  await waitFor(() => got.length === 1, 5000, "the HTTP publish");
  assert.deepEqual(got[0], ["hello", undefined]);
  const pub = await rc.publish("plain", { n: 1 }, { echo: true });
  assert.equal(pub.op, "publish");
  await waitFor(() => got.length === 2, 5000, "the echoed publish");
  // An object published as data arrives as that JSON value (docs/protocol.md).
  assert.deepEqual(got[1][0], { n: 1 });
  await publish(port, "plain", new Uint8Array([0xca, 0xfe]));
  await waitFor(() => got.length === 3, 5000, "a binary publish");
  assert.deepEqual([...got[2][0]], [0xca, 0xfe]);
  await assert.rejects(rc.publish("nope:x", "x"), { code: "bad_topic" });
  assert.equal(ev.error.at(-1).code, "bad_topic");

  proxy.cut(100);
  await waitFor(() => ev.open.length === 2, 5000, "a reconnect after the cut");
  assert.equal(ev.close[0].code, 1006);
  await sleep(50);
  await publish(port, "plain", "after the cut");
  await waitFor(() => of("plain").length === 4, 5000, "a message after the reconnect");
  assert.equal(of("plain")[3].data, "after the cut");
  assert.deepEqual(ev.gap, []);
  rc.close();
  console.log("  subscribe, publish, receive, reconnect: ok");
}

if (!HISTORY) {
  console.log("  SKIPPED (RINGCAST_NO_HISTORY=1): recovery through cuts, rewind, restart, recovery with tokens");
}

// --- Recovery through cuts, both envelope versions -----------------------------------
const N = 600;
let streamed; // the clients that saw the stream, for the restart below
if (HISTORY) {
  const a = client(proxy.port);
  const b = client(proxy.port, { envelope: 2 });
  const [ackA, ackB] = await Promise.all([a.rc.subscribe("h:s"), b.rc.subscribe("h:s")]);
  assert.match(ackA.epoch, /^[0-9A-Za-z]{8}$/);
  assert.equal(ackB.epoch, ackA.epoch);
  const base = ackA.offset;
  const cutsBefore = proxy.cuts;
  await stream(port, "h:s", N, [200, 400], () => proxy.cut(50));
  assert.equal(proxy.cuts - cutsBefore, 2);
  for (const [name, c] of [["envelope 1", a], ["envelope 2", b]]) {
    await waitFor(() => c.of("h:s").length >= N, 15000, `${name}: all ${N} messages`);
  }
  await sleep(300); // anything extra (a duplicate) would arrive now
  for (const [name, c] of [["envelope 1", a], ["envelope 2", b]]) {
    assertStream(name, c.of("h:s"), N, base);
    assert.deepEqual(c.ev.gap, [], `${name}: no gap`);
    assert.deepEqual(c.ev.recovery_failed, [], `${name}: no failed recovery`);
    assert.ok(c.ev.close.length >= 2 && c.ev.open.length >= 3, `${name}: the cuts did disconnect it`);
    assert.equal(c.ev.recovered.length, c.ev.open.length - 1, `${name}: every reconnect recovered`);
    const replayed = c.ev.recovered.reduce((n, r) => n + r.to - r.from, 0);
    assert.ok(replayed > 0, `${name}: the recoveries replayed what the cuts lost`);
    assert.deepEqual(c.rc.position("h:s"), { epoch: ackA.epoch, offset: base + N });
  }
  const replayed = a.ev.recovered.map((r) => r.to - r.from).join("+");
  console.log(`  ${N} publications through 2 cuts, both envelopes: every offset once, in order, no gap (envelope 1 replayed ${replayed})`);

  // Rewind: the last 5 kept, then live.
  const r = client(proxy.port);
  const ackR = await r.rc.subscribe("h:s", { rewind: 5 });
  assert.equal(ackR.rewound, 5);
  await publish(port, "h:s", "live");
  await waitFor(() => r.of("h:s").length === 6, 5000, "rewound + live");
  assert.deepEqual(r.of("h:s").map((m) => m.offset), [N - 4, N - 3, N - 2, N - 1, N, N + 1].map((o) => o + base));
  assert.equal(r.of("h:s")[5].text, "live");
  r.rc.close();
  await waitFor(() => a.of("h:s").length === N + 1 && b.of("h:s").length === N + 1, 5000, "the live one");
  streamed = { a, b, epoch: ackA.epoch, last: base + N + 1 };
  console.log("  rewind: ok");
}

// --- A server restart on the same port: recovery fails with epoch_changed -------------
if (HISTORY) {
  const { a, b, epoch, last } = streamed;
  assert.equal(await stopServer(server.proc), 0, "the drain exits 0");
  server = await start(port);
  for (const [name, c] of [["envelope 1", a], ["envelope 2", b]]) {
    await waitFor(() => c.ev.recovery_failed.length === 1, 10000, `${name}: recovery_failed`);
    assert.ok(c.ev.close.some((e) => e.code === 1001), `${name}: the drain's 1001`);
    const f = c.ev.recovery_failed[0];
    assert.equal(f.topic, "h:s");
    assert.equal(f.reason, "epoch_changed");
    assert.notEqual(f.epoch, epoch);
    assert.deepEqual(f.previous, { epoch, offset: last });
  }
  await publish(port, "h:s", "new epoch");
  for (const c of [a, b]) {
    await waitFor(() => c.of("h:s").length === N + 2, 5000, "a message in the new epoch");
    const m = c.of("h:s").at(-1);
    assert.equal(m.text, "new epoch");
    assert.equal(m.offset, c.ev.recovery_failed[0].offset + 1);
    assert.deepEqual(c.ev.gap, []);
    c.rc.close();
  }
  console.log("  restart: recovery_failed (epoch_changed) with the new epoch, then live");
}
assert.equal(await stopServer(server.proc), 0);
proxy.close();

// --- Tokens ----------------------------------------------------------------------------
{
  const secretFile = join(dir, "secret");
  const secret = randomBytes(32).toString("hex");
  const apiKey = randomBytes(24).toString("hex");
  writeFileSync(secretFile, secret, { mode: 0o600 });
  const auth = await start(0, ["--jwt-hmac-secret-file", secretFile, "--api-key", apiKey, "--jwt-leeway", "0s"]);
  const aport = auth.port;
  const b64url = (s) => Buffer.from(s).toString("base64url");
  const mint = (sub, expIn) => {
    const h = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
    const c = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + expIn, topics: { sub: ["h:*", "t.*"], pub: ["t.*"] } }));
    return `${h}.${c}.${createHmac("sha256", secret).update(`${h}.${c}`).digest("base64url")}`;
  };
  const key = { "x-api-key": apiKey };
  const topic = HISTORY ? "h:tok" : "t.tok";

  // Refresh keeps the connection past the first token's exp; then a refresh with another
  // `sub` is refused, the server closes with 4001 at exp, the client gets a new token,
  // reconnects and recovers.
  const reasons = [];
  let wrongSubOnRefresh = false;
  const t = client(aport, {
    getToken: async ({ reason }) => {
      reasons.push(reason);
      return mint(reason === "refresh" && wrongSubOnRefresh ? "mallory" : "ann", 3);
    },
  });
  await t.rc.subscribe(topic);
  await publish(aport, topic, "t1", key);
  await waitFor(() => t.of(topic).length === 1, 5000, "a message with a token");
  await waitFor(() => reasons.includes("refresh"), 5000, "a refresh_required");
  await sleep(2500); // past the first token's exp
  await publish(aport, topic, "t2", key);
  await waitFor(() => t.of(topic).length === 2, 5000, "a message after the first token's exp");
  assert.equal(t.ev.open.length, 1, "refreshed, not reconnected");

  wrongSubOnRefresh = true;
  await waitFor(() => t.ev.error.some((e) => e.op === "refresh" && e.code === "forbidden"), 6000, "the refused refresh");
  await waitFor(() => t.ev.close.some((e) => e.code === 4001) && t.ev.open.length === 2, 8000, "4001 and a reconnect");
  assert.ok(reasons.includes("expired"));
  wrongSubOnRefresh = false;
  await publish(aport, topic, "t3", key);
  await waitFor(() => t.of(topic).length === 3, 5000, "a message after the 4001 reconnect");
  if (HISTORY) {
    assert.equal(t.ev.recovered.length, 1);
    assert.deepEqual(t.of(topic).map((m) => m.offset), [1, 2, 3]);
  }
  assert.deepEqual(t.of(topic).map((m) => m.data), ["t1", "t2", "t3"]);
  console.log("  tokens: auth, refresh, 4001 → new token and recovery: ok");

  // 4004: disconnected by the backend API, no reconnect.
  const r = await fetch(`http://127.0.0.1:${aport}/api/disconnect`, {
    method: "POST", body: JSON.stringify({ user: "ann" }),
    headers: { "content-type": "application/json", ...key }, signal: AbortSignal.timeout(5000),
  });
  assert.equal(r.status, 200);
  await waitFor(() => t.ev.stopped.length === 1, 5000, "stopped after 4004");
  assert.equal(t.ev.close.at(-1).code, 4004);
  const opens = t.ev.open.length;
  await sleep(600);
  assert.equal(t.ev.open.length, opens, "no reconnect after 4004");

  // A token that does not verify: one more token, refused too, then stop.
  let calls = 0;
  const bad = client(aport, { getToken: () => { calls++; return "not.a.jwt"; } });
  await waitFor(() => bad.ev.stopped.length === 1, 5000, "stopped after refused tokens");
  assert.equal(calls, 2);
  assert.equal(bad.ev.open.length, 0);
  assert.ok(bad.ev.error.some((e) => e.code === "token_invalid"));
  console.log("  tokens: 4004 → stop; a refused token → one retry, then stop: ok");
  assert.equal(await stopServer(auth.proc), 0);
}

console.log(`ringcast.js node: ok${HISTORY ? "" : " (history parts skipped)"}`);
