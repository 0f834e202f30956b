// ringcast.js (src/ringcast.js) against a scripted WebSocket: what a correct server never
// does, and so what the end-to-end tests cannot show (duplicate and skipped offsets,
// leftovers of a previous subscription), plus the exact command order of reconnects and
// tokens. No network. Exits non-zero on the first mismatch.
//
// Usage: node ringcast_unit.mjs
import assert from "node:assert/strict";
import { Ringcast } from "../../src/ringcast.js";

setTimeout(() => { console.error("ringcast unit: overall timeout"); process.exit(1); }, 20000).unref();

/** A WebSocket whose server side the test plays: it records what the client sends. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(data) { this.sent.push(typeof data === "string" ? JSON.parse(data) : new Uint8Array(data)); }
  close() { this.readyState = 3; }
  // The server's side:
  open() { this.readyState = 1; this.onopen?.({}); }
  text(obj) { this.onmessage?.({ data: JSON.stringify(obj) }); }
  binary(bytes) { this.onmessage?.({ data: new Uint8Array(bytes).buffer }); }
  end(code, reason = "") { this.readyState = 3; this.onclose?.({ code, reason }); }
  /** The last command sent of `type`. */
  last(type) { return this.sent.filter((c) => c.type === type).at(-1); }
}
const latest = () => FakeSocket.all.at(-1);
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what) {
  for (let i = 0; i < 200; i++) { if (cond()) return; await tick(5); }
  throw new Error(`timed out waiting for ${what}`);
}
function client(opts = {}) {
  const rc = new Ringcast("ws://127.0.0.1:1/ws", { WebSocket: FakeSocket, minDelay: 5, maxDelay: 20, drainDelay: 5, ...opts });
  const seen = { message: [], gap: [], recovered: [], recovery_failed: [], error: [], close: [], stopped: [], open: [] };
  for (const k of Object.keys(seen)) rc.on(k, (d) => seen[k].push(d));
  return { rc, seen };
}
const ack = (cmd, extra = {}) => ({ type: "ack", id: cmd.id, op: cmd.type, topic: cmd.topic, ...extra });

// URL: envelope 2 is asked for in the query string; a page-relative URL is not needed in Node.
{
  const rc = new Ringcast("ws://127.0.0.1:1/ws?x=1", { WebSocket: FakeSocket, envelope: 2 });
  assert.equal(rc.url, "ws://127.0.0.1:1/ws?x=1&envelope=2");
  assert.equal(rc.envelope, 2);
  const plain = new Ringcast("http://127.0.0.1:1/ws?envelope=2", { WebSocket: FakeSocket });
  assert.equal(plain.envelope, 2);
  rc.close();
  plain.close();
}

// Offsets: in order once; a duplicate is dropped; a jump is a gap, recovered by
// unsubscribe + subscribe with recover from the last offset delivered.
{
  const { rc, seen } = client();
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  const ws = latest();
  ws.open();
  rc.subscribe("h:t");
  const sub = ws.last("subscribe");
  assert.equal(sub.recover, undefined);
  // A message before the ack is held until it (and dropped when the ack says it is old).
  ws.text({ type: "message", topic: "h:t", offset: 5, data: "old" });
  ws.text(ack(sub, { epoch: "E1", offset: 5 }));
  ws.text({ type: "message", topic: "h:t", offset: 6, data: "m6" });
  ws.text({ type: "message", topic: "h:t", offset: 6, data: "dup" });
  ws.text({ type: "message", topic: "h:t", offset: 4, data: "older" });
  ws.text({ type: "message", topic: "h:t", offset: 7, data: "m7" });
  assert.deepEqual(seen.message.map((m) => [m.offset, m.data]), [[6, "m6"], [7, "m7"]]);
  assert.deepEqual(rc.position("h:t"), { epoch: "E1", offset: 7 });

  ws.text({ type: "message", topic: "h:t", offset: 10, data: "m10" });
  assert.deepEqual(seen.gap, [{ topic: "h:t", epoch: "E1", expected: 8, received: 10, recovering: true }]);
  const [unsub, resub] = ws.sent.slice(-2);
  assert.equal(unsub.type, "unsubscribe");
  assert.deepEqual(resub.recover, { epoch: "E1", offset: 7 });
  // Leftovers of the old subscription arrive before the new ack: covered by the replay.
  ws.text({ type: "message", topic: "h:t", offset: 11, data: "left" });
  ws.text(ack(unsub));
  ws.text(ack(resub, { epoch: "E1", offset: 11, recovered: true }));
  for (const o of [8, 9, 10, 11, 12]) ws.text({ type: "message", topic: "h:t", offset: o, data: `m${o}` });
  assert.deepEqual(seen.message.map((m) => m.offset), [6, 7, 8, 9, 10, 11, 12]);
  assert.equal(seen.gap.length, 1);
  assert.equal(seen.recovered.length, 1);

  // Binary envelope v1 on a history topic: no offset, counted as the next one.
  ws.binary([3, ...Buffer.from("h:t"), 0xca, 0xfe]);
  assert.deepEqual([...seen.message.at(-1).data], [0xca, 0xfe]);
  assert.equal(seen.message.at(-1).offset, 13);
  rc.close();
}

// Reconnect: every topic again, with recover where a position is known, rewind only the
// first time; a failed recovery is an event with the new position, and tracking restarts.
{
  const { rc, seen } = client();
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  let ws = latest();
  ws.open();
  rc.subscribe("h:a", { rewind: 3 });
  rc.subscribe("plain");
  const [sa, sp] = ws.sent;
  assert.equal(sa.rewind, 3);
  ws.text(ack(sa, { epoch: "E1", offset: 20, rewound: 3 }));
  ws.text(ack(sp));
  for (const o of [18, 19, 20, 21]) ws.text({ type: "message", topic: "h:a", offset: o, data: "x" });
  ws.text({ type: "message", topic: "plain", data: "p" });
  assert.deepEqual(seen.message.map((m) => m.offset), [18, 19, 20, 21, undefined]);

  const before = FakeSocket.all.length;
  ws.end(1006);
  assert.equal(seen.close.at(-1).reconnect, true);
  await until(() => FakeSocket.all.length > before, "a reconnect");
  ws = latest();
  ws.open();
  const ra = ws.sent.find((c) => c.topic === "h:a");
  const rp = ws.sent.find((c) => c.topic === "plain");
  assert.deepEqual(ra.recover, { epoch: "E1", offset: 21 });
  assert.equal(ra.rewind, undefined);
  assert.equal(rp.recover, undefined);
  assert.equal(rp.rewind, undefined);
  ws.text({ type: "message", topic: "h:a", offset: 1, data: "new epoch, before the ack" });
  ws.text(ack(ra, { epoch: "E2", offset: 1, recovered: false, reason: "epoch_changed" }));
  assert.deepEqual(seen.recovery_failed, [{ topic: "h:a", reason: "epoch_changed", epoch: "E2", offset: 1, previous: { epoch: "E1", offset: 21 } }]);
  ws.text({ type: "message", topic: "h:a", offset: 2, data: "y" });
  assert.deepEqual(seen.message.slice(5).map((m) => m.offset), [2]);
  assert.equal(seen.gap.length, 0);
  rc.close();
}

// A failed recovery without a position (e.g. the home shard did not answer): reported,
// and tracking stops until a later subscribe gives a position again.
{
  const { rc, seen } = client();
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  const ws = latest();
  ws.open();
  rc.subscribe("h:u", { recover: { epoch: "E1", offset: 3 } });
  const s = ws.last("subscribe");
  assert.deepEqual(s.recover, { epoch: "E1", offset: 3 });
  ws.text(ack(s, { recovered: false, reason: "unavailable" }));
  assert.deepEqual(seen.recovery_failed, [{ topic: "h:u", reason: "unavailable", epoch: null, offset: null, previous: { epoch: "E1", offset: 3 } }]);
  ws.text({ type: "message", topic: "h:u", offset: 9, data: "z" });
  assert.deepEqual(seen.message.map((m) => m.offset), [9]);
  assert.equal(seen.gap.length, 0);
  assert.equal(rc.position("h:u"), null);
  rc.close();
}

// Envelope 2: the offset is in the binary frame (8 bytes, big-endian).
{
  const { rc, seen } = client({ envelope: 2 });
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  const ws = latest();
  ws.open();
  rc.subscribe("h:b");
  ws.text(ack(ws.last("subscribe"), { epoch: "E1", offset: 0x1ff }));
  ws.binary([3, ...Buffer.from("h:b"), 0, 0, 0, 0, 0, 0, 2, 0, 7]);
  assert.deepEqual([seen.message[0].offset, [...seen.message[0].data]], [0x200, [7]]);
  ws.binary([3, ...Buffer.from("h:b"), 0, 0, 0, 0]); // too short for its header: ignored
  assert.equal(seen.message.length, 1);
  rc.close();
}

// Tokens: auth first, subscribes after its ack; refresh_required → getToken → refresh;
// 4001 → a new token; 4002 → one more token, then (refused again) stop.
{
  const reasons = [];
  let n = 0;
  const { rc, seen } = client({ getToken: async ({ reason }) => { reasons.push(reason); return `t${++n}`; } });
  rc.subscribe("s");
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  let ws = latest();
  ws.open();
  assert.deepEqual(ws.sent.map((c) => c.type), ["auth"]);
  assert.equal(ws.sent[0].token, "t1");
  ws.text(ack(ws.sent[0]));
  assert.deepEqual(ws.sent.map((c) => c.type), ["auth", "subscribe"]);
  ws.text({ type: "refresh_required", in: 5 });
  await until(() => ws.last("refresh"), "a refresh");
  assert.equal(ws.last("refresh").token, "t2");
  ws.text(ack(ws.last("refresh")));

  ws.end(4001, "token expired");
  await until(() => latest() !== ws, "a reconnect after 4001");
  ws = latest();
  ws.open();
  assert.equal(ws.sent[0].token, "t3");
  ws.text(ack(ws.sent[0]));
  ws.end(4002, "bad token");
  await until(() => latest() !== ws, "a reconnect after 4002");
  ws = latest();
  ws.open();
  assert.equal(ws.sent[0].token, "t4");
  // Refused again, as an auth error this time: no more attempts.
  ws.text({ type: "error", id: ws.sent[0].id, code: "unauthorized", message: "no" });
  assert.equal(seen.stopped.length, 1);
  assert.deepEqual(reasons, ["connect", "refresh", "expired", "refused"]);
  const count = FakeSocket.all.length;
  await tick(60);
  assert.equal(FakeSocket.all.length, count, "no reconnect after giving up");
}

// 4004 (disconnected by the backend API): no reconnect. 1001: reconnect soon.
{
  const { seen } = client();
  await until(() => latest()?.onopen && latest().readyState === 0, "a socket");
  let ws = latest();
  ws.open();
  ws.end(1001, "server shutting down");
  assert.equal(seen.close[0].reconnect, true);
  assert.ok(seen.close[0].delay <= 5);
  await until(() => latest() !== ws, "a reconnect after 1001");
  ws = latest();
  ws.open();
  const count = FakeSocket.all.length;
  ws.end(4004, "disconnected");
  assert.equal(seen.stopped.length, 1);
  await tick(60);
  assert.equal(FakeSocket.all.length, count);
}

console.log("ringcast.js unit: ok");
