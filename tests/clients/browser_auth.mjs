// ringcast's access control in headless Chromium (Debian `chromium`) driven by
// playwright-core: the page's own WebSocket presents the token the only way a browser can,
// as the `ringcast.token.<jwt>` subprotocol beside `ringcast.v1`, in mux mode and simple
// mode; messages are published from Node with HTTP POST and the API key. Checks the
// subprotocol answered (`ringcast.v1`, never the token), the acks and messages, and that a
// token for another user, an expired token and no token are refused as documented (mux:
// `forbidden`; at the upgrade: 401/403, which a browser sees as a failed connection, 1006).
//
// Usage: node browser_auth.mjs HOST:PORT SECRET_FILE API_KEY_FILE
// The server runs with --jwt-hmac-secret-file SECRET_FILE and --api-key (API_KEY_FILE's
// contents). Tokens are minted here with node:crypto (HS256); each is appended to
// tokens-browser.txt beside SECRET_FILE so that the caller can check the server never
// logged one.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { appendFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const [base, secretFile, keyFile] = process.argv.slice(2);
const secret = readFileSync(secretFile, "utf8").replace(/[\r\n]+$/, "");
const apiKey = readFileSync(keyFile, "utf8").trim();
const record = join(dirname(secretFile), "tokens-browser.txt");
const TIMEOUT = 5000;
setTimeout(() => { console.error("browser auth: overall timeout"); process.exit(1); }, 90000).unref();

const b64url = (s) => Buffer.from(s).toString("base64url");
function mint(sub, expIn = 600) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = b64url(JSON.stringify({
    sub, exp: Math.floor(Date.now() / 1000) + expIn,
    topics: { sub: ["user.{sub}"], pub: ["user.{sub}"] },
  }));
  const sig = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  const jwt = `${header}.${claims}.${sig}`;
  appendFileSync(record, jwt + "\n");
  return jwt;
}

async function publish(topic, body, headers) {
  const r = await fetch(`http://${base}/publish/${topic}`, {
    method: "POST", body, headers: { "content-type": "text/plain", ...headers },
    signal: AbortSignal.timeout(TIMEOUT),
  });
  await r.text();
  return r.status;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
  timeout: 30000,
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  const consoleLines = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => consoleLines.push(m.text()));
  // Any page of the server gives the origin; /health runs no script of its own.
  const health = await page.goto(`http://${base}/health`);
  assert.equal(health.status(), 200);

  // In the page: named sockets, their messages, and a bounded wait for the next one.
  await page.evaluate((timeout) => {
    window.sockets = {};
    window.openSocket = (name, url, protocols) => new Promise((resolve) => {
      const ws = new WebSocket(url, protocols);
      const s = { ws, queue: [], waiters: [], errored: false };
      window.sockets[name] = s;
      ws.onmessage = (e) => {
        const m = typeof e.data === "string" ? e.data : "(binary)";
        const w = s.waiters.shift();
        if (w) w(m); else s.queue.push(m);
      };
      ws.onerror = () => { s.errored = true; };
      ws.onopen = () => resolve({ open: true, protocol: ws.protocol });
      ws.onclose = (e) => resolve({ open: false, errored: s.errored, code: e.code });
    });
    window.next = (name) => new Promise((resolve, reject) => {
      const s = window.sockets[name];
      if (s.queue.length) return resolve(s.queue.shift());
      const t = setTimeout(() => reject(new Error(`no message on ${name} within ${timeout} ms`)), timeout);
      s.waiters.push((m) => { clearTimeout(t); resolve(m); });
    });
    window.send = (name, obj) => window.sockets[name].ws.send(JSON.stringify(obj));
  }, TIMEOUT);
  const open = (name, path, token) => page.evaluate(
    ({ name, url, protocols }) => window.openSocket(name, url, protocols),
    { name, url: `ws://${base}${path}`, protocols: token ? ["ringcast.v1", `ringcast.token.${token}`] : ["ringcast.v1"] });
  const next = (name) => page.evaluate((name) => window.next(name), name);
  const nextJson = async (name) => JSON.parse(await next(name));
  const send = (name, obj) => page.evaluate(({ name, obj }) => window.send(name, obj), { name, obj });
  const opened = { open: true, protocol: "ringcast.v1" };
  const failed = { open: false, errored: true, code: 1006 };
  const alice = mint("alice");
  const bob = mint("bob");

  // Mux mode with alice's token in the subprotocol.
  assert.deepEqual(await open("mux", "/ws", alice), opened);
  await send("mux", { type: "subscribe", topic: "user.alice", id: 1 });
  assert.deepEqual(await nextJson("mux"), { type: "ack", id: 1, op: "subscribe", topic: "user.alice" });
  await send("mux", { type: "subscribe", topic: "user.bob", id: 2 });
  const err = await nextJson("mux");
  assert.equal(err.type, "error"); assert.equal(err.code, "forbidden"); assert.equal(err.id, 2);
  assert.equal(await publish("user.alice", "from node", { "X-Api-Key": apiKey }), 202);
  assert.deepEqual(await nextJson("mux"), { type: "message", topic: "user.alice", data: "from node" });

  // Simple mode with the same token.
  assert.deepEqual(await open("simple", "/ws/user.alice", alice), opened);
  assert.equal(await publish("user.alice", "to both", { "X-Api-Key": apiKey }), 202);
  assert.equal(await next("simple"), "to both");
  assert.deepEqual(await nextJson("mux"), { type: "message", topic: "user.alice", data: "to both" });

  // Bob's token: admitted in mux mode, but alice's topic is forbidden; refused (403) at a
  // simple-mode upgrade to it.
  assert.deepEqual(await open("bob", "/ws", bob), opened);
  await send("bob", { type: "subscribe", topic: "user.alice", id: 7 });
  const bobErr = await nextJson("bob");
  assert.equal(bobErr.type, "error"); assert.equal(bobErr.code, "forbidden"); assert.equal(bobErr.id, 7);
  let before = consoleLines.length;
  assert.deepEqual(await open("bob-simple", "/ws/user.alice", bob), failed);
  await page.waitForTimeout(100); // console lines may arrive just after the close event
  assert.ok(consoleLines.slice(before).some((l) => l.includes("403")), consoleLines.slice(before).join("\n"));

  // An expired token fails the connection in both modes (401); so does none for a topic that
  // needs one.
  const expired = mint("alice", -10);
  before = consoleLines.length;
  assert.deepEqual(await open("expired-simple", "/ws/user.alice", expired), failed);
  assert.deepEqual(await open("expired-mux", "/ws", expired), failed);
  assert.deepEqual(await open("none", "/ws/user.alice", null), failed);
  await page.waitForTimeout(100);
  // Chromium reports a 401 answer to an upgrade this way (not with the status number).
  const authFailed = (l) => l.includes("HTTP Authentication failed");
  assert.equal(consoleLines.slice(before).filter(authFailed).length, 3,
    consoleLines.slice(before).join("\n"));

  // The open sockets got nothing they should not have; the API key is required.
  assert.equal(await publish("user.alice", "no key", {}), 401);
  assert.equal(await publish("user.alice", "bad key", { "X-Api-Key": apiKey.slice(0, -1) }), 401);
  assert.equal(await publish("user.bob", "for bob", { "X-Api-Key": apiKey }), 202);
  assert.equal(await publish("user.alice", "last", { "X-Api-Key": apiKey }), 202);
  assert.deepEqual(await nextJson("mux"), { type: "message", topic: "user.alice", data: "last" });
  assert.equal(await next("simple"), "last");

  for (const t of [alice, bob, expired]) {
    assert.ok(!consoleLines.some((l) => l.includes(t)), "a token showed up in the console");
  }
  assert.deepEqual(errors, []);
  console.log(`chromium ${browser.version()} with access control: ok`);
} finally {
  await browser.close();
}
