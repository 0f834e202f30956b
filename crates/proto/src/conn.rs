//! One WebSocket connection after the handshake, in the server or the client role: frame
//! sequencing, message assembly with interleaved control frames, UTF-8 validation of text,
//! size limits, ping/pong, and the close handshake in both directions.
//!
//! # Call order
//! The caller owns the socket and the buffers:
//! 1. After the handshake, [`Connection::new`] (server role) or [`Connection::with_role`]
//!    with [`Role::Client`] and the [`MaskSource`] that supplies every masking key.
//! 2. For every received buffer, call [`Connection::feed`] until it has consumed the whole
//!    buffer, handling at most one [`Event`] per call. Then flush `out` (pongs, close replies).
//! 3. To send, [`Connection::send`] / [`Connection::close`] append frames to `out`.
//!    (The server engine frames broadcast messages itself with
//!    [`super::frame::encode_frame`] and only checks [`Connection::state`].)
//! 4. When the transport reports end of stream, [`Connection::eof`].
//! 5. On [`State::CloseReceived`] or [`State::Closed`], flush `out` and close the transport
//!    (a client waits for the server to close it first). On `Err` from `feed`, the close frame is
//!    already in `out`: flush it and close.
//!
//! # Memory
//! A whole unfragmented frame inside the input is delivered borrowing the input (unmasked in
//! place): no copy and no allocation. Bytes of an incomplete header (≤ 14), an incomplete
//! control frame (≤ 125) and an incomplete or fragmented message (≤ `max_message_size`) are
//! kept internally, so the caller never has to keep input around. The message buffer is reused
//! from message to message.

use bytes::BytesMut;

use super::close::{self, close_code};
use super::error::ProtocolError;
use super::frame::{self, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode};
use super::mask;
use super::utf8::{self, Utf8Validator};

/// Which end of the connection this is. Decides the masking rules (RFC 6455 §5.1), and for
/// a client, where its masking keys come from.
///
/// `Role` without a parameter is `Role<NoMasks>`, whose `Client` variant cannot be built:
/// [`Connection::new`] makes servers only, and a client cannot exist without a key source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<M = NoMasks> {
    /// Accepts connections: receives masked frames, sends unmasked ones.
    Server,
    /// Opens connections: receives unmasked frames, masks every frame it sends with a key
    /// drawn from `M`, one call per frame.
    Client(M),
}

/// Where a client-role connection gets its masking keys: [`MaskSource::next_key`] is called
/// once for every frame the client writes (data, ping, the automatic pong, close).
///
/// RFC 6455 §5.3 asks for keys that the application choosing the payload cannot predict,
/// "derived from a strong source of entropy". The protocol core reads no clock and owns no
/// random generator, so the caller supplies them: the OS generator (`getrandom`), drawn in
/// batches so that a key costs a copy, is the usual choice. A closure `FnMut() -> [u8; 4]`
/// is a `MaskSource`, which suits tests that want known keys.
pub trait MaskSource {
    /// The masking key for the next frame.
    fn next_key(&mut self) -> [u8; 4];
}

impl<F: FnMut() -> [u8; 4]> MaskSource for F {
    fn next_key(&mut self) -> [u8; 4] {
        self()
    }
}

/// The key source of a server: there is none. This type has no values, so a
/// `Connection<NoMasks>` (the default, `Connection`) is a server by construction and costs no
/// byte for a source it never uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoMasks {}

impl MaskSource for NoMasks {
    fn next_key(&mut self) -> [u8; 4] {
        match *self {}
    }
}

/// Size limits on what the peer may send. A frame or message of exactly the limit is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload accepted (announced length); larger → 1009.
    pub max_frame_size: u64,
    /// Largest message (sum of its fragments) accepted; larger → 1009.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 64 * 1024,
            max_message_size: 64 * 1024,
        }
    }
}

/// What one [`Connection::feed`] call produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole message; `opcode` is Text or Binary; text is valid UTF-8.
    Message {
        /// Text or Binary.
        opcode: OpCode,
        /// The unmasked payload (borrowing the input or the assembly buffer).
        payload: &'a [u8],
    },
    /// A ping; the pong is already written to `out` (unless this endpoint sent a close).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame. When the peer started the close, the reply is already in `out`.
    Close {
        /// The status code, `None` for an empty close frame (1005 to applications).
        code: Option<u16>,
        /// The reason, valid UTF-8.
        reason: &'a str,
    },
}

/// The result of one [`Connection::feed`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// Input bytes consumed (taken into internal buffers or delivered); call again with the rest.
    pub consumed: usize,
    /// At most one event.
    pub event: Option<Event<'a>>,
}

/// Where the connection is in its close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// This endpoint sent a close frame and waits for the peer's; nothing more may be sent.
    /// Received data is still delivered.
    CloseSent,
    /// The peer sent a close frame first and the reply is written to `out`: the handshake is
    /// complete; flush `out` and end the transport. Further input is ignored.
    CloseReceived,
    /// Both close frames were exchanged (this endpoint first), or the connection failed (a
    /// violation: the close frame is in `out`), or the transport ended. Input is ignored.
    Closed,
}

/// A frame whose header was parsed and whose payload is still arriving.
#[derive(Clone, Copy, Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Payload bytes already received.
    done: u64,
}

/// Where a pending event's payload lives; resolved to a borrow at the end of `feed`.
#[derive(Clone, Debug)]
enum Src {
    Input(std::ops::Range<usize>),
    Msg,
    Ctrl,
}

#[derive(Clone, Debug)]
enum Pending {
    Message(OpCode, Src),
    Ping(Src),
    Pong(Src),
    Close(Option<u16>, Src),
}

/// A sans-I/O WebSocket connection. See the module docs for the call order.
///
/// `M` is the client's masking key source; the server role, `Connection` (= `Connection<NoMasks>`),
/// has none.
#[derive(Debug)]
pub struct Connection<M = NoMasks> {
    /// Server, or client with its key source.
    role: Role<M>,
    limits: Limits,
    state: State,
    /// RSV bits the negotiated extensions allow (none until permessage-deflate exists).
    allowed_rsv: u8,
    /// An incomplete frame header carried between reads.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// The frame whose payload is being received, if any.
    frame: Option<InFrame>,
    /// Opcode of the message being assembled (Text/Binary), `None` between messages.
    msg_opcode: Option<OpCode>,
    /// The assembly buffer of a fragmented or split message. Reused.
    msg: Vec<u8>,
    /// `msg` was handed out in the last event: clear it on the next call.
    delivered: bool,
    /// A control frame payload split across reads (rare: allocated only then, freed by
    /// `release_memory`; an inline 125-byte array here cost every idle connection).
    ctrl: Vec<u8>,
    /// Streaming validation of the text message being assembled.
    utf8: Utf8Validator,
}

impl Connection {
    /// A server-role connection, open, after a successful handshake. (`role` can only be
    /// [`Role::Server`]: a client needs a key source, see [`Connection::with_role`].)
    pub fn new(role: Role, limits: Limits) -> Self {
        Connection::with_role(role, limits)
    }
}

impl<M: MaskSource> Connection<M> {
    /// A connection in the given role, open, after a successful handshake. A client,
    /// `Role::Client(masks)`, takes every masking key from `masks`.
    pub fn with_role(role: Role<M>, limits: Limits) -> Self {
        Connection {
            role,
            limits,
            state: State::Open,
            allowed_rsv: 0,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            msg_opcode: None,
            msg: Vec::new(),
            delivered: false,
            ctrl: Vec::new(),
            utf8: Utf8Validator::new(),
        }
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// This is the client end (it masks what it sends).
    pub fn is_client(&self) -> bool {
        matches!(self.role, Role::Client(_))
    }

    /// Bytes held by the message assembly buffer (its capacity).
    pub fn buffered_capacity(&self) -> usize {
        self.msg.capacity()
    }

    /// Free the message assembly buffer if no message is in progress (for idle connections: the
    /// buffer otherwise keeps the capacity of the largest fragmented message seen). Cheap; the
    /// next fragmented message allocates again.
    pub fn release_memory(&mut self) {
        if self.msg_opcode.is_none() && self.frame.is_none() {
            self.msg = Vec::new();
            self.ctrl = Vec::new();
            self.delivered = false;
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Feed received bytes. `input` is `&mut` so payloads are unmasked in place. Returns after
    /// at most ONE event; call again with `&mut input[consumed..]` until all is consumed. Bytes
    /// of an incomplete frame are taken (buffered internally, bounded), so the caller never
    /// keeps input. A whole unfragmented frame inside `input` is delivered borrowing `input`.
    ///
    /// On a violation: the close frame with the mapped code is written to `out`, the state
    /// becomes [`State::Closed`], and `Err` is returned; later input is ignored (consumed, no
    /// event). Never panics, whatever the input.
    pub fn feed<'a>(
        &'a mut self,
        input: &'a mut [u8],
        out: &mut BytesMut,
    ) -> Result<Progress<'a>, ProtocolError> {
        match self.feed_inner(input, out) {
            Ok((consumed, None)) => Ok(Progress {
                consumed,
                event: None,
            }),
            Ok((consumed, Some(p))) => {
                let input: &'a [u8] = input;
                Ok(Progress {
                    consumed,
                    event: Some(self.resolve(p, input)),
                })
            }
            Err(e) => {
                self.fail(e, out);
                Err(e)
            }
        }
    }

    /// The transport ended. `Err(AbnormalClosure)` unless the close handshake finished (also
    /// when the stream ended mid-frame: the partial message is dropped, never delivered).
    /// After a violation `feed` already reported, returns `Ok`.
    pub fn eof(&mut self) -> Result<(), ProtocolError> {
        let prev = self.state;
        self.state = State::Closed;
        self.reset_receive();
        match prev {
            State::Open | State::CloseSent => Err(ProtocolError::AbnormalClosure),
            State::CloseReceived | State::Closed => Ok(()),
        }
    }

    /// Send one whole (FIN) Text, Binary, Ping or Pong frame. The client role masks with the
    /// next key of its [`MaskSource`], one per frame. `Err(SendAfterClose)` once a close frame was sent or
    /// received; `Err(InvalidSend)` for Close/Continuation (use [`Connection::close`] /
    /// [`Connection::send_frame`]) or a control payload over 125 bytes.
    pub fn send(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        if opcode == OpCode::Continuation {
            return Err(ProtocolError::InvalidSend);
        }
        self.send_frame(true, opcode, payload, out)
    }

    /// Send one frame, possibly a fragment (`fin == false`, or `Continuation`). The caller is
    /// responsible for the fragment sequence; this checks the close state and control-frame
    /// rules only.
    pub fn send_frame(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        if self.state != State::Open {
            return Err(ProtocolError::SendAfterClose);
        }
        if opcode == OpCode::Close
            || (opcode.is_control() && (!fin || payload.len() > MAX_CONTROL_PAYLOAD))
        {
            return Err(ProtocolError::InvalidSend);
        }
        frame::encode_frame_bytes(out, fin, opcode, self.new_mask(), payload);
        Ok(())
    }

    /// Start the close handshake: write a close frame and go to [`State::CloseSent`]. A no-op
    /// if a close frame was already sent or received. `code` 1005 sends an empty close frame.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut BytesMut) {
        if self.state != State::Open {
            return;
        }
        self.write_close(
            Some(code).filter(|&c| c != close_code::NO_STATUS),
            reason,
            out,
        );
        self.state = State::CloseSent;
    }

    /// The mask of the next frame written: none for a server, the source's next key for a
    /// client.
    fn new_mask(&mut self) -> Option<[u8; 4]> {
        match &mut self.role {
            Role::Server => None,
            Role::Client(masks) => Some(masks.next_key()),
        }
    }

    fn write_close(&mut self, code: Option<u16>, reason: &str, out: &mut BytesMut) {
        match code {
            Some(code) => frame::encode_close(out, self.new_mask(), code, reason),
            None => frame::encode_frame_bytes(out, true, OpCode::Close, self.new_mask(), &[]),
        }
    }

    /// Fail the connection (RFC 6455 §7.1.7): close frame with the mapped code, then Closed.
    fn fail(&mut self, e: ProtocolError, out: &mut BytesMut) {
        if self.state == State::Open && e.is_peer_violation() {
            self.write_close(Some(e.close_code()), e.reason(), out);
        }
        self.state = State::Closed;
        self.reset_receive();
    }

    fn reset_receive(&mut self) {
        self.hdr_len = 0;
        self.frame = None;
        self.msg_opcode = None;
        self.msg.clear();
        self.ctrl.clear();
        self.utf8.reset();
    }

    fn resolve<'a>(&'a self, p: Pending, input: &'a [u8]) -> Event<'a> {
        let bytes = |src: Src| -> &'a [u8] {
            match src {
                Src::Input(r) => input.get(r).unwrap_or_default(),
                Src::Msg => &self.msg,
                Src::Ctrl => &self.ctrl,
            }
        };
        match p {
            Pending::Message(opcode, src) => Event::Message {
                opcode,
                payload: bytes(src),
            },
            Pending::Ping(src) => Event::Ping(bytes(src)),
            Pending::Pong(src) => Event::Pong(bytes(src)),
            Pending::Close(code, src) => {
                let b = bytes(src);
                // Validated in `on_control`; the fallback is unreachable.
                let reason = b
                    .get(2..)
                    .and_then(|r| std::str::from_utf8(r).ok())
                    .unwrap_or("");
                Event::Close { code, reason }
            }
        }
    }

    fn feed_inner(
        &mut self,
        input: &mut [u8],
        out: &mut BytesMut,
    ) -> Result<(usize, Option<Pending>), ProtocolError> {
        if self.delivered {
            self.delivered = false;
            self.msg.clear();
        }
        if matches!(self.state, State::CloseReceived | State::Closed) {
            return Ok((input.len(), None));
        }
        let mut pos = 0;
        loop {
            let f = match self.frame {
                Some(f) => f,
                None => {
                    let Some(f) = self.read_header(input, &mut pos)? else {
                        return Ok((input.len(), None));
                    };
                    f
                }
            };
            let avail = input.len() - pos;
            let remaining = f.len - f.done;
            if f.done == 0 && remaining <= avail as u64 {
                // The whole payload is in `input`.
                let range = pos..pos + remaining as usize;
                pos = range.end;
                self.frame = None;
                let payload = &mut input[range.clone()];
                if let Some(key) = f.mask {
                    mask::unmask(payload, key);
                }
                if f.opcode.is_control() {
                    let p = self.on_control(f.opcode, payload, Src::Input(range), out)?;
                    return Ok((pos, Some(p)));
                }
                if f.fin && f.opcode != OpCode::Continuation {
                    // An unfragmented message: zero copy.
                    self.msg_opcode = None;
                    if f.opcode == OpCode::Text {
                        utf8::validate(payload)?;
                    }
                    return Ok((pos, Some(Pending::Message(f.opcode, Src::Input(range)))));
                }
                self.append_data(payload)?;
                if f.fin {
                    return Ok((pos, Some(self.finish_message()?)));
                }
                continue;
            }
            // Part of the payload: take what is there.
            let take = remaining.min(avail as u64) as usize;
            let chunk = &mut input[pos..pos + take];
            pos += take;
            if let Some(key) = f.mask {
                mask::unmask(chunk, mask::rotate_key(key, f.done));
            }
            if f.opcode.is_control() {
                // Bounded: control payloads are ≤ 125 (checked by the header parser), and the
                // buffer was cleared when the frame's header was read.
                if self.ctrl.len() + chunk.len() <= MAX_CONTROL_PAYLOAD {
                    self.ctrl.extend_from_slice(chunk);
                }
            } else {
                self.append_data(chunk)?;
            }
            let done = f.done + take as u64;
            if done < f.len {
                self.frame = Some(InFrame { done, ..f });
                return Ok((pos, None));
            }
            self.frame = None;
            if f.opcode.is_control() {
                // Moved out and back, so `on_control` can take `&mut self`; the event resolves
                // `Src::Ctrl` to `self.ctrl` afterwards.
                let ctrl = std::mem::take(&mut self.ctrl);
                let p = self.on_control(f.opcode, &ctrl, Src::Ctrl, out);
                self.ctrl = ctrl;
                return Ok((pos, Some(p?)));
            }
            if f.fin {
                return Ok((pos, Some(self.finish_message()?)));
            }
            if pos == input.len() {
                return Ok((pos, None));
            }
        }
    }

    /// Parse (or continue parsing) a frame header at `input[*pos..]`, validate it for this
    /// role and message sequence, and make it the current frame. `None`: need more input (all of
    /// it was taken into the header buffer).
    fn read_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<InFrame>, ProtocolError> {
        let rest = &input[*pos..];
        let (h, used) = if self.hdr_len > 0 {
            let have = usize::from(self.hdr_len);
            let take = (MAX_HEADER_LEN - have).min(rest.len());
            self.hdr[have..have + take].copy_from_slice(&rest[..take]);
            match FrameHeader::parse(&self.hdr[..have + take])? {
                None => {
                    self.hdr_len = (have + take) as u8; // < MAX_HEADER_LEN
                    *pos += take;
                    return Ok(None);
                }
                Some((h, n)) => {
                    self.hdr_len = 0;
                    (h, n - have)
                }
            }
        } else {
            match FrameHeader::parse(rest)? {
                None => {
                    // `parse` needs at most MAX_HEADER_LEN bytes, so `rest` fits.
                    let n = rest.len().min(MAX_HEADER_LEN);
                    self.hdr[..n].copy_from_slice(&rest[..n]);
                    self.hdr_len = n as u8; // n <= MAX_HEADER_LEN
                    *pos += rest.len();
                    return Ok(None);
                }
                Some(x) => x,
            }
        };
        *pos += used;
        self.check_header(&h)?;
        let f = InFrame {
            opcode: h.opcode,
            fin: h.fin,
            mask: h.mask,
            len: h.payload_len,
            done: 0,
        };
        self.frame = Some(f);
        Ok(Some(f))
    }

    /// The checks that depend on the role, the negotiated extensions, the message in progress
    /// and the limits. Starts a new message's bookkeeping for Text/Binary frames.
    fn check_header(&mut self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv & !self.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits(h.rsv));
        }
        match (&self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client(_), true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if h.opcode.is_control() {
            self.ctrl.clear();
            return Ok(());
        }
        match (h.opcode, self.msg_opcode) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        if h.payload_len > self.limits.max_frame_size {
            return Err(ProtocolError::FrameTooLarge(h.payload_len));
        }
        let total = (self.msg.len() as u64).saturating_add(h.payload_len);
        if total > self.limits.max_message_size as u64 {
            return Err(ProtocolError::MessageTooLarge(total));
        }
        if h.opcode != OpCode::Continuation {
            self.msg_opcode = Some(h.opcode);
            self.utf8.reset();
            self.msg.clear();
        }
        Ok(())
    }

    /// Append (unmasked) message bytes to the assembly buffer, validating text as it arrives.
    fn append_data(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.msg_opcode == Some(OpCode::Text) {
            self.utf8.feed(chunk)?;
        }
        self.msg.extend_from_slice(chunk);
        Ok(())
    }

    /// The final fragment arrived: the message in `msg` is complete.
    fn finish_message(&mut self) -> Result<Pending, ProtocolError> {
        let opcode = self.msg_opcode.take().unwrap_or(OpCode::Binary);
        if opcode == OpCode::Text {
            self.utf8.finish()?;
        }
        self.delivered = true;
        Ok(Pending::Message(opcode, Src::Msg))
    }

    /// A whole control frame payload (unmasked). Writes the pong / close reply.
    fn on_control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        src: Src,
        out: &mut BytesMut,
    ) -> Result<Pending, ProtocolError> {
        match opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    frame::encode_frame_bytes(out, true, OpCode::Pong, self.new_mask(), payload);
                }
                Ok(Pending::Ping(src))
            }
            OpCode::Pong => Ok(Pending::Pong(src)),
            _ => {
                let (code, _reason) = close::parse_close_payload(payload)?;
                match self.state {
                    State::Open => {
                        self.write_close(code, "", out);
                        self.state = State::CloseReceived;
                    }
                    _ => self.state = State::Closed,
                }
                Ok(Pending::Close(code, src))
            }
        }
    }
}
