'use strict';
// Smoke test for a broadcast peer (or any server with the same contract):
// three clients connect to ws://127.0.0.1:$PORT/$PATH; client 0 sends a text
// and a binary message; clients 1 and 2 must receive both, in order, with the
// same type and bytes, and client 0 must receive neither. A ping must be
// answered and the close handshake must complete. Exit 0 on success, 1 with a
// message otherwise; everything ends within 5 seconds.
//
// Usage: PORT=9001 node loadtest/peers/smoke.js [path]   (uses node-ws's `ws` as the client)

const { WebSocket } = require('./node-ws/node_modules/ws');

const port = process.env.PORT || '9001';
const path = process.argv[2] || '/smoke';
const url = `ws://127.0.0.1:${port}${path}`;

const timer = setTimeout(() => fail('timed out after 5 s'), 5000);
function fail(msg) {
  console.error(`smoke ${url}: FAIL: ${msg}`);
  process.exit(1);
}

const open = (i) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.received = [];
    ws.on('message', (data, isBinary) => ws.received.push({ text: !isBinary, data: Buffer.from(data) }));
    ws.on('open', () => resolve(ws));
    ws.on('error', (e) => reject(new Error(`client ${i}: ${e.message}`)));
  });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const clients = [await open(0), await open(1), await open(2)];
  await sleep(100); // let the server register the last subscriber
  const text = 'hello {"p":0,"seq":1} ünïcödé';
  const bin = Buffer.from([0, 1, 2, 254, 255]);
  clients[0].send(text);
  clients[0].send(bin, { binary: true });

  const pong = new Promise((resolve) => clients[1].once('pong', resolve));
  clients[1].ping(Buffer.from('are you there'));
  const noPong = setTimeout(() => fail('no pong to a ping within 2 s'), 2000);
  await pong;
  clearTimeout(noPong);

  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && (clients[1].received.length < 2 || clients[2].received.length < 2)) {
    await sleep(20);
  }
  await sleep(100); // would catch an echo to the sender or a duplicate
  for (const i of [1, 2]) {
    const got = clients[i].received;
    if (got.length !== 2) fail(`client ${i} received ${got.length} messages, expected 2`);
    if (!got[0].text || got[0].data.toString('utf8') !== text) fail(`client ${i}: first message is not the text sent`);
    if (got[1].text || !got[1].data.equals(bin)) fail(`client ${i}: second message is not the binary sent`);
  }
  if (clients[0].received.length !== 0) fail(`the sender received ${clients[0].received.length} of its own messages`);

  await Promise.all(
    clients.map(
      (ws, i) =>
        new Promise((resolve) => {
          ws.on('close', (code) => (code === 1000 ? resolve() : fail(`client ${i}: close code ${code}, expected 1000`)));
          ws.close(1000, 'done');
        }),
    ),
  );
  clearTimeout(timer);
  console.log(`smoke ${url}: ok (text + binary fan-out to 2 others, no echo, ping/pong, close 1000)`);
})().catch((e) => fail(e.message));
