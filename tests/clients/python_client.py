#!/usr/bin/env python3
"""ringcast against the Python `websockets` library (PyPI), which the project did not write.

Usage: python_client.py HOST:PORT

Simple mode (/ws/{topic}) and mux mode (/ws, JSON commands, topic envelopes), text and
binary, plus a message published with HTTP POST /publish/{topic}. Every wait is bounded;
exits non-zero on the first mismatch.
"""

import asyncio
import json
import sys
import urllib.request

import websockets

TIMEOUT = 5


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def recv_json(ws):
    msg = await recv(ws)
    assert isinstance(msg, str), f"expected text, got {msg!r}"
    return json.loads(msg)


def http_publish(base, topic, body, content_type):
    req = urllib.request.Request(
        f"http://{base}/publish/{topic}",
        data=body,
        headers={"Content-Type": content_type},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        assert r.status == 202, r.status
        return json.loads(r.read())


async def main(base):
    url = f"ws://{base}"
    async with websockets.connect(f"{url}/ws/py") as a, websockets.connect(
        f"{url}/ws/py"
    ) as b, websockets.connect(f"{url}/ws?subscribe=py") as c:
        await asyncio.sleep(0.1)
        # Simple mode: text stays text, binary stays binary; no echo to the sender.
        await a.send("hello from python")
        assert await recv(b) == "hello from python"
        assert await recv_json(c) == {"type": "message", "topic": "py", "data": "hello from python"}
        await a.send(b"\x00\x01\xfe")
        assert await recv(b) == b"\x00\x01\xfe"
        assert await recv(c) == b"\x02py\x00\x01\xfe", "binary envelope"

        # Mux mode: subscribe with an id, publish, acks.
        await c.send(json.dumps({"type": "subscribe", "topic": "py2", "id": 1}))
        assert await recv_json(c) == {"type": "ack", "id": 1, "op": "subscribe", "topic": "py2"}
        await c.send(json.dumps({"type": "publish", "topic": "py", "data": "from mux", "id": 2}))
        assert (await recv_json(c))["type"] == "ack"
        assert await recv(a) == "from mux"
        assert await recv(b) == "from mux"
        await c.send("not json")
        err = await recv_json(c)
        assert err["type"] == "error" and err["code"] == "bad_json", err

        # HTTP publish reaches both modes.
        reply = await asyncio.to_thread(http_publish, base, "py2", b"via http", "text/plain")
        assert "queued" in reply, reply
        assert await recv_json(c) == {"type": "message", "topic": "py2", "data": "via http"}
        await asyncio.to_thread(http_publish, base, "py", "für alle".encode(), "text/plain; charset=utf-8")
        assert await recv(a) == "für alle"
        assert await recv(b) == "für alle"
    print("python websockets", websockets.__version__, ": ok")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 30))
