// What the ringcast.js tests (ringcast_node.mjs, browser_recovery.mjs) share: ringcast
// servers they start and stop themselves (a restart must reuse the port), a TCP proxy that
// cuts connections the way a lost network does, HTTP publish, bounded waits. 127.0.0.1
// only. Every server started is killed when the process exits, and the temporary
// directory removed.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A history namespace `h` (topics `h:...`): what the recovery tests subscribe to. */
export const HISTORY_TOML = '[namespaces.h]\nhistory_size = 100\nhistory_ttl = "5m"\n';

const servers = new Set();
/** A temporary directory for configs and secrets, removed at exit. */
export const dir = mkdtempSync(join(tmpdir(), "ringcast-js-"));
process.on("exit", () => {
  for (const s of servers) s.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 10 ms; throws naming `what` after `ms`. */
export async function waitFor(cond, ms, what) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * Starts `bin` on 127.0.0.1:PORT (0: any) with `args`; resolves with {proc, port} once it
 * listens. On a fixed port a start refused as "already in use" is retried for up to 5 s, and
 * said so on stderr: right after a server exits, the io_uring backend can still hold its
 * listener for a moment (seen on the history-capable server of 2026-12-03; a restart
 * supervisor would retry the same way). The test is about the client, not that.
 */
export async function startServer(bin, port, args) {
  const end = Date.now() + 5000;
  for (let tries = 1; ; tries++) {
    try {
      const s = await startOnce(bin, port, args);
      if (tries > 1) console.error(`  note: 127.0.0.1:${port} was still in use after the previous server exited; started on try ${tries}`);
      return s;
    } catch (e) {
      if (port === 0 || !/already in use/.test(e.message) || Date.now() > end) throw e;
      await sleep(100);
    }
  }
}

function startOnce(bin, port, args) {
  const proc = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--drain-grace", "200ms", ...args],
    { stdio: ["ignore", "pipe", "pipe"] });
  servers.add(proc);
  let err = "";
  proc.stderr.on("data", (d) => { err = (err + d).slice(-4000); });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`ringcast did not start: ${err}`)), 10000);
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) { clearTimeout(t); resolve({ proc, port: Number(m[1]) }); }
    });
    proc.on("exit", (code) => {
      servers.delete(proc);
      clearTimeout(t);
      reject(new Error(`ringcast exited (${code}): ${err}`)); // ignored once resolved
    });
  });
}

/** SIGTERM, a graceful drain (1001 to every client); resolves with the exit code. */
export function stopServer(proc) {
  if (proc.exitCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => {
    const t = setTimeout(() => proc.kill("SIGKILL"), 10000);
    proc.once("exit", (code) => { clearTimeout(t); resolve(code); });
    proc.kill("SIGTERM");
  });
}

/**
 * A TCP proxy on 127.0.0.1 to `target()` (a port, asked at each connection). `cut(ms)`
 * ends every connection through it at once (no close frame: what a lost network looks
 * like) and refuses new ones for `ms`.
 */
export function startProxy(target) {
  const conns = new Set();
  let refusing = false;
  let cuts = 0;
  const server = net.createServer((c) => {
    if (refusing) return c.destroy();
    const u = net.connect(target(), "127.0.0.1");
    const end = () => { c.destroy(); u.destroy(); conns.delete(c); conns.delete(u); };
    for (const s of [c, u]) { conns.add(s); s.on("error", end); s.on("close", end); }
    c.pipe(u);
    u.pipe(c);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({
    port: server.address().port,
    get cuts() { return cuts; },
    cut(ms) {
      refusing = true;
      if (conns.size) cuts++;
      for (const s of conns) s.destroy();
      setTimeout(() => { refusing = false; }, ms);
    },
    close() { for (const s of conns) s.destroy(); server.close(); },
  })));
}

/** POST /publish/{topic}: a string as text/plain, bytes as binary; asserts the 202. */
export async function publish(port, topic, body, headers = {}) {
  const type = typeof body === "string" ? "text/plain" : "application/octet-stream";
  const r = await fetch(`http://127.0.0.1:${port}/publish/${topic}`, {
    method: "POST", body, headers: { "content-type": type, ...headers }, signal: AbortSignal.timeout(5000),
  });
  assert.equal(r.status, 202, await r.text());
}

/**
 * Publishes `n` messages `m1`..`mn` to `topic` one after another, every 5th one binary,
 * calling `cut()` after the publications named in `cutAfter`. A steady stream of a few
 * hundred per second, not one burst: a client away for a cut plus its reconnect delays
 * (a few hundred ms) misses fewer than the 100 publications HISTORY_TOML keeps, so its
 * recovery must succeed.
 */
export async function stream(port, topic, n, cutAfter, cut) {
  for (let i = 1; i <= n; i++) {
    const body = `m${i}`;
    await publish(port, topic, i % 5 === 0 ? new TextEncoder().encode(body) : body);
    if (cutAfter.includes(i)) cut();
    await sleep(4);
  }
}

/**
 * Asserts that `messages` ({offset, text, binary}) are exactly the stream `m1`..`mn`, each
 * once, in order, at offsets base + 1 ..= base + n.
 */
export function assertStream(name, messages, n, base) {
  assert.equal(messages.length, n, `${name}: each message once`);
  messages.forEach((m, k) => {
    assert.equal(m.offset, base + k + 1, `${name}: offsets dense and in order (at ${k})`);
    assert.equal(m.text, `m${k + 1}`, `${name}: publication order (at ${k})`);
    assert.equal(m.binary, (k + 1) % 5 === 0, `${name}: binary every 5th (at ${k})`);
  });
}
