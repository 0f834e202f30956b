// ringcast.js in headless Chromium (Debian `chromium`, driven by playwright-core): a page
// loads the client from the server's own `GET /ringcast.js` (checked to be
// src/ringcast.js, byte for byte), subscribes to a topic with history with both binary
// envelope versions, and while Node publishes a steady stream over HTTP, a TCP proxy between
// the page and the server cuts every connection twice: the page must see every offset
// exactly once, in order, no gap. Then the server is restarted on the same port: the page
// must report `recovery_failed` with `epoch_changed` and go on live in the new epoch. The
// demo page (GET /), open meanwhile, shows the topic's epoch and offset, the notice of the
// failed recovery, and the new epoch's offsets.
//
// Usage: node browser_recovery.mjs PATH/TO/ringcast [SERVER ARGS...]
// RINGCAST_JS_FILE=src/ringcast.js serves that file at /ringcast.js, and src/demo.html at /,
// from the test instead (only for a server binary that does not embed them yet; says so in
// the output; Chromium then needs its local-network checks off, since a document the test
// fulfils has no address).
// 127.0.0.1 only; every wait is bounded.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import {
  HISTORY_TOML, assertStream, dir, publish, sleep, startProxy, startServer, stopServer, stream, waitFor,
} from "./harness.mjs";

const [bin, ...serverArgs] = process.argv.slice(2);
if (!bin) { console.error("usage: node browser_recovery.mjs PATH/TO/ringcast [SERVER ARGS...]"); process.exit(2); }
const injected = process.env.RINGCAST_JS_FILE;
const TIMEOUT = 10000;
setTimeout(() => { console.error("browser recovery: overall timeout"); process.exit(1); }, 100000).unref();

const config = join(dir, "h.toml");
writeFileSync(config, HISTORY_TOML);
const start = (port) => startServer(bin, port, [...serverArgs, "--config", config]);
let server = await start(0);
const port = server.port;
const proxy = await startProxy(() => port);
const N = 400;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         ...(injected ? ["--disable-features=LocalNetworkAccessChecks"] : [])],
  timeout: 30000,
});
try {
  const context = await browser.newContext();
  const errors = [];
  if (injected) {
    const body = readFileSync(injected);
    const demo = readFileSync(new URL("../../src/demo.html", import.meta.url));
    await context.route("**/ringcast.js", (route) => route.fulfill({ body, contentType: "text/javascript" }));
    await context.route(/\/$/, (route) => route.fulfill({ body: demo, contentType: "text/html" }));
  } else {
    const r = await fetch(`http://127.0.0.1:${port}/ringcast.js`, { signal: AbortSignal.timeout(TIMEOUT) });
    assert.equal(r.status, 200, "GET /ringcast.js");
    assert.match(r.headers.get("content-type") ?? "", /javascript/);
    const served = await r.text();
    const source = readFileSync(new URL("../../src/ringcast.js", import.meta.url), "utf8");
    assert.ok(served === source, "GET /ringcast.js serves src/ringcast.js");
  }
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on("pageerror", (e) => errors.push(String(e)));
  // The page's origin is the proxy: the module and the WebSockets both go through it.
  assert.equal((await page.goto(`http://127.0.0.1:${proxy.port}/health`)).status(), 200);

  const acks = await page.evaluate(async () => {
    const { Ringcast } = await import("/ringcast.js");
    window.clients = {};
    const make = async (name, envelope) => {
      const rc = new Ringcast("/ws", { envelope, minDelay: 25, maxDelay: 200, drainDelay: 100 });
      const ev = { open: 0, close: [], messages: [], recovered: 0, replayed: 0, recovery_failed: [], gap: [] };
      rc.on("open", () => { ev.open++; });
      rc.on("close", (d) => ev.close.push(d.code));
      rc.on("recovered", (d) => { ev.recovered++; ev.replayed += d.to - d.from; });
      rc.on("recovery_failed", (d) => ev.recovery_failed.push(d));
      rc.on("gap", (d) => ev.gap.push(d));
      window.clients[name] = { rc, ev };
      return rc.subscribe("h:b", {
        onMessage: (data, m) => ev.messages.push({
          offset: m.offset, binary: m.binary, text: typeof data === "string" ? data : new TextDecoder().decode(data),
        }),
      });
    };
    return Promise.all([make("v1", 1), make("v2", 2)]);
  });
  assert.match(acks[0].epoch, /^[0-9A-Za-z]{8}$/);
  const epoch = acks[0].epoch;
  const base = acks[0].offset;
  const state = (name) => page.evaluate((n) => window.clients[n].ev, name);

  const cutsBefore = proxy.cuts;
  await stream(port, "h:b", N, [130, 270], () => proxy.cut(50));
  assert.equal(proxy.cuts - cutsBefore, 2);
  for (const name of ["v1", "v2"]) {
    await waitFor(async () => (await state(name)).messages.length >= N, 15000, `${name}: all ${N} messages`);
  }
  await sleep(300); // a duplicate would arrive now
  for (const name of ["v1", "v2"]) {
    const ev = await state(name);
    assertStream(`chromium ${name}`, ev.messages, N, base);
    assert.deepEqual(ev.gap, [], `${name}: no gap`);
    assert.deepEqual(ev.recovery_failed, [], `${name}: no failed recovery`);
    assert.ok(ev.close.length >= 2 && ev.open >= 3, `${name}: the cuts did disconnect it`);
    assert.equal(ev.recovered, ev.open - 1, `${name}: every reconnect recovered`);
    assert.ok(ev.replayed > 0, `${name}: the recoveries replayed what the cuts lost`);
  }

  // The demo page on the same topic: its position label.
  const demo = await context.newPage();
  demo.setDefaultTimeout(TIMEOUT);
  demo.on("pageerror", (e) => errors.push(String(e)));
  await demo.goto(`http://127.0.0.1:${proxy.port}/`);
  await demo.waitForSelector("#status.open");
  await demo.fill("#topic", "h:b");
  await demo.click("#subscribe");
  await demo.waitForSelector("#topics li[data-topic='h:b']");
  assert.equal(await demo.textContent("#topics li[data-topic='h:b'] .pos"), `${epoch} · #${base + N}`);

  // Restart on the same port: a new epoch; recovery fails loudly, then live again.
  assert.equal(await stopServer(server.proc), 0, "the drain exits 0");
  server = await start(port);
  for (const name of ["v1", "v2"]) {
    await waitFor(async () => (await state(name)).recovery_failed.length === 1, 10000, `${name}: recovery_failed`);
    const ev = await state(name);
    const f = ev.recovery_failed[0];
    assert.equal(f.reason, "epoch_changed");
    assert.notEqual(f.epoch, epoch);
    assert.deepEqual(f.previous, { epoch, offset: base + N });
    assert.ok(ev.close.includes(1001), `${name}: the drain's 1001`);
  }
  // The demo (default, slower reconnect delays) must have resubscribed first, or it would
  // rightly not get the message.
  await demo.waitForSelector("#notice.show:has-text('epoch_changed')", { timeout: 15000 });
  await publish(port, "h:b", "new epoch");
  for (const name of ["v1", "v2"]) {
    await waitFor(async () => (await state(name)).messages.length === N + 1, 5000, `${name}: a message in the new epoch`);
    const ev = await state(name);
    assert.deepEqual(ev.messages.at(-1), { offset: ev.recovery_failed[0].offset + 1, binary: false, text: "new epoch" });
    assert.deepEqual(ev.gap, []);
  }
  const newOffset = (await state("v1")).recovery_failed[0].offset + 1;
  await demo.waitForSelector(".msg:has-text('new epoch')");
  assert.equal(await demo.textContent(".msg:has-text('new epoch') .off"), `#${newOffset}`);
  await page.evaluate(() => { for (const c of Object.values(window.clients)) c.rc.close(); });
  assert.deepEqual(errors, []);
  console.log(`chromium ${browser.version()}: ringcast.js recovery ok (${N} through 2 cuts, restart → epoch_changed)` +
    (injected ? `; /ringcast.js INJECTED from ${injected}, not served by the server` : ""));
} finally {
  await browser.close();
  proxy.close();
  await stopServer(server.proc);
}
