'use strict';
// Broadcast peer on Node's `ws` 8.x: the library's own "broadcast to every
// other client" example (README, "Server broadcast"), listening on
// 127.0.0.1:$PORT (default 9001) and upgrading any path.
//
// Node runs JavaScript on one thread, which matches the benchmark pinning each
// server to one core. Deliberately no tuning beyond the example, except:
// - perMessageDeflate stays off (the ws default for servers), as for every peer;
// - maxPayload is left at its 100 MiB default: the suite sends at most 16 KiB.
// `ws` has no bounded send queue: a subscriber that stops reading makes
// `bufferedAmount` grow without limit, which the slow-consumer scenario shows
// in the server's RSS. The largest buffered amount seen is printed on exit.

const { WebSocketServer, WebSocket } = require('ws');

const port = Number.parseInt(process.env.PORT || '9001', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`peer-node-ws: PORT=${JSON.stringify(process.env.PORT)}: expected a port number`);
  process.exit(1);
}

const stats = { connections: 0, closed: 0, received: 0, delivered: 0, errors: 0, maxBuffered: 0 };

// backlog: the same listen backlog as ringcast and the Rust peers (4096, clamped
// by net.core.somaxconn) instead of Node's 511, so that a connect storm compares
// the servers rather than their defaults.
const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 4096, clientTracking: true });

wss.on('connection', (ws) => {
  stats.connections++;
  ws.on('error', () => { stats.errors++; });
  ws.on('close', () => { stats.closed++; });
  ws.on('message', (data, isBinary) => {
    stats.received++;
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
        stats.delivered++;
      }
    }
  });
});

wss.on('listening', () => {
  console.log(`peer-node-ws listening on 127.0.0.1:${port} (ws ${require('ws/package.json').version})`);
});
wss.on('error', (e) => {
  console.error(`peer-node-ws: ${e.message}`);
  process.exit(1);
});

// How far behind the worst subscriber got (bytes queued in user space), sampled
// once a second so that it costs nothing on the message path.
setInterval(() => {
  for (const client of wss.clients) {
    if (client.bufferedAmount > stats.maxBuffered) stats.maxBuffered = client.bufferedAmount;
  }
}, 1000).unref();

function shutdown() {
  console.log(
    `peer-node-ws stats: connections=${stats.connections} closed=${stats.closed} ` +
      `received=${stats.received} delivered=${stats.delivered} errors=${stats.errors} ` +
      `max_buffered_bytes=${stats.maxBuffered}`,
  );
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
