// ringcast against the Node `ws` library (npm), which the project did not write.
//
// Usage: node node_client.mjs HOST:PORT
//
// Simple mode and mux mode, text and binary, and HTTP publish. Every wait is bounded;
// exits non-zero on the first mismatch.
import assert from "node:assert/strict";
import WebSocket from "ws";

const base = process.argv[2];
const TIMEOUT = 5000;
setTimeout(() => { console.error("node client: overall timeout"); process.exit(1); }, 30000).unref();

function open(path) {
  const ws = new WebSocket(`ws://${base}${path}`);
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    const m = isBinary ? Buffer.from(data) : data.toString("utf8");
    const w = waiters.shift();
    if (w) w(m); else queue.push(m);
  });
  ws.next = () => new Promise((resolve, reject) => {
    if (queue.length) return resolve(queue.shift());
    const t = setTimeout(() => reject(new Error(`no message on ${path} within ${TIMEOUT} ms`)), TIMEOUT);
    waiters.push((m) => { clearTimeout(t); resolve(m); });
  });
  ws.nextJson = async () => JSON.parse(await ws.next());
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

async function httpPublish(topic, body, type) {
  const r = await fetch(`http://${base}/publish/${topic}`, {
    method: "POST", body, headers: { "content-type": type },
    signal: AbortSignal.timeout(TIMEOUT),
  });
  assert.equal(r.status, 202);
  return r.json();
}

const a = await open("/ws/node");
const b = await open("/ws/node");
const c = await open("/ws?subscribe=node");
await new Promise((r) => setTimeout(r, 100));

a.send("hello from node");
assert.equal(await b.next(), "hello from node");
assert.deepEqual(await c.nextJson(), { type: "message", topic: "node", data: "hello from node" });
a.send(Buffer.from([0, 1, 254]));
assert.deepEqual(await b.next(), Buffer.from([0, 1, 254]));
assert.deepEqual(await c.next(), Buffer.from([4, ...Buffer.from("node"), 0, 1, 254]));

c.send(JSON.stringify({ type: "subscribe", topic: "node2", id: "s1" }));
assert.deepEqual(await c.nextJson(), { type: "ack", id: "s1", op: "subscribe", topic: "node2" });
c.send(JSON.stringify({ type: "publish", topic: "node", data: "from mux", id: 2 }));
assert.equal((await c.nextJson()).type, "ack");
assert.equal(await a.next(), "from mux");
assert.equal(await b.next(), "from mux");
// Binary publish in the envelope.
c.send(Buffer.from([4, ...Buffer.from("node"), 9, 9]));
assert.deepEqual(await a.next(), Buffer.from([9, 9]));
c.send(JSON.stringify({ type: "unsubscribe", topic: "nope", id: 3 }));
const err = await c.nextJson();
assert.equal(err.code, "not_subscribed");

const reply = await httpPublish("node2", "via http", "text/plain");
assert.ok("queued" in reply);
assert.deepEqual(await c.nextJson(), { type: "message", topic: "node2", data: "via http" });
await httpPublish("node", new Uint8Array([1, 2, 3]), "application/octet-stream");
assert.deepEqual(await a.next(), Buffer.from([1, 2, 3]));

for (const ws of [a, b, c]) ws.close(1000);
console.log("node ws: ok");
