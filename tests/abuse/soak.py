#!/usr/bin/env python3
"""Abuse soak: one ringcast process under every hostile-client behaviour at once, while a
normal client must stay well served. Bounded in time; talks to 127.0.0.0/8 only.

    tests/abuse/soak.py BINARY --io uring|epoll [--seconds N]

Attackers come from their own loopback addresses (127.0.0.2 and up), the normal client from
127.0.0.1, so per-address limits are exercised as they would be on the internet:

- ping flood and pong flood: control frames as fast as the socket takes them, never reading;
- non-reading subscribers of a busy topic (a firehose publisher feeds it);
- slow dribblers: a request head one byte at a time (slowloris);
- huge `?subscribe=` heads;
- protocol garbage (unmasked frames);
- many connections from one address (past `--max-connections-per-ip`);
- a descriptor flood from many addresses against a server started with a low `ulimit -n`
  (its own phase near the end, so that the normal client's new connections in the main
  phase are not refused by a limit that is shared by design).

The normal client keeps one subscriber and one publisher open for the whole run and checks
that every message arrives, in order, with bounded latency; it also opens a new connection
for `/health` every 250 ms in the main phase.

At the end: the server's peak RSS and its CPU time in the idle-holders phase are within the
bounds stated below, its log stayed small, every counter accounts for what the attackers saw
refused, and a new client is served at once after the attack. Exit status 0 when every check
holds; the last line reads "N passed, N failed".
"""

import argparse
import asyncio
import multiprocessing
import base64
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time

# --- bounds the soak asserts (see docs/protocol.md, "Against a hostile client") ---------
PEAK_RSS_LIMIT = 160 * 1024 * 1024  # whole process, every attack at once
HOLDERS_CPU_LIMIT = 0.25  # CPU seconds per second while descriptors are exhausted
NORMAL_P99_LIMIT = 0.5  # seconds, normal subscriber's delivery latency
HEALTH_MAX_LIMIT = 2.0  # seconds, one /health round trip on a new connection
LOG_LIMIT = 256 * 1024  # bytes of server log for the whole run
NOFILE = 256  # the server's open-file limit in this soak
PER_IP = 32


def mask_frame(opcode, payload, fin=True):
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    key = os.urandom(4)
    head += key
    body = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if payload else b""
    return bytes(head) + body


def upgrade_request(path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Ws:
    """A minimal client: enough framing for the soak, nothing more."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, port, path, src="127.0.0.1", timeout=5.0):
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout
        )
        w.write(upgrade_request(path))
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            w.close()
            raise ConnectionRefusedError(f"status {status}")
        return cls(r, w)

    async def recv(self):
        """(opcode, payload) of the next frame (server frames are unmasked)."""
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                at = 2
                if n == 126:
                    if len(self.buf) < 4:
                        n = None
                    else:
                        n = struct.unpack("!H", self.buf[2:4])[0]
                        at = 4
                elif n == 127:
                    if len(self.buf) < 10:
                        n = None
                    else:
                        n = struct.unpack("!Q", self.buf[2:10])[0]
                        at = 10
                if n is not None and len(self.buf) >= at + n:
                    op = self.buf[0] & 0x0F
                    payload = self.buf[at : at + n]
                    self.buf = self.buf[at + n :]
                    return op, payload
            data = await self.r.read(65536)
            if not data:
                raise ConnectionResetError("closed")
            self.buf += data

    def send(self, opcode, payload):
        self.w.write(mask_frame(opcode, payload))

    def close(self):
        try:
            self.w.close()
        except Exception:
            pass


class NormalClient:
    """The well-behaved client, in a process of its own so that the attackers' event loop
    cannot delay what it measures. `stop` ends the main phase, `end` the whole attack
    (multiprocessing events, polled); the checks go back to the soak through `results`."""

    def __init__(self, port, stop, end):
        self.port, self.stop, self.end = port, stop, end
        self.results = []

    def check(self, ok, what):
        self.results.append((bool(ok), what))

    async def run(self):
        await asyncio.gather(self.normal(), self.health_prober())

    async def normal(self):
        sub = await Ws.open(self.port, "/ws/news")
        pub = await Ws.open(self.port, "/ws/news")
        await asyncio.sleep(0.2)
        sent = 0
        latencies = []
        order_ok = True

        async def receive():
            nonlocal order_ok
            want = 0
            while want < sent or not self.end.is_set():
                try:
                    op, payload = await asyncio.wait_for(sub.recv(), 5)
                except asyncio.TimeoutError:
                    if self.end.is_set():
                        break
                    continue
                if op not in (1, 2):
                    continue
                seq, ts = payload.decode().split(" ")
                if int(seq) != want:
                    order_ok = False
                want = int(seq) + 1
                latencies.append(time.monotonic() - float(ts))
            return want

        rx = asyncio.ensure_future(receive())
        while not self.end.is_set():
            pub.send(1, f"{sent} {time.monotonic():.6f}".encode())
            sent += 1
            await pub.w.drain()
            await asyncio.sleep(0.02)
        got = await asyncio.wait_for(rx, 15)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("inf")
        self.check(got == sent and order_ok, f"normal subscriber: {got}/{sent} messages, in order: {order_ok}")
        self.check(p99 <= NORMAL_P99_LIMIT, f"normal subscriber p99 latency {p99 * 1000:.1f} ms <= {NORMAL_P99_LIMIT * 1000:.0f} ms")
        sub.close()
        pub.close()

    async def health_prober(self):
        worst, n, failed = 0.0, 0, 0
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), HEALTH_MAX_LIMIT)
                w.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = await asyncio.wait_for(r.read(), HEALTH_MAX_LIMIT)
                w.close()
                if not data.startswith(b"HTTP/1.1 200"):
                    failed += 1
            except (OSError, asyncio.TimeoutError):
                failed += 1
            worst = max(worst, time.monotonic() - t)
            n += 1
            await asyncio.sleep(0.25)
        self.check(failed == 0 and worst <= HEALTH_MAX_LIMIT, f"/health on new connections: {n} probes, {failed} failed, worst {worst * 1000:.0f} ms")



def run_normal(port, stop, end, results):
    client = NormalClient(port, stop, end)
    try:
        asyncio.run(client.run())
    except Exception as e:  # reported as a failed check, not lost
        client.check(False, f"normal client crashed: {e!r}")
    results.put(client.results)


class Soak:
    def __init__(self, args):
        self.args = args
        self.stop = asyncio.Event()  # main phase over
        self.end = asyncio.Event()  # whole attack over
        self.seen = {}  # what attackers observed, by name
        self.failures = []
        self.passes = 0

    def count(self, key, n=1):
        self.seen[key] = self.seen.get(key, 0) + n

    def check(self, ok, what):
        if ok:
            self.passes += 1
            print(f"  ok   {what}")
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")

    # --- the server -------------------------------------------------------------------
    def start_server(self):
        self.logdir = tempfile.mkdtemp(prefix="ringcast-soak-")
        self.log_path = os.path.join(self.logdir, "stderr.log")
        out_path = os.path.join(self.logdir, "stdout.log")

        def limits():
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        cmd = [
            self.args.binary, "--listen", "127.0.0.1:0", "--io", self.args.io,
            "--shards", "2", "--max-connections", "1000",
            "--max-connections-per-ip", str(PER_IP),
            "--handshake-timeout", "2s", "--send-queue-limit", "256KiB",
            "--max-header-bytes", "256KiB", "--max-message-size", "64KiB",
            "--max-frame-size", "64KiB", "--log-level", "info",
            "--drain-grace", "0s",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=open(out_path, "w"), stderr=open(self.log_path, "w"),
            preexec_fn=limits,
        )
        for _ in range(100):
            time.sleep(0.1)
            text = open(out_path).read()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return
        self.proc.kill()
        raise SystemExit("ringcast did not start:\n" + open(self.log_path).read())

    def proc_status(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")

    async def metrics(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        totals = {}
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            labels = name[len(base):]
            labels = re.sub(r'(,?)(shard|io)="[^"]*"', "", labels).replace("{,", "{")
            key = base + (labels if labels not in ("{}", "") else "")
            try:
                totals[key] = totals.get(key, 0) + float(value)
            except ValueError:
                pass
        return totals

    # --- the attackers -------------------------------------------------------------------
    async def flood(self, src, opcode, read):
        """Control frames as fast as the socket takes them; `read` False never reads."""
        try:
            ws = await Ws.open(self.port, "/ws/flood", src)
        except (OSError, asyncio.TimeoutError):
            self.count("flood_refused")
            return
        chunk = b"".join(mask_frame(opcode, b"0123456789abcdef") for _ in range(4096))
        drain_reader = None
        if read:
            async def sink():
                while True:
                    if not await ws.r.read(65536):
                        return
            drain_reader = asyncio.ensure_future(sink())
        while not self.stop.is_set():
            ws.w.write(chunk)
            try:
                await asyncio.wait_for(ws.w.drain(), 0.5)
                self.count(f"flood_{opcode}_bytes", len(chunk))
            except asyncio.TimeoutError:
                self.count("flood_backpressured")  # the server stopped reading: expected
                # Stop buffering on our side too: only what the kernel took counts.
                while not self.stop.is_set():
                    try:
                        await asyncio.wait_for(ws.w.drain(), 0.5)
                        break
                    except asyncio.TimeoutError:
                        pass
            except (ConnectionError, OSError):
                break
        if drain_reader:
            drain_reader.cancel()
        ws.close()

    async def firehose(self):
        ws = await Ws.open(self.port, "/ws/firehose", "127.0.0.3")
        payload = b"x" * 16000
        while not self.stop.is_set():
            for _ in range(16):
                ws.send(2, payload)
            try:
                await asyncio.wait_for(ws.w.drain(), 1)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.005)
        ws.close()

    async def non_reader(self):
        try:
            ws = await Ws.open(self.port, "/ws/firehose", "127.0.0.3")
        except (OSError, asyncio.TimeoutError):
            self.count("non_reader_refused")
            return
        await self.stop.wait()
        ws.close()

    async def dribbler(self, src):
        while not self.stop.is_set():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            req = upgrade_request("/ws/slow")
            closed = False
            for b in req:
                if self.stop.is_set():
                    break
                try:
                    w.write(bytes([b]))
                    await w.drain()
                except (ConnectionError, OSError):
                    closed = True
                    break
                try:
                    data = await asyncio.wait_for(r.read(1), 0.2)
                    if not data:
                        closed = True
                        break
                except asyncio.TimeoutError:
                    pass
            if closed:
                self.count("dribbler_closed")
            w.close()

    async def huge_subscribe(self):
        topics = ",".join(f"t{i}" for i in range(30000))  # ~190 KiB
        while not self.stop.is_set():
            try:
                r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=("127.0.0.5", 0))
                w.write(upgrade_request(f"/ws?subscribe={topics}"))
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
                self.count(f"huge_subscribe_{int(head.split(b' ', 2)[1])}")
                w.close()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.count("huge_subscribe_error")
            await asyncio.sleep(0.05)

    async def garbage(self):
        while not self.stop.is_set():
            try:
                ws = await Ws.open(self.port, "/ws/garbage", "127.0.0.8")
                ws.w.write(b"\x81\x05hello")  # unmasked client frame: 1002
                op, payload = await asyncio.wait_for(ws.recv(), 5)
                if op == 8 and len(payload) >= 2:
                    self.count(f"garbage_close_{struct.unpack('!H', payload[:2])[0]}")
                ws.close()
            except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                self.count("garbage_error")
            await asyncio.sleep(0.02)

    async def per_ip(self):
        held = []
        refused = 0
        for _ in range(PER_IP * 3):
            if self.stop.is_set():
                break
            try:
                ws = await Ws.open(self.port, "/ws/hold", "127.0.0.6")
                held.append(ws)
            except ConnectionRefusedError as e:
                if "429" in str(e):
                    refused += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                self.count("per_ip_error")
        self.seen["per_ip_held"] = len(held)
        self.seen["per_ip_429"] = refused
        await self.stop.wait()
        for ws in held:
            ws.close()

    async def holder(self, src, n):
        """Opens `n` connections that never send a request; reopens them as they time out."""
        conns = []
        while not self.end.is_set():
            conns = [c for c in conns if not c[0].at_eof()]
            while len(conns) < n and not self.end.is_set():
                try:
                    conns.append(await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0)), 1))
                    self.count("holder_opened")
                except (OSError, asyncio.TimeoutError):
                    self.count("holder_connect_failed")
                    break
            await asyncio.sleep(0.1)
        for _, w in conns:
            w.close()

    # --- the run -------------------------------------------------------------------------
    async def run(self):
        self.start_server()
        seconds = self.args.seconds
        main_phase = seconds * 0.7
        print(f"== abuse soak on {self.args.io}: {seconds:.0f} s, server pid {self.proc.pid}, port {self.port}")
        ctx = multiprocessing.get_context("fork")
        stop_evt, end_evt, results = ctx.Event(), ctx.Event(), ctx.Queue()
        normal = ctx.Process(target=run_normal, args=(self.port, stop_evt, end_evt, results))
        normal.start()
        await asyncio.sleep(0.5)
        attacks = [asyncio.ensure_future(c) for c in (
            self.flood("127.0.0.2", 0x9, read=False),
            self.flood("127.0.0.2", 0x9, read=False),
            self.flood("127.0.0.2", 0xA, read=True),
            self.firehose(),
            *[self.non_reader() for _ in range(8)],
            *[self.dribbler("127.0.0.4") for _ in range(8)],
            self.huge_subscribe(),
            self.garbage(),
            self.per_ip(),
        )]
        await asyncio.sleep(main_phase)
        self.stop.set()
        stop_evt.set()
        await asyncio.gather(*attacks, return_exceptions=True)
        # Descriptor flood from many addresses: more holders than the server has files.
        cpu0, t0 = self.cpu_seconds(), time.monotonic()
        holders = [asyncio.ensure_future(self.holder(f"127.0.1.{i}", PER_IP - 2)) for i in range(1, 11)]
        await asyncio.sleep(seconds - main_phase)
        holders_cpu = (self.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        self.end.set()
        end_evt.set()
        await asyncio.gather(*holders, return_exceptions=True)
        try:
            for ok, what in await asyncio.get_running_loop().run_in_executor(None, results.get, True, 30):
                self.check(ok, what)
        except Exception as e:
            self.check(False, f"normal client reported nothing: {e!r}")
        normal.join(5)
        # Recovery: a new client is served at once.
        t = time.monotonic()
        ok = False
        for _ in range(30):
            try:
                ws = await Ws.open(self.port, "/ws/after", timeout=2)
                ws.close()
                ok = True
                break
            except (OSError, asyncio.TimeoutError, ConnectionRefusedError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)
        self.check(ok, f"a new client is served after the attack ({(time.monotonic() - t) * 1000:.0f} ms)")
        await asyncio.sleep(0.5)
        m = await self.metrics()
        peak = self.proc_status("VmHWM")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        log_size = os.path.getsize(self.log_path)

        s = self.seen
        print(f"  attackers saw: {dict(sorted(s.items()))}")
        self.check(peak <= PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.1f} MiB <= {PEAK_RSS_LIMIT / 2**20:.0f} MiB")
        self.check(holders_cpu <= HOLDERS_CPU_LIMIT, f"CPU while descriptors were exhausted {holders_cpu:.3f} s/s <= {HOLDERS_CPU_LIMIT}")
        self.check(log_size <= LOG_LIMIT, f"server log {log_size} B <= {LOG_LIMIT} B")
        pings = s.get("flood_9_bytes", 0)
        self.check(pings > 0, f"ping flood pushed {pings / 2**20:.1f} MiB (backpressured {s.get('flood_backpressured', 0)} times)")
        accept_errors = m.get("ringcast_accept_errors_total", 0)
        self.check(s.get("holder_opened", 0) > NOFILE and accept_errors > 0,
                   f"descriptor flood: {s.get('holder_opened', 0)} opened, accept errors counted {accept_errors:.0f}")
        refused_ip = m.get('ringcast_refused_total{reason="ip_connections"}', 0)
        self.check(s.get("per_ip_held", 0) <= PER_IP and s.get("per_ip_429", 0) > 0 and refused_ip >= s.get("per_ip_429", 0),
                   f"per-IP: held {s.get('per_ip_held', 0)} <= {PER_IP}, 429 seen {s.get('per_ip_429', 0)}, counted {refused_ip:.0f}")
        timeouts = m.get("ringcast_handshake_timeouts_total", 0)
        self.check(s.get("dribbler_closed", 0) > 0 and timeouts >= s.get("dribbler_closed", 0),
                   f"dribblers: {s.get('dribbler_closed', 0)} closed, handshake timeouts counted {timeouts:.0f}")
        slow = m.get("ringcast_slow_consumer_disconnects_total", 0)
        self.check(slow >= 1, f"non-reading subscribers disconnected as slow: {slow:.0f}")
        huge_ok = sum(v for k, v in s.items() if k.startswith("huge_subscribe_") and k[-3:].isdigit())
        self.check(huge_ok > 0, f"huge ?subscribe= heads answered: {huge_ok}")
        g = s.get("garbage_close_1002", 0)
        counted = m.get('ringcast_protocol_errors_total{code="1002"}', 0)
        self.check(g > 0 and counted >= g, f"protocol garbage: {g} closed with 1002, counted {counted:.0f}")
        print(f"{self.passes} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--io", default="uring", choices=["uring", "epoll"])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    random.seed()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soak = Soak(args)
    try:
        code = asyncio.run(soak.run())
    finally:
        if getattr(soak, "proc", None) and soak.proc.poll() is None:
            soak.proc.kill()
    sys.exit(code)


if __name__ == "__main__":
    main()
