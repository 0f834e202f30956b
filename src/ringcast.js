/**
 * ringcast.js: the browser (and Node) client of ringcast's mux mode (`GET /ws`).
 *
 * One {@link Ringcast} object owns one WebSocket at a time and keeps what the application
 * asked for across connections: its topics, the last `(epoch, offset)` seen on each topic
 * with history, and its token. When the connection drops it reconnects (exponential backoff
 * with full jitter), presents a token first when `getToken` is given, and resubscribes every
 * topic with `recover` from where it stopped, so the application sees every offset once, in
 * order, or is told (`recovery_failed`, `gap`) that it did not. The protocol it speaks is
 * docs/protocol.md ("Mux mode", "History and recovery", "Access control").
 *
 * No dependencies, no build step: the server serves this file at `GET /ringcast.js`.
 * In Node (20 has no global WebSocket) pass the `ws` package's constructor as `WebSocket`.
 *
 * @example
 * import { Ringcast } from "/ringcast.js";
 * const rc = new Ringcast("/ws");
 * rc.subscribe("chat:room", { rewind: 10, onMessage: (data, m) => console.log(m.offset, data) });
 * rc.on("recovery_failed", ({ topic, reason }) => reload(topic, reason));
 * await rc.publish("chat:room", "hello");
 *
 * @module ringcast
 */

/** Close codes the server sends (docs/protocol.md, "Access control", "Graceful shutdown"). */
const GOING_AWAY = 1001;
const TOKEN_EXPIRED = 4001;
const TOKEN_INVALID = 4002;
const FORBIDDEN = 4003;
const DISCONNECTED = 4004;

const OPEN = 1; // WebSocket.OPEN, the same in browsers and `ws`

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** `CustomEvent` is global in browsers and Node 19+; the fallback keeps older hosts working. */
const DetailEvent = globalThis.CustomEvent ?? class extends Event {
  constructor(type, init) { super(type); this.detail = init?.detail; }
};

/** An error with the server's (or the client's) short `code`, e.g. `forbidden`, `closed`. */
export class RingcastError extends Error {
  /** @param {string} code @param {string} [message] */
  constructor(code, message) {
    super(message || code);
    this.name = "RingcastError";
    this.code = code;
  }
}

/**
 * @typedef {object} Options
 * @property {Function} [WebSocket] WebSocket constructor (default: the global one).
 * @property {(ctx: {reason: string}) => (string | Promise<string>)} [getToken] returns a
 *   connection token (JWT); `reason` is `connect`, `expired`, `refused` or `refresh`.
 * @property {1|2} [envelope] binary envelope version; 2 adds `?envelope=2` to the URL
 *   (default: 2 if the URL has it, else 1).
 * @property {number} [minDelay=250] first reconnect delay bound, ms.
 * @property {number} [maxDelay=10000] largest reconnect delay, ms.
 * @property {number} [drainDelay=1000] bound of the random delay after a close 1001 (server
 *   going away) or 4001 (token expired) of a connection that was up, ms.
 * @property {number} [connectTimeout=10000] an attempt not ready (open and authenticated)
 *   within this is abandoned, ms.
 * @property {number} [stableAfter=5000] a connection up this long resets the backoff, ms.
 * @property {boolean} [recoverGaps=true] on a `gap`, resubscribe with `recover` at once.
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {(data: string|Uint8Array, meta: {topic: string, offset?: number, binary: boolean}) => void} [onMessage]
 * @property {number} [rewind] on the first subscribe only: the last N publications first.
 * @property {{epoch: string, offset: number}} [recover] start from a position saved earlier
 *   (see {@link Ringcast#position}); not with `rewind`.
 */

/**
 * A mux-mode connection that reconnects and recovers. Events (each an `Event` whose
 * `detail` is described here; {@link Ringcast#on} passes the detail alone):
 * `open` `{}`; `close` `{code, reason, reconnect, delay}`; `message` `{topic, data, offset,
 * binary}`; `recovered` `{topic, epoch, from, to}`; `recovery_failed` `{topic, reason,
 * epoch, offset, previous}`; `gap` `{topic, epoch, expected, received, recovering}`;
 * `error` `{code, message, op, topic, id}`; `stopped` `{code, reason}` (no more reconnects).
 */
export class Ringcast extends EventTarget {
  /** @param {string} url `ws://host/ws` (or `/ws`, relative to the page) @param {Options} [options] */
  constructor(url, options = {}) {
    super();
    this.options = {
      minDelay: 250, maxDelay: 10000, drainDelay: 1000, connectTimeout: 10000,
      stableAfter: 5000, recoverGaps: true, ...options,
    };
    const u = new URL(url, globalThis.location?.href);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    if (options.envelope === 2) u.searchParams.set("envelope", "2");
    /** Binary envelope version the server will send: what the URL asks for. */
    this.envelope = u.searchParams.get("envelope") === "2" ? 2 : 1;
    this.url = u.href;
    this._WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WS !== "function") throw new TypeError("ringcast: no WebSocket constructor (pass options.WebSocket)");
    /** @type {Map<string, object>} topic → subscription state (see subscribe) */
    this._subs = new Map();
    /** @type {Map<number, object>} request id → what the reply settles */
    this._pending = new Map();
    this._nextId = 1;
    this._ws = null;
    this._ready = false; // open, and authenticated when there is a token
    this._stopped = false;
    this._attempt = 0; // consecutive attempts without a stable connection
    this._timer = null;
    this._token = null; // reused across reconnects until refused or expired
    this._tokenReason = "connect";
    this._refused = false; // the last token was refused (4002/4003): one more try, then stop
    setTimeout(() => this._connect(), 0); // after the caller added its listeners
  }

  /** Adds a listener that receives the event's detail; returns a function that removes it. */
  on(type, fn) {
    const listener = (e) => fn(e.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Whether commands can be sent now (open and authenticated). */
  get connected() { return this._ready; }

  /**
   * Subscribes (now, and again on every reconnect) until {@link Ringcast#unsubscribe}.
   * Resolves with the first `ack`; rejects with a {@link RingcastError} when refused.
   * @param {string} topic @param {SubscribeOptions} [opts] @returns {Promise<object>}
   */
  subscribe(topic, opts = {}) {
    if (this._stopped) return handled(Promise.reject(new RingcastError("stopped", "the client is stopped")));
    if (this._subs.has(topic)) return handled(Promise.reject(new RingcastError("already_subscribed", topic)));
    if (opts.rewind != null && opts.recover) return handled(Promise.reject(new RingcastError("bad_message", "rewind and recover together")));
    const sub = {
      topic, onMessage: opts.onMessage, rewind: opts.rewind,
      epoch: opts.recover?.epoch ?? null, // null: no history known for this topic
      offset: opts.recover ? opts.recover.offset : null, // last offset delivered in epoch
      replayTo: 0, // the ack's latest offset: what a recover or rewind replays up to
      acked: false, // the subscribe on the current connection has been answered
      everAcked: false, buffer: [],
    };
    const p = new Promise((resolve, reject) => { sub.resolve = resolve; sub.reject = reject; });
    this._subs.set(topic, sub);
    if (this._ready) this._sendSubscribe(sub);
    return handled(p);
  }

  /** Stops a subscription; resolves with the server's `ack` (or `null` when offline). */
  unsubscribe(topic) {
    const sub = this._subs.get(topic);
    if (!sub) return Promise.resolve(null);
    this._subs.delete(topic);
    if (!sub.everAcked) sub.reject(new RingcastError("unsubscribed", topic));
    if (!this._ready) return Promise.resolve(null);
    return this._call({ type: "unsubscribe", topic }, { kind: "unsubscribe", topic });
  }

  /**
   * Publishes `data`: a string, or any JSON value (an object or array reaches mux
   * subscribers as that value, anything else as its JSON text) (acknowledged: resolves with the
   * `ack`, rejects with the error), an `ArrayBuffer` or typed array as a binary envelope
   * (not acknowledged by the server: resolves once sent). Rejects when not connected.
   * @param {string} topic @param {*} data @param {{echo?: boolean}} [opts]
   */
  publish(topic, data, opts = {}) {
    if (!this._ready) return handled(Promise.reject(new RingcastError("not_connected", "not connected")));
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      const t = encoder.encode(topic);
      const payload = bytesOf(data);
      if (t.length < 1 || t.length > 255) return handled(Promise.reject(new RingcastError("bad_topic", topic)));
      const frame = new Uint8Array(1 + t.length + payload.length);
      frame[0] = t.length;
      frame.set(t, 1);
      frame.set(payload, 1 + t.length);
      this._ws.send(frame);
      return Promise.resolve(null);
    }
    const cmd = { type: "publish", topic, data };
    if (opts.echo) cmd.echo = true;
    return this._call(cmd, { kind: "publish", topic });
  }

  /** Whether `topic` is among this client's subscriptions (kept across reconnects). */
  isSubscribed(topic) {
    return this._subs.has(topic);
  }

  /** The last `(epoch, offset)` delivered on a topic with history, to save and pass as `recover`. */
  position(topic) {
    const sub = this._subs.get(topic);
    return sub && sub.epoch !== null ? { epoch: sub.epoch, offset: sub.offset } : null;
  }

  /** Closes for good: no reconnect. */
  close() {
    if (this._stopped) return;
    if (!this._ws) return this._stop(1000, "closed by the client");
    this._stopped = true;
    this._drop(this._ws, 1000, "closed by the client");
  }

  // --- connection -------------------------------------------------------------------

  async _connect() {
    this._timer = null;
    if (this._stopped || this._ws) return;
    if (this.options.getToken && this._token == null) {
      try {
        this._token = await this.options.getToken({ reason: this._tokenReason });
        this._tokenReason = "connect";
      } catch (e) {
        if (this._stopped) return;
        this._emit("error", { code: "token_error", message: String(e?.message ?? e) });
        if (this._refused) return this._stop("token_error", "getToken failed after a refused token");
        return this._schedule(this._backoff());
      }
      if (this._stopped || this._ws) return;
    }
    let ws;
    try {
      ws = new this._WS(this.url);
    } catch (e) {
      this._emit("error", { code: "connect_error", message: String(e?.message ?? e) });
      return this._schedule(this._backoff());
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onerror = () => {}; // a close event follows; `ws` (Node) throws on an unhandled error
    ws.onclose = (e) => this._onClose(ws, e.code, e.reason);
    ws.onmessage = (e) => { if (this._ws === ws) this._onData(e.data); };
    ws.onopen = () => {
      if (this._token == null) return this._onReady();
      // The token goes first: subscribes wait for its ack (docs/protocol.md, "Access control").
      this._request({ type: "auth", token: this._token }, { kind: "auth" });
    };
    this._connectTimer = setTimeout(() => {
      if (this._ws === ws && !this._ready) this._drop(ws, 1006, "connect timeout");
    }, this.options.connectTimeout);
  }

  _onReady() {
    clearTimeout(this._connectTimer);
    this._ready = true;
    this._refused = false;
    this._openedAt = Date.now();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    this._emit("open", {});
  }

  /** Ends `ws` now, without waiting for its close event (which may take long or never come). */
  _drop(ws, code, reason) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(1000); } catch { /* already closing */ }
    this._onClose(ws, code, reason);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    clearTimeout(this._connectTimer);
    const wasReady = this._ready;
    this._ws = null;
    this._ready = false;
    for (const p of this._pending.values()) p.reject?.(new RingcastError("closed", "connection closed before the reply"));
    this._pending.clear();
    for (const sub of this._subs.values()) { sub.acked = false; sub.buffer = []; }
    if (wasReady && Date.now() - this._openedAt >= this.options.stableAfter) this._attempt = 0;

    let delay = null; // null: stop
    let stop = null;
    if (this._stopped) {
      stop = "closed by the client";
    } else if (code === DISCONNECTED) {
      stop = "disconnected by the backend (4004)";
    } else if (code === TOKEN_INVALID || code === FORBIDDEN) {
      this._emit("error", { code: code === FORBIDDEN ? "forbidden" : "token_invalid", message: reason || `closed with ${code}` });
      if (!this.options.getToken || this._refused) stop = `token refused (${code})`;
      else { this._refused = true; this._token = null; this._tokenReason = "refused"; delay = this._backoff(); }
    } else if (code === TOKEN_EXPIRED) {
      this._token = null;
      this._tokenReason = "expired";
      delay = wasReady ? Math.random() * this.options.drainDelay : this._backoff();
    } else if (code === GOING_AWAY && wasReady) {
      delay = Math.random() * this.options.drainDelay; // a drain: every client leaves at once
    } else {
      delay = this._backoff();
    }
    this._emit("close", { code, reason: reason || "", reconnect: stop === null, delay });
    if (stop !== null) this._stop(code, stop);
    else this._schedule(delay);
  }

  _stop(code, reason) {
    this._stopped = true;
    clearTimeout(this._timer);
    for (const sub of this._subs.values()) if (!sub.everAcked) sub.reject(new RingcastError("stopped", reason));
    this._emit("stopped", { code, reason });
  }

  /** Full jitter: uniform in [0, min(maxDelay, minDelay * 2^attempt)]. */
  _backoff() {
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    return Math.random() * cap;
  }

  _schedule(delay) {
    if (!this._stopped) this._timer = setTimeout(() => this._connect(), delay);
  }

  // --- commands and replies ---------------------------------------------------------

  /** Sends a command with a fresh id; `entry` says what its reply settles. */
  _request(cmd, entry) {
    cmd.id = this._nextId++;
    this._pending.set(cmd.id, entry);
    this._ws.send(JSON.stringify(cmd));
  }

  /** A command whose reply settles the returned promise. */
  _call(cmd, entry) {
    return handled(new Promise((resolve, reject) => this._request(cmd, { ...entry, resolve, reject })));
  }

  _sendSubscribe(sub) {
    const cmd = { type: "subscribe", topic: sub.topic };
    if (sub.epoch !== null) cmd.recover = { epoch: sub.epoch, offset: sub.offset };
    else if (!sub.everAcked && sub.rewind != null) cmd.rewind = sub.rewind;
    sub.acked = false;
    sub.buffer = [];
    this._request(cmd, { kind: "subscribe", topic: sub.topic, sub });
  }

  _onData(data) {
    if (typeof data !== "string") return this._onBinary(bytesOf(data));
    let m;
    try { m = JSON.parse(data); } catch { return; }
    if (m === null || typeof m !== "object") return;
    if (m.type === "message") {
      const sub = this._subs.get(m.topic);
      if (sub) this._receive(sub, { data: m.data, offset: Number.isSafeInteger(m.offset) ? m.offset : undefined, binary: false });
    } else if (m.type === "refresh_required") {
      this._refresh();
    } else if (m.type === "ack" || m.type === "pong" || m.type === "error") {
      this._onReply(m);
    }
  }

  /** `[len][topic][payload]`, or with envelope 2 `[len][topic][offset: u64 BE][payload]`. */
  _onBinary(b) {
    const n = b[0];
    const head = 1 + n + (this.envelope === 2 ? 8 : 0);
    if (n === undefined || b.length < head) return;
    const sub = this._subs.get(decoder.decode(b.subarray(1, 1 + n)));
    if (!sub) return;
    let offset;
    if (this.envelope === 2) {
      const o = Number(new DataView(b.buffer, b.byteOffset + 1 + n, 8).getBigUint64(0));
      if (o > 0) offset = o; // 0: the topic has no history
    }
    this._receive(sub, { data: b.subarray(head), offset, binary: true });
  }

  _onReply(m) {
    const entry = this._pending.get(m.id);
    if (entry) this._pending.delete(m.id);
    if (m.type === "error") {
      if (entry?.kind === "auth") {
        // The token did not verify: handled like the close code the server would send.
        return this._drop(this._ws, m.code === "token_expired" ? TOKEN_EXPIRED : TOKEN_INVALID, m.message);
      }
      if (entry?.kind === "internal") return;
      this._emit("error", { code: m.code, message: m.message, op: entry?.kind, topic: entry?.topic, id: m.id });
      const err = new RingcastError(m.code, m.message);
      if (entry?.kind === "subscribe" && this._subs.get(entry.topic) === entry.sub) {
        this._subs.delete(entry.topic); // refused: retrying on every reconnect would not help
        entry.sub.reject(err);
      }
      entry?.reject?.(err);
      return;
    }
    if (!entry) return;
    if (entry.kind === "auth") this._onReady();
    else if (entry.kind === "subscribe") this._onSubscribed(entry.sub, m);
    else entry.resolve?.(m);
  }

  async _refresh() {
    const ws = this._ws;
    if (!this.options.getToken) return;
    let token;
    try {
      token = await this.options.getToken({ reason: "refresh" });
    } catch (e) {
      return this._emit("error", { code: "token_error", message: String(e?.message ?? e), op: "refresh" });
    }
    if (this._ws !== ws || !this._ready) return; // a new connection authenticates anew
    this._request({ type: "refresh", token }, { kind: "refresh", resolve: () => { this._token = token; } });
  }

  // --- subscriptions and offsets ----------------------------------------------------

  _onSubscribed(sub, ack) {
    if (this._subs.get(sub.topic) !== sub) return; // unsubscribed meanwhile
    const known = typeof ack.epoch === "string" && Number.isSafeInteger(ack.offset);
    if (ack.recovered === false) {
      // Whatever the reason (the server may add some), said out loud: never a silent gap.
      const previous = sub.epoch === null ? null : { epoch: sub.epoch, offset: sub.offset };
      this._emit("recovery_failed", {
        topic: sub.topic, reason: ack.reason, epoch: known ? ack.epoch : null, offset: known ? ack.offset : null, previous,
      });
    }
    if (!known) {
      sub.epoch = sub.offset = null; // no history (or no position given): nothing to track
    } else if (ack.recovered === true) {
      // The replay brings sub.offset + 1 ..= ack.offset, then live messages.
      this._emit("recovered", { topic: sub.topic, epoch: ack.epoch, from: sub.offset, to: ack.offset });
    } else {
      // Live from ack.offset + 1, after the `rewound` latest ones when rewinding.
      sub.offset = ack.offset - (Number.isSafeInteger(ack.rewound) ? ack.rewound : 0);
    }
    if (known) {
      sub.epoch = ack.epoch;
      sub.replayTo = ack.offset;
    }
    sub.acked = true;
    if (!sub.everAcked) { sub.everAcked = true; sub.resolve(ack); }
    const early = sub.buffer;
    sub.buffer = [];
    for (const msg of early) this._receive(sub, msg, true);
  }

  /**
   * Delivers `msg` if it is the next offset of its topic. `early`: it arrived before the
   * subscribe's ack (held until then), so it may be a leftover of the previous
   * subscription, covered by the replay the ack announced.
   */
  _receive(sub, msg, early = false) {
    if (!sub.acked) { sub.buffer.push(msg); return; }
    if (sub.offset !== null) {
      // Envelope 1 carries no offset in binary frames: in one order per topic, it is the next.
      const off = msg.offset ?? sub.offset + 1;
      if (off <= sub.offset) return; // already delivered: never twice
      if (off > sub.offset + 1) {
        if (early && off <= sub.replayTo) return; // the replay brings it, in order
        const recovering = this.options.recoverGaps;
        this._emit("gap", { topic: sub.topic, epoch: sub.epoch, expected: sub.offset + 1, received: off, recovering });
        if (recovering) return this._recoverGap(sub);
      }
      sub.offset = off;
      msg.offset = off;
    }
    const detail = { topic: sub.topic, data: msg.data, offset: msg.offset, binary: msg.binary };
    if (sub.onMessage) {
      try { sub.onMessage(msg.data, detail); } catch (e) { setTimeout(() => { throw e; }, 0); }
    }
    this._emit("message", detail);
  }

  /** Resubscribes with `recover` from the last offset delivered (unsubscribe first: the protocol wants it). */
  _recoverGap(sub) {
    this._request({ type: "unsubscribe", topic: sub.topic }, { kind: "internal" });
    this._sendSubscribe(sub);
  }

  _emit(type, detail) {
    this.dispatchEvent(new DetailEvent(type, { detail }));
  }
}

/** The bytes of an ArrayBuffer, a typed array or a Node Buffer, without copying. */
function bytesOf(data) {
  return ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
}

/** Marks a promise handled: an application that ignores it gets no unhandled rejection. */
function handled(p) {
  p.catch(() => {});
  return p;
}
