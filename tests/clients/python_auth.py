#!/usr/bin/env python3
"""ringcast's access control against the Python `websockets` library (PyPI, sync client).

Usage: python_auth.py HOST:PORT SECRET_FILE API_KEY_FILE

The server must run with `--jwt-hmac-secret-file SECRET_FILE`, `--api-key KEY` (the
contents of API_KEY_FILE), `--jwt-leeway 0s` and a `[namespaces.public]` with
`anonymous = "subscribe"`. Tokens are minted here (HS256 with the standard library only),
presented as `Authorization: Bearer` at the upgrade or as the mux `auth` message; messages
are published with HTTP POST and the API key. Checks that the right tokens get messages,
that missing, forged, foreign and expired tokens are refused with the documented status or
close code, and that the API key is required exactly. Every wait is bounded; exits non-zero
on the first mismatch. Every token minted is appended to tokens-python.txt beside
SECRET_FILE, so that the caller can check the server never logged one.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

TIMEOUT = 5


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Minter:
    """HS256 tokens in the shape of docs/auth.md, each recorded for the log check."""

    def __init__(self, secret, record):
        self.secret = secret
        self.record = record

    def token(self, sub, exp_in=600, secret=None):
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {
            "sub": sub,
            "exp": int(time.time()) + exp_in,
            "topics": {"sub": ["user.{sub}"], "pub": ["user.{sub}"]},
        }
        body = b64url(json.dumps(claims).encode())
        signing_input = f"{header}.{body}".encode()
        sig = hmac.new(secret or self.secret, signing_input, hashlib.sha256).digest()
        jwt = f"{header}.{body}.{b64url(sig)}"
        with open(self.record, "a") as f:
            f.write(jwt + "\n")
        return jwt


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def ws_connect(uri, headers=None):
    return connect(uri, additional_headers=headers, open_timeout=TIMEOUT, close_timeout=TIMEOUT)


def refused_status(uri, headers=None):
    """The HTTP status with which the server refuses the upgrade (fails if it accepts)."""
    try:
        with ws_connect(uri, headers):
            pass
    except InvalidStatus as e:
        return e.response.status_code
    raise AssertionError(f"{uri}: upgrade accepted, expected a refusal")


def publish(base, topic, body, headers):
    """POST /publish/{topic}: the HTTP status."""
    req = urllib.request.Request(
        f"http://{base}/publish/{topic}",
        data=body,
        headers={"Content-Type": "text/plain", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            json.loads(r.read())
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def recv_json(ws):
    msg = ws.recv(timeout=TIMEOUT)
    assert isinstance(msg, str), f"expected text, got {msg!r}"
    return json.loads(msg)


def main(base, secret_file, key_file):
    with open(secret_file, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    with open(key_file) as f:
        key = f.read().strip()
    mint = Minter(secret, os.path.join(os.path.dirname(secret_file), "tokens-python.txt"))
    url = f"ws://{base}"
    api = {"X-Api-Key": key}

    # Simple mode with the Authorization header: the user's own topic, published over HTTP
    # with the API key (as X-Api-Key, then as a bearer credential).
    with ws_connect(f"{url}/ws/user.alice", bearer(mint.token("alice"))) as ws:
        assert publish(base, "user.alice", b"for alice", api) == 202
        assert ws.recv(timeout=TIMEOUT) == "for alice"
        assert publish(base, "user.alice", b"again", bearer(key)) == 202
        assert ws.recv(timeout=TIMEOUT) == "again"

    # Refusals at the upgrade: no token, a forged signature, an expired token (401); a valid
    # token for another user (403).
    alice = f"{url}/ws/user.alice"
    assert refused_status(alice) == 401
    forged = mint.token("alice", secret=secret + b"x")
    assert refused_status(alice, bearer(forged)) == 401
    assert refused_status(alice, bearer(mint.token("alice", exp_in=-10))) == 401
    assert refused_status(alice, bearer(mint.token("bob"))) == 403
    assert refused_status(alice, {"Authorization": "Basic YWxpY2U6YWxpY2U="}) == 401

    # Mux mode: the token as the first message, then subscribe; another user's topic is
    # forbidden, and before `auth` the user's topic is unauthorized.
    with ws_connect(f"{url}/ws") as ws:
        ws.send(json.dumps({"type": "subscribe", "topic": "user.alice", "id": 0}))
        err = recv_json(ws)
        assert err["type"] == "error" and err["code"] == "unauthorized" and err["id"] == 0, err
        ws.send(json.dumps({"type": "auth", "token": mint.token("alice"), "id": 1}))
        assert recv_json(ws) == {"type": "ack", "id": 1, "op": "auth"}
        ws.send(json.dumps({"type": "subscribe", "topic": "user.alice", "id": 2}))
        assert recv_json(ws) == {"type": "ack", "id": 2, "op": "subscribe", "topic": "user.alice"}
        ws.send(json.dumps({"type": "subscribe", "topic": "user.bob", "id": 3}))
        err = recv_json(ws)
        assert err["type"] == "error" and err["code"] == "forbidden" and err["id"] == 3, err
        assert publish(base, "user.alice", b"via mux", api) == 202
        assert recv_json(ws) == {"type": "message", "topic": "user.alice", "data": "via mux"}
        ws.send(json.dumps({"type": "auth", "token": forged, "id": 4}))
        err = recv_json(ws)
        assert err["type"] == "error" and err["code"] == "unauthorized" and err["id"] == 4, err
        assert forged not in json.dumps(err), "the token came back in a reply"

    # The namespace with anonymous = "subscribe": no token needed to listen, none to publish.
    with ws_connect(f"{url}/ws/public:news") as listener, ws_connect(f"{url}/ws") as anon:
        anon.send(json.dumps({"type": "publish", "topic": "public:news", "data": "x", "id": 1}))
        err = recv_json(anon)
        assert err["type"] == "error" and err["code"] == "unauthorized", err
        assert publish(base, "public:news", b"news for all", api) == 202
        assert listener.recv(timeout=TIMEOUT) == "news for all"

    # Expiry: with --jwt-leeway 0s, a token valid for 2 s closes its connection with 4001.
    start = time.monotonic()
    with ws_connect(alice, bearer(mint.token("alice", exp_in=2))) as ws:
        try:
            ws.recv(timeout=6)
            raise AssertionError("a message arrived instead of the expiry close")
        except ConnectionClosed as e:
            elapsed = time.monotonic() - start
            assert e.rcvd is not None and e.rcvd.code == 4001, e
            # exp is a whole second 1 to 2 s away: neither at once nor late.
            assert 0.5 < elapsed < 4.0, f"closed {elapsed:.1f} s after connecting"

    # The backend API: no key, a key wrong by one byte (first, last), a token as the key.
    assert publish(base, "user.alice", b"x", {}) == 401
    flip = {"0": "1"}
    wrong_last = key[:-1] + flip.get(key[-1], "0")
    wrong_first = flip.get(key[0], "0") + key[1:]
    assert publish(base, "user.alice", b"x", {"X-Api-Key": wrong_last}) == 401
    assert publish(base, "user.alice", b"x", {"X-Api-Key": wrong_first}) == 401
    assert publish(base, "user.alice", b"x", {"X-Api-Key": key + "0"}) == 401
    assert publish(base, "user.alice", b"x", bearer(wrong_last)) == 401
    print(
        f"python websockets {websockets.__version__} with access control: ok"
        f" (expired token closed with 4001 after {elapsed:.1f} s)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
