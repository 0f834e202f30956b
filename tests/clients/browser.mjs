// Headless Chromium (Debian `chromium`) driven by playwright-core: loads the demo page at
// GET /, subscribes to a topic through the page, checks that a message published with
// HTTP POST /publish/{topic} shows up in the page, sends one from the page (the ack, and a
// refused publish's error, are reported beside the button), and saves a screenshot.
//
// Usage: node browser.mjs HOST:PORT [SCREENSHOT.png]
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const base = process.argv[2];
const shot = process.argv[3] || "demo.png";
const TIMEOUT = 10000;
setTimeout(() => { console.error("browser: overall timeout"); process.exit(1); }, 60000).unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
  timeout: 30000,
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`http://${base}/`);
  await page.waitForSelector("#status.open");

  await page.fill("#topic", "browser");
  await page.click("#subscribe");
  await page.waitForSelector("#topics li:has-text('browser')");

  const r = await fetch(`http://${base}/publish/browser`, {
    method: "POST", body: "hello from curl-land", headers: { "content-type": "text/plain" },
    signal: AbortSignal.timeout(TIMEOUT),
  });
  assert.equal(r.status, 202);
  assert.equal((await r.json()).queued >= 0, true);
  await page.waitForSelector(".msg:has-text('hello from curl-land')");

  // A message sent from the page itself (echo: true) comes back on its subscription.
  await page.fill("#pubtopic", "browser");
  await page.fill("#message", "sent from the page");
  await page.click("#send");
  await page.waitForSelector(".msg:has-text('sent from the page')");
  await page.waitForSelector("#pubstatus.ok:has-text('ack')");
  // And how many it reached (GET /api/topics/browser: the page itself at least).
  await page.waitForSelector("#pubstatus.ok:has-text('subscriber')");
  // A refused publish is reported beside the button.
  await page.fill("#pubtopic", "nope:x");
  await page.click("#send");
  await page.waitForSelector("#pubstatus.err:has-text('bad_topic')");

  // A binary message shows as hex.
  await fetch(`http://${base}/publish/browser`, {
    method: "POST", body: new Uint8Array([0xca, 0xfe]),
    headers: { "content-type": "application/octet-stream" },
    signal: AbortSignal.timeout(TIMEOUT),
  });
  await page.waitForSelector(".msg:has-text('binary: ca fe')");

  await page.screenshot({ path: shot });
  assert.deepEqual(errors, []);
  console.log(`chromium ${browser.version()}: ok (screenshot: ${shot})`);
} finally {
  await browser.close();
}
