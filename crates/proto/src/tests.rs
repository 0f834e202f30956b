//! In-memory protocol tests: a client-role and a server-role [`Connection`] driven against each
//! other (the `Pair` harness), every split of a stream into reads, the violations and their
//! close codes, and one regression test for each of four WebSocket bugs the core must never have
//! (each described on its test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use proptest::prelude::*;

use super::close::close_code;
use super::conn::{Connection, Event, Limits, MaskSource, Role, State};
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, encode_close, encode_frame};
use super::handshake;

/// Known, distinct masking keys for the client role in these tests (a Weyl sequence: never
/// repeats within 2^32 keys). Real clients draw theirs from a strong source.
#[derive(Debug, Default)]
pub(crate) struct TestMasks(u32);

impl MaskSource for TestMasks {
    fn next_key(&mut self) -> [u8; 4] {
        self.0 = self.0.wrapping_add(0x9E37_79B9);
        self.0.to_le_bytes()
    }
}

/// A client-role connection masking with [`TestMasks`].
pub(crate) fn client(limits: Limits) -> Connection<TestMasks> {
    Connection::with_role(Role::Client(TestMasks::default()), limits)
}

/// An owned copy of an [`Event`] (or the error that ended the stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Msg(OpCode, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    Err(ProtocolError),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Message { opcode, payload } => Ev::Msg(opcode, payload.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Close { code, reason } => Ev::Close(code, reason.to_owned()),
        }
    }
}

/// Feed one read to `conn` until it is consumed; collect events. Stops at the first error.
pub(crate) fn feed_read<M: MaskSource>(
    conn: &mut Connection<M>,
    read: &[u8],
    out: &mut BytesMut,
    evs: &mut Vec<Ev>,
) {
    let mut buf = read.to_vec();
    let mut at = 0;
    while at < buf.len() {
        match conn.feed(&mut buf[at..], out) {
            Ok(p) => {
                assert!(p.consumed > 0 || p.event.is_some(), "no progress");
                if let Some(e) = p.event {
                    evs.push(e.into());
                }
                at += p.consumed;
            }
            Err(e) => {
                evs.push(Ev::Err(e));
                return;
            }
        }
    }
}

/// Feed `stream` to `conn` as reads cut at `cuts` (sorted positions).
pub(crate) fn feed_split<M: MaskSource>(
    conn: &mut Connection<M>,
    stream: &[u8],
    cuts: &[usize],
    out: &mut BytesMut,
) -> Vec<Ev> {
    let mut evs = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let c = c.clamp(start, stream.len());
        feed_read(conn, &stream[start..c], out, &mut evs);
        start = c;
        if matches!(evs.last(), Some(Ev::Err(_))) {
            break;
        }
    }
    evs
}

/// A client-role and a server-role connection wired back to back.
pub(crate) struct Pair {
    pub client: Connection<TestMasks>,
    pub server: Connection,
    /// Bytes written by the client, not yet delivered to the server.
    pub to_server: BytesMut,
    /// Bytes written by the server, not yet delivered to the client.
    pub to_client: BytesMut,
}

impl Pair {
    pub fn new(limits: Limits) -> Self {
        Pair {
            client: client(limits),
            server: Connection::new(Role::Server, limits),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
        }
    }

    /// Deliver everything the client wrote to the server in reads cut at `cuts`.
    pub fn deliver_to_server(&mut self, cuts: &[usize]) -> Vec<Ev> {
        let bytes = self.to_server.split().freeze();
        feed_split(&mut self.server, &bytes, cuts, &mut self.to_client)
    }

    /// Deliver everything the server wrote to the client in one read.
    pub fn deliver_to_client(&mut self) -> Vec<Ev> {
        let bytes = self.to_client.split().freeze();
        feed_split(&mut self.client, &bytes, &[], &mut self.to_server)
    }
}

fn big_limits() -> Limits {
    Limits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    }
}

/// A client stream exercising fragments, interleaved control frames, all length encodings and
/// multibyte text split across fragments.
fn sample_stream(pair: &mut Pair) -> Vec<Ev> {
    let c = &mut pair.client;
    let out = &mut pair.to_server;
    let text = "héllo wörld €😀".as_bytes();
    c.send(OpCode::Text, b"hi", out).unwrap();
    // "é" split between two fragments, a ping in between.
    c.send_frame(false, OpCode::Text, &text[..2], out).unwrap();
    c.send(OpCode::Ping, b"p1", out).unwrap();
    c.send_frame(false, OpCode::Continuation, &text[2..7], out)
        .unwrap();
    c.send_frame(true, OpCode::Continuation, &text[7..], out)
        .unwrap();
    let bin: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    c.send(OpCode::Binary, &bin, out).unwrap();
    c.send(OpCode::Binary, b"", out).unwrap();
    c.send(OpCode::Pong, b"", out).unwrap();
    c.close(close_code::NORMAL, "bye", out);
    vec![
        Ev::Msg(OpCode::Text, b"hi".to_vec()),
        Ev::Ping(b"p1".to_vec()),
        Ev::Msg(OpCode::Text, text.to_vec()),
        Ev::Msg(OpCode::Binary, bin),
        Ev::Msg(OpCode::Binary, vec![]),
        Ev::Pong(vec![]),
        Ev::Close(Some(1000), "bye".into()),
    ]
}

#[test]
fn pair_round_trip_and_close_handshake() {
    let mut pair = Pair::new(big_limits());
    let want = sample_stream(&mut pair);
    assert_eq!(pair.client.state(), State::CloseSent);
    assert_eq!(pair.deliver_to_server(&[]), want);
    assert_eq!(pair.server.state(), State::CloseReceived);
    // The server answered the ping and the close.
    assert_eq!(
        pair.deliver_to_client(),
        vec![
            Ev::Pong(b"p1".to_vec()),
            Ev::Close(Some(1000), String::new())
        ]
    );
    assert_eq!(pair.client.state(), State::Closed);
    assert!(pair.to_server.is_empty(), "no reply to a close reply");
    assert_eq!(pair.client.eof(), Ok(()));
    assert_eq!(pair.server.eof(), Ok(()));
}

#[test]
fn server_initiated_close() {
    let mut pair = Pair::new(Limits::default());
    pair.server
        .send(OpCode::Text, b"x", &mut pair.to_client)
        .unwrap();
    pair.server
        .close(close_code::GOING_AWAY, "restart", &mut pair.to_client);
    assert_eq!(pair.server.state(), State::CloseSent);
    assert_eq!(
        pair.server.send(OpCode::Text, b"late", &mut pair.to_client),
        Err(ProtocolError::SendAfterClose)
    );
    assert_eq!(
        pair.deliver_to_client(),
        vec![
            Ev::Msg(OpCode::Text, b"x".to_vec()),
            Ev::Close(Some(1001), "restart".into())
        ]
    );
    assert_eq!(pair.client.state(), State::CloseReceived);
    assert_eq!(
        pair.deliver_to_server(&[]),
        vec![Ev::Close(Some(1001), String::new())]
    );
    assert_eq!(pair.server.state(), State::Closed);
}

#[test]
fn every_split_position_into_two_and_three_reads() {
    let mut pair = Pair::new(big_limits());
    let want = sample_stream(&mut pair);
    let stream = pair.to_server.split().freeze();
    for i in 0..=stream.len() {
        let mut server = Connection::new(Role::Server, big_limits());
        let mut out = BytesMut::new();
        assert_eq!(
            feed_split(&mut server, &stream, &[i], &mut out),
            want,
            "cut at {i}"
        );
    }
    // Three reads: every pair of cuts (stride 3 on the second cut to keep this quick in debug).
    for i in 0..=stream.len() {
        for j in (i..=stream.len()).step_by(3) {
            let mut server = Connection::new(Role::Server, big_limits());
            let mut out = BytesMut::new();
            assert_eq!(
                feed_split(&mut server, &stream, &[i, j], &mut out),
                want,
                "cuts {i} {j}"
            );
        }
    }
    // One byte per read.
    let cuts: Vec<usize> = (1..stream.len()).collect();
    let mut server = Connection::new(Role::Server, big_limits());
    assert_eq!(
        feed_split(&mut server, &stream, &cuts, &mut BytesMut::new()),
        want
    );
}

#[test]
fn whole_frame_is_delivered_zero_copy() {
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        true,
        OpCode::Text,
        Some([9, 8, 7, 6]),
        b"zero copy",
    );
    let range = frame.as_ptr_range();
    let mut server = Connection::new(Role::Server, Limits::default());
    let mut out = BytesMut::new();
    let p = server.feed(&mut frame, &mut out).unwrap();
    let Some(Event::Message { payload, .. }) = p.event else {
        panic!("no message")
    };
    assert_eq!(payload, b"zero copy");
    assert!(
        range.contains(&payload.as_ptr()),
        "payload borrows the input"
    );
}

#[test]
fn assembly_buffer_is_reused() {
    let mut server = Connection::new(Role::Server, Limits::default());
    let mut client = client(Limits::default());
    let mut out = BytesMut::new();
    let mut ptrs = Vec::new();
    for _ in 0..5 {
        let mut wire = BytesMut::new();
        client
            .send_frame(false, OpCode::Binary, &[1; 100], &mut wire)
            .unwrap();
        client
            .send_frame(true, OpCode::Continuation, &[2; 100], &mut wire)
            .unwrap();
        let mut wire = wire.to_vec();
        let mut at = 0;
        while at < wire.len() {
            let p = server.feed(&mut wire[at..], &mut out).unwrap();
            if let Some(Event::Message { payload, .. }) = p.event {
                assert_eq!(payload.len(), 200);
                ptrs.push(payload.as_ptr() as usize);
            }
            at += p.consumed;
        }
    }
    assert!(
        ptrs.windows(2).all(|w| w[0] == w[1]),
        "same buffer every time: {ptrs:?}"
    );
}

/// Feed one client frame to a fresh server; return the events and what the server wrote.
fn server_gets(frames: &[u8], limits: Limits) -> (Vec<Ev>, Vec<u8>, State) {
    let mut server = Connection::new(Role::Server, limits);
    let mut out = BytesMut::new();
    let evs = feed_split(&mut server, frames, &[], &mut out);
    (evs, out.to_vec(), server.state())
}

fn masked(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, fin, op, Some([1, 2, 3, 4]), payload);
    v
}

/// The close code in a server-written (unmasked) close frame.
fn close_code_of(out: &[u8]) -> Option<u16> {
    let (h, n) = FrameHeader::parse(out).ok()??;
    (h.opcode == OpCode::Close && h.payload_len >= 2)
        .then(|| u16::from_be_bytes([out[n], out[n + 1]]))
}

fn assert_fails(frames: &[u8], limits: Limits, err: ProtocolError, code: u16) {
    let (evs, out, state) = server_gets(frames, limits);
    assert_eq!(evs.last(), Some(&Ev::Err(err)), "{evs:?}");
    assert_eq!(err.close_code(), code);
    assert_eq!(close_code_of(&out), Some(code), "close frame written");
    assert_eq!(state, State::Closed);
}

#[test]
fn violations_map_to_close_codes() {
    let l = Limits::default();
    let mut rsv = masked(true, OpCode::Text, b"x");
    rsv[0] |= 0x40;
    assert_fails(&rsv, l, ProtocolError::ReservedBits(0b100), 1002);
    let mut op = masked(true, OpCode::Binary, b"x");
    op[0] = 0x83;
    assert_fails(&op, l, ProtocolError::ReservedOpcode(3), 1002);
    op[0] = 0x8F;
    assert_fails(&op, l, ProtocolError::ReservedOpcode(0xF), 1002);
    let ping126 = masked(true, OpCode::Ping, &[0; 126]);
    assert_fails(&ping126, l, ProtocolError::ControlFrameTooLong(126), 1002);
    assert_fails(
        &masked(false, OpCode::Ping, b""),
        l,
        ProtocolError::FragmentedControlFrame,
        1002,
    );
    assert_fails(
        &masked(true, OpCode::Continuation, b"x"),
        l,
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    let mut two_starts = masked(false, OpCode::Text, b"a");
    two_starts.extend(masked(true, OpCode::Text, b"b"));
    assert_fails(&two_starts, l, ProtocolError::ExpectedContinuation, 1002);
    assert_fails(
        &masked(true, OpCode::Close, b"\x03"),
        l,
        ProtocolError::InvalidClosePayload,
        1002,
    );
    for bad in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 2000, 5000] {
        let mut c = Vec::new();
        encode_close(&mut c, Some([5, 6, 7, 8]), bad, "");
        assert_fails(&c, l, ProtocolError::InvalidCloseCode(bad), 1002);
    }
    assert_fails(
        &masked(true, OpCode::Close, b"\x03\xe8\xc0\xaf"),
        l,
        ProtocolError::InvalidCloseReason,
        1007,
    );
    assert_fails(
        &masked(true, OpCode::Text, b"\xff"),
        l,
        ProtocolError::InvalidUtf8,
        1007,
    );
    // A text message ending inside a code point.
    let mut cut = masked(false, OpCode::Text, b"a\xe2\x82");
    cut.extend(masked(true, OpCode::Continuation, b""));
    assert_fails(&cut, l, ProtocolError::InvalidUtf8, 1007);
}

#[test]
fn valid_close_codes_are_echoed() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut c = Vec::new();
        encode_close(&mut c, Some([5, 6, 7, 8]), code, "ok");
        let (evs, out, state) = server_gets(&c, Limits::default());
        assert_eq!(evs, vec![Ev::Close(Some(code), "ok".into())]);
        assert_eq!(close_code_of(&out), Some(code));
        assert_eq!(state, State::CloseReceived);
    }
    // An empty close is answered with an empty close.
    let (evs, out, _) = server_gets(&masked(true, OpCode::Close, b""), Limits::default());
    assert_eq!(evs, vec![Ev::Close(None, String::new())]);
    assert_eq!(out, [0x88, 0x00]);
}

#[test]
fn limits_exactly_accepted_one_over_is_1009() {
    let limits = Limits {
        max_frame_size: 1000,
        max_message_size: 1500,
    };
    let (evs, _, _) = server_gets(&masked(true, OpCode::Binary, &[7; 1000]), limits);
    assert_eq!(evs, vec![Ev::Msg(OpCode::Binary, vec![7; 1000])]);
    assert_fails(
        &masked(true, OpCode::Binary, &[7; 1001]),
        limits,
        ProtocolError::FrameTooLarge(1001),
        1009,
    );
    let mut frags = masked(false, OpCode::Binary, &[1; 1000]);
    frags.extend(masked(true, OpCode::Continuation, &[2; 500]));
    let (evs, _, _) = server_gets(&frags, limits);
    assert_eq!(evs.len(), 1);
    let mut frags = masked(false, OpCode::Binary, &[1; 1000]);
    frags.extend(masked(true, OpCode::Continuation, &[2; 501]));
    assert_fails(&frags, limits, ProtocolError::MessageTooLarge(1501), 1009);
    // The limit is checked on the header: nothing of a huge frame is buffered.
    let mut huge = vec![0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
    huge.extend([0; 100]);
    assert_fails(&huge, limits, ProtocolError::FrameTooLarge(1 << 32), 1009);
}

#[test]
fn invalid_utf8_fails_fast_mid_message() {
    let mut server = Connection::new(Role::Server, big_limits());
    let mut out = BytesMut::new();
    let mut evs = Vec::new();
    // First fragment valid, second fragment starts an invalid sequence; the final fragment is
    // never sent: the error must come without it.
    feed_read(
        &mut server,
        &masked(false, OpCode::Text, "κόσμε".as_bytes()),
        &mut out,
        &mut evs,
    );
    assert!(evs.is_empty());
    feed_read(
        &mut server,
        &masked(false, OpCode::Continuation, b"\xce\xbc\xed\xa0\x80"),
        &mut out,
        &mut evs,
    );
    assert_eq!(evs, vec![Ev::Err(ProtocolError::InvalidUtf8)]);
    // Within one frame that arrives in pieces: fails on the piece with the bad byte.
    let frame = masked(true, OpCode::Text, b"hello\xf4\x90\x80\x80world");
    let mut server = Connection::new(Role::Server, big_limits());
    let mut evs = Vec::new();
    let bad_at = 6 + 5 + 2; // header + "hello" + 0xF4 0x90
    feed_read(&mut server, &frame[..bad_at - 1], &mut out, &mut evs);
    assert!(evs.is_empty());
    feed_read(&mut server, &frame[bad_at - 1..bad_at], &mut out, &mut evs);
    assert_eq!(evs, vec![Ev::Err(ProtocolError::InvalidUtf8)]);
}

#[test]
fn input_after_failure_or_close_is_ignored() {
    let mut server = Connection::new(Role::Server, Limits::default());
    let mut out = BytesMut::new();
    let mut bad = masked(true, OpCode::Text, b"\xff");
    assert!(server.feed(&mut bad, &mut out).is_err());
    let written = out.len();
    let mut more = masked(true, OpCode::Text, b"ok");
    let len = more.len();
    let p = server.feed(&mut more, &mut out).unwrap();
    assert_eq!((p.consumed, p.event), (len, None));
    assert_eq!(out.len(), written, "one close frame only");
    assert_eq!(server.eof(), Ok(()));
    assert_eq!(
        server.send(OpCode::Text, b"x", &mut out),
        Err(ProtocolError::SendAfterClose)
    );
}

#[test]
fn send_rules() {
    let mut c = client(Limits::default());
    let mut out = BytesMut::new();
    assert_eq!(
        c.send(OpCode::Close, b"", &mut out),
        Err(ProtocolError::InvalidSend)
    );
    assert_eq!(
        c.send(OpCode::Continuation, b"", &mut out),
        Err(ProtocolError::InvalidSend)
    );
    assert_eq!(
        c.send(OpCode::Ping, &[0; 126], &mut out),
        Err(ProtocolError::InvalidSend)
    );
    assert!(out.is_empty());
    c.send(OpCode::Ping, &[0; 125], &mut out).unwrap();
}

// ---- One regression test for each of four known WebSocket bugs ----

/// Bug 1: a client built its mask by appending integers to a byte string and crashed when it
/// sent a close frame. Ours takes a fresh key per frame from its mask source; client connections close
/// cleanly on every path: normal close, close after an error, close while a message is half
/// sent.
#[test]
fn regression_bug1_client_fresh_mask_per_frame_and_close_on_every_path() {
    // Fresh mask for every frame, including close frames.
    let mut c = client(Limits::default());
    let mut out = BytesMut::new();
    let mut masks = Vec::new();
    for _ in 0..64 {
        let start = out.len();
        c.send(OpCode::Text, b"m", &mut out).unwrap();
        let (h, _) = FrameHeader::parse(&out[start..]).unwrap().unwrap();
        masks.push(h.mask.expect("client frames are masked"));
    }
    let start = out.len();
    c.close(close_code::NORMAL, "done", &mut out);
    let (h, _) = FrameHeader::parse(&out[start..]).unwrap().unwrap();
    assert_eq!(h.opcode, OpCode::Close);
    masks.push(h.mask.expect("close frames are masked too"));
    masks.sort();
    masks.dedup();
    assert!(
        masks.len() > 60,
        "masks vary: {} distinct of 65",
        masks.len()
    );

    // Path 1: normal close, through the server and back.
    let mut pair = Pair::new(Limits::default());
    pair.client
        .close(close_code::NORMAL, "", &mut pair.to_server);
    assert_eq!(
        pair.deliver_to_server(&[]),
        vec![Ev::Close(Some(1000), String::new())]
    );
    assert_eq!(
        pair.deliver_to_client(),
        vec![Ev::Close(Some(1000), String::new())]
    );
    assert_eq!(pair.client.state(), State::Closed);
    assert_eq!(pair.client.eof(), Ok(()));

    // Path 2: close after an error (the server sent a masked frame).
    let mut pair = Pair::new(Limits::default());
    encode_frame(
        &mut pair.to_client,
        true,
        OpCode::Text,
        Some([1, 1, 1, 1]),
        b"bad",
    );
    assert_eq!(
        pair.deliver_to_client(),
        vec![Ev::Err(ProtocolError::MaskedFrame)]
    );
    assert_eq!(pair.client.state(), State::Closed);
    pair.client
        .close(close_code::NORMAL, "", &mut pair.to_server); // no-op, no panic
    let evs = pair.deliver_to_server(&[]);
    assert_eq!(
        evs,
        vec![Ev::Close(Some(1002), "masked server frame".into())]
    );
    assert_eq!(pair.client.eof(), Ok(()));

    // Path 3: close while a message is half sent.
    let mut pair = Pair::new(Limits::default());
    pair.client
        .send_frame(false, OpCode::Text, b"half", &mut pair.to_server)
        .unwrap();
    pair.client
        .close(close_code::GOING_AWAY, "", &mut pair.to_server);
    assert_eq!(
        pair.deliver_to_server(&[]),
        vec![Ev::Close(Some(1001), String::new())]
    );
    assert_eq!(
        pair.deliver_to_client(),
        vec![Ev::Close(Some(1001), String::new())]
    );
    assert_eq!(pair.client.state(), State::Closed);

    // Path 4: the transport dies before the server answers.
    let mut pair = Pair::new(Limits::default());
    pair.client
        .close(close_code::NORMAL, "", &mut pair.to_server);
    assert_eq!(pair.client.eof(), Err(ProtocolError::AbnormalClosure));
}

/// Bug 2: a server announced a 202-byte frame and sent 199 bytes; the parser never completed
/// it. Ours waits for more at any split, emits nothing partial, and reports a stream that ends
/// mid-frame as an abnormal closure.
#[test]
fn regression_bug2_frame_split_anywhere_and_truncated_frame_is_abnormal_closure() {
    let payload: Vec<u8> = (0..202u32).map(|i| b'a' + (i % 26) as u8).collect();
    let frame = masked(true, OpCode::Text, &payload);
    let truncated = &frame[..frame.len() - 3];
    for i in 0..=truncated.len() {
        let mut server = Connection::new(Role::Server, Limits::default());
        let mut out = BytesMut::new();
        assert_eq!(
            feed_split(&mut server, truncated, &[i], &mut out),
            vec![],
            "cut {i}"
        );
        assert_eq!(server.eof(), Err(ProtocolError::AbnormalClosure));
        assert_eq!(ProtocolError::AbnormalClosure.close_code(), 1006);
        assert!(out.is_empty());
        // And the whole frame at the same cut is one ordinary message.
        let mut server = Connection::new(Role::Server, Limits::default());
        assert_eq!(
            feed_split(&mut server, &frame, &[i], &mut out),
            vec![Ev::Msg(OpCode::Text, payload.clone())]
        );
    }
    // Same from the client side: the server's unmasked 202-byte frame cut short.
    let mut f = Vec::new();
    encode_frame(&mut f, true, OpCode::Binary, None, &payload);
    let mut client = client(Limits::default());
    assert_eq!(
        feed_split(&mut client, &f[..f.len() - 3], &[50], &mut BytesMut::new()),
        vec![]
    );
    assert_eq!(client.eof(), Err(ProtocolError::AbnormalClosure));
}

/// Bug 3: a client sent a frame without the MASK bit and the server crashed. Ours answers
/// with 1002 and closes that one connection; other connections are untouched.
#[test]
fn regression_bug3_unmasked_client_frame_closes_that_connection_with_1002() {
    let mut good = Connection::new(Role::Server, Limits::default());
    let mut out_good = BytesMut::new();
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, true, OpCode::Text, None, b"no mask");
    assert_fails(
        &unmasked,
        Limits::default(),
        ProtocolError::UnmaskedFrame,
        1002,
    );
    // The other connection keeps working.
    let evs = feed_split(
        &mut good,
        &masked(true, OpCode::Text, b"fine"),
        &[],
        &mut out_good,
    );
    assert_eq!(evs, vec![Ev::Msg(OpCode::Text, b"fine".to_vec())]);
    assert_eq!(good.state(), State::Open);
}

/// Bug 4: a server sent Sec-WebSocket-Accept with a trailing newline, and handled only payloads
/// under 126 bytes. Ours has no stray bytes, ends the head with exactly one blank line, and
/// handles 7-, 16- and 64-bit lengths up to the limit.
#[test]
fn regression_bug4_exact_accept_header_and_all_length_encodings() {
    let accept = handshake::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(accept.len(), 28);
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let up = handshake::parse_request(req, &Default::default())
        .unwrap()
        .unwrap()
        .websocket();
    let mut resp = Vec::new();
    handshake::write_101(&up.unwrap(), None, &mut resp);
    let s = String::from_utf8(resp).unwrap();
    assert!(s.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(s.ends_with("\r\n\r\n") && !s.ends_with("\r\n\r\n\r\n"));
    assert_eq!(s.matches("\r\n\r\n").count(), 1);
    assert!(!s.contains("\n\n") && !s.replace("\r\n", "").contains('\n'));

    let limits = Limits {
        max_frame_size: 70_000,
        max_message_size: 70_000,
    };
    for len in [0usize, 1, 125, 126, 127, 200, 65_535, 65_536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut pair = Pair::new(limits);
        pair.client
            .send(OpCode::Binary, &payload, &mut pair.to_server)
            .unwrap();
        let ext = match len {
            0..=125 => 0,
            126..=65_535 => 2,
            _ => 8,
        };
        assert_eq!(pair.to_server.len(), 2 + ext + 4 + len);
        assert_eq!(
            pair.deliver_to_server(&[len / 2]),
            vec![Ev::Msg(OpCode::Binary, payload.clone())]
        );
        pair.server
            .send(OpCode::Binary, &payload, &mut pair.to_client)
            .unwrap();
        assert_eq!(
            pair.deliver_to_client(),
            vec![Ev::Msg(OpCode::Binary, payload)]
        );
    }
    assert_fails(
        &masked(true, OpCode::Binary, &vec![0; 70_001]),
        limits,
        ProtocolError::FrameTooLarge(70_001),
        1009,
    );
}

// ---- Fuzz target bodies over bounded random input (stable CI stands in for cargo-fuzz) ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_server_connection_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        super::fuzzing::server_connection(&data);
    }

    #[test]
    fn fuzz_server_connection_mutated_valid_stream(seed in any::<u64>(), flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4)) {
        // Valid frames with a few bytes flipped reach much deeper than pure noise.
        let mut pair = Pair::new(big_limits());
        let _ = sample_stream(&mut pair);
        let mut data = seed.to_le_bytes().to_vec();
        data.extend_from_slice(&pair.to_server);
        for (at, x) in flips {
            let i = 8 + at as usize % (data.len() - 8);
            data[i] ^= x;
        }
        super::fuzzing::server_connection(&data);
    }

    #[test]
    fn fuzz_handshake_random(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        super::fuzzing::handshake(&data);
    }

    #[test]
    fn fuzz_frame_header_random(data in proptest::collection::vec(any::<u8>(), 0..20)) {
        super::fuzzing::frame_header(&data);
    }

    #[test]
    fn client_server_random_messages(msgs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 1usize..4), 1..6),
            cut in any::<prop::sample::Index>()) {
        let mut pair = Pair::new(Limits::default());
        let mut want = Vec::new();
        for (text, bytes, frags) in &msgs {
            let (op, payload) = if *text {
                (OpCode::Text, String::from_utf8_lossy(bytes).into_owned().into_bytes())
            } else {
                (OpCode::Binary, bytes.clone())
            };
            let step = payload.len().div_ceil(*frags).max(1);
            let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[]] } else { payload.chunks(step).collect() };
            for (i, c) in chunks.iter().enumerate() {
                let o = if i == 0 { op } else { OpCode::Continuation };
                pair.client.send_frame(i + 1 == chunks.len(), o, c, &mut pair.to_server).unwrap();
            }
            want.push(Ev::Msg(op, payload));
        }
        let len = pair.to_server.len();
        prop_assert_eq!(pair.deliver_to_server(&[cut.index(len + 1)]), want);
    }
}

// ---- Masking keys come from the caller (RFC 6455 §5.3; the core draws no randomness) ----

/// Every frame in `wire`: its header and its (still masked) payload.
fn frames(wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let (h, n) = FrameHeader::parse(&wire[at..]).unwrap().unwrap();
        let end = at + n + h.payload_len as usize;
        v.push((h, wire[at + n..end].to_vec()));
        at = end;
    }
    v
}

/// The client role masks every frame it writes, the automatic pong and the close included,
/// with exactly the keys its source gives, in order, one per frame, and draws no other key.
#[test]
fn client_masks_with_exactly_the_injected_keys() {
    let keys: Vec<[u8; 4]> = (1u8..=6)
        .map(|i| [i, 0xA0 | i, 0x50 ^ i, 0xFF - i])
        .collect();
    let mut next = keys.clone().into_iter();
    let mut drawn = 0;
    let source = || {
        drawn += 1;
        next.next().unwrap_or([0; 4])
    };
    let mut c = Connection::with_role(Role::Client(source), Limits::default());
    assert!(c.is_client());
    let mut out = BytesMut::new();
    c.send(OpCode::Text, b"one", &mut out).unwrap();
    c.send(OpCode::Binary, &[7; 300], &mut out).unwrap();
    c.send_frame(false, OpCode::Text, b"frag", &mut out)
        .unwrap();
    c.send_frame(true, OpCode::Continuation, b"ment", &mut out)
        .unwrap();
    // A server ping: the client's automatic pong is masked with the next key.
    let mut ping = Vec::new();
    encode_frame(&mut ping, true, OpCode::Ping, None, b"p");
    let evs = feed_split(&mut c, &ping, &[], &mut out);
    assert_eq!(evs, vec![Ev::Ping(b"p".to_vec())]);
    c.close(close_code::NORMAL, "bye", &mut out);
    // Nothing else draws a key: an unmasked server message, a refused send.
    let mut msg = Vec::new();
    encode_frame(&mut msg, true, OpCode::Text, None, b"in");
    assert_eq!(
        c.send(OpCode::Text, b"late", &mut out),
        Err(ProtocolError::SendAfterClose)
    );
    let _ = feed_split(&mut c, &msg, &[], &mut out);
    drop(c);
    assert_eq!(drawn, keys.len(), "one key per frame written, no more");

    let got = frames(&out);
    let masks: Vec<_> = got.iter().map(|(h, _)| h.mask).collect();
    assert_eq!(masks, keys.iter().copied().map(Some).collect::<Vec<_>>());
    let opcodes: Vec<_> = got.iter().map(|(h, _)| h.opcode).collect();
    assert_eq!(
        opcodes,
        [
            OpCode::Text,
            OpCode::Binary,
            OpCode::Text,
            OpCode::Continuation,
            OpCode::Pong,
            OpCode::Close
        ]
    );
    // Each payload is the plain payload masked with its own frame's key.
    for ((h, masked), plain) in got.iter().zip([
        &b"one"[..],
        &[7; 300][..],
        b"frag",
        b"ment",
        b"p",
        b"\x03\xe8bye",
    ]) {
        let mut p = masked.clone();
        super::mask::unmask_scalar(&mut p, h.mask.unwrap());
        assert_eq!(p, plain, "{:?}", h.opcode);
    }
    // And a server reads them back.
    let mut server = Connection::new(Role::Server, Limits::default());
    let evs = feed_split(&mut server, &out, &[5, 77], &mut BytesMut::new());
    assert_eq!(
        evs,
        vec![
            Ev::Msg(OpCode::Text, b"one".to_vec()),
            Ev::Msg(OpCode::Binary, vec![7; 300]),
            Ev::Msg(OpCode::Text, b"fragment".to_vec()),
            Ev::Pong(b"p".to_vec()),
            Ev::Close(Some(1000), "bye".into()),
        ]
    );
}

/// The server role never masks: not its sends, not its automatic pong and close reply, not
/// the close frame of a violation.
#[test]
fn server_never_masks() {
    let mut server = Connection::new(Role::Server, Limits::default());
    assert!(!server.is_client());
    let mut out = BytesMut::new();
    server.send(OpCode::Text, b"t", &mut out).unwrap();
    server.send(OpCode::Ping, b"p", &mut out).unwrap();
    server
        .send_frame(false, OpCode::Binary, &[1; 200], &mut out)
        .unwrap();
    server
        .send_frame(true, OpCode::Continuation, b"", &mut out)
        .unwrap();
    let mut wire = BytesMut::new();
    let mut c = client(Limits::default());
    c.send(OpCode::Ping, b"q", &mut wire).unwrap();
    c.close(close_code::GOING_AWAY, "", &mut wire);
    let evs = feed_split(&mut server, &wire, &[], &mut out);
    assert_eq!(
        evs,
        vec![
            Ev::Ping(b"q".to_vec()),
            Ev::Close(Some(1001), String::new())
        ]
    );
    // A violation on another server connection: its close frame is unmasked too.
    let mut bad = Connection::new(Role::Server, Limits::default());
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, true, OpCode::Text, None, b"x");
    let evs = feed_split(&mut bad, &unmasked, &[], &mut out);
    assert_eq!(evs, vec![Ev::Err(ProtocolError::UnmaskedFrame)]);

    let got = frames(&out);
    assert_eq!(
        got.len(),
        7,
        "text, ping, 2 fragments, pong, close reply, 1002 close"
    );
    assert!(
        got.iter().all(|(h, _)| h.mask.is_none()),
        "{:?}",
        got.iter().map(|(h, _)| h.mask).collect::<Vec<_>>()
    );
}

/// The server role carries no key source: `Role<NoMasks>` takes no byte of a server
/// connection (idle memory per connection counts every byte).
#[test]
fn server_role_costs_no_byte() {
    assert_eq!(std::mem::size_of::<Role>(), 0);
}
