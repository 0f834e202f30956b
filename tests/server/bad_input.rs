//! Malformed requests and frames: each ends only its own connection, with the right
//! status or close code, and is counted.

use std::io::Write;
use std::time::Duration;

use crate::both;
use crate::util::{Msg, Server, read_to_close};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn status(resp: &[u8]) -> u16 {
    let s = String::from_utf8_lossy(resp);
    s.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {s:?}"))
}

/// Raw-socket WebSocket: handshake done, returns the stream.
fn raw_ws(srv: &Server, path: &str) -> std::net::TcpStream {
    let mut s = srv.raw();
    s.write_all(upgrade(path, "").as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut s, &mut b).expect("101 response");
        head.push(b[0]);
    }
    assert_eq!(status(&head), 101);
    s
}

/// The close code in the first frame of `bytes` (a server close frame).
fn close_code(bytes: &[u8]) -> Option<u16> {
    (bytes.len() >= 4 && bytes[0] == 0x88).then(|| u16::from_be_bytes([bytes[2], bytes[3]]))
}

fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![op | if fin { 0x80 } else { 0 }];
    assert!(payload.len() < 126);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

both!(http_errors_have_the_right_status, |io| {
    let srv = Server::start(io, &["--max-header-bytes", "1024"]);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            upgrade("/ws/a", "")
                .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
                .into_bytes(),
            400,
        ),
        (
            upgrade("/ws/a", "")
                .replace(
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Key: c2hvcnQ=",
                )
                .into_bytes(),
            400,
        ),
        (
            upgrade("/ws/a", "")
                .replace("Version: 13", "Version: 12")
                .into_bytes(),
            426,
        ),
        (upgrade("/nowhere", "").into_bytes(), 404),
        (upgrade("/ws/a%20b c", "").into_bytes(), 400),
        (upgrade("/ws/", "").into_bytes(), 400),
        (
            b"POST /ws/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (b"GET /ws/a HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage that is not http\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            upgrade("/ws/a", &format!("X-Big: {}\r\n", "a".repeat(2000))).into_bytes(),
            431,
        ),
    ];
    for (req, want) in cases {
        let resp = srv.exchange(&req);
        assert_eq!(
            status(&resp),
            want,
            "request {:?} → {}",
            String::from_utf8_lossy(&req[..req.len().min(80)]),
            String::from_utf8_lossy(&resp)
        );
        if want == 426 {
            assert!(String::from_utf8_lossy(&resp).contains("Sec-WebSocket-Version: 13"));
        }
    }
    assert!(srv.metric("ringcast_handshake_failures_total{status=\"404\"}") >= 1);
    assert!(srv.metric("ringcast_handshake_failures_total{status=\"400\"}") >= 4);
    assert!(
        srv.get("/health").starts_with("HTTP/1.1 200"),
        "still serving"
    );
});

// Regression, bug 3 of the protocol issue: an unmasked client frame crashed a server.
both!(
    unmasked_client_frame_gets_1002_and_others_are_untouched,
    |io| {
        let srv = Server::start(io, &[]);
        let mut bystander = srv.ws("/ws/room?echo=1");
        let mut s = raw_ws(&srv, "/ws/room");
        s.write_all(&[0x81, 0x02, b'h', b'i']).expect("write");
        let got = read_to_close(&mut s);
        assert_eq!(close_code(&got), Some(1002), "{got:?}");
        bystander.text("still here");
        assert_eq!(bystander.recv(), Msg::Text("still here".into()));
        assert!(srv.metric("ringcast_protocol_errors_total{code=\"1002\"}") >= 1);
    }
);

both!(frame_violations_get_their_close_codes, |io| {
    let srv = Server::start(io, &[]);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (masked(0x3, true, b""), 1002, "reserved opcode"),
        (
            masked(0x1 | 0x40, true, b"x"),
            1002,
            "RSV1 without extension",
        ),
        (
            masked(0x0, true, b"x"),
            1002,
            "continuation without a start",
        ),
        (masked(0x9, false, b""), 1002, "fragmented ping"),
        (masked(0x1, true, &[0xff, 0xfe]), 1007, "invalid UTF-8"),
        (
            [masked(0x1, false, b"a"), masked(0x1, true, b"b")].concat(),
            1002,
            "new start inside a message",
        ),
        (
            masked(0x8, true, &[0x03, 0xed]),
            1002,
            "close code 1005 on the wire",
        ),
    ];
    for (bytes, code, what) in cases {
        let mut s = raw_ws(&srv, "/echo");
        s.write_all(&bytes).expect("write");
        let got = read_to_close(&mut s);
        assert_eq!(close_code(&got), Some(code), "{what}: {got:?}");
    }
    assert!(srv.metric("ringcast_protocol_errors_total{code=\"1007\"}") >= 1);
});

both!(abrupt_disconnects_mid_frame_and_mid_handshake, |io| {
    let srv = Server::start(io, &[]);
    for _ in 0..20 {
        let mut s = srv.raw();
        s.write_all(b"GET /ws/a HTTP/1.1\r\nHost: x\r\nUpg")
            .expect("write");
        drop(s);
        let mut s = raw_ws(&srv, "/ws/a");
        // A frame announcing 202 bytes, then only 199 (bug 2 of the protocol issue).
        let mut f = vec![0x82, 0x80 | 126, 0, 202, 1, 2, 3, 4];
        f.extend(std::iter::repeat_n(0u8, 199));
        s.write_all(&f).expect("write");
        drop(s);
    }
    assert!(
        srv.wait_for(Duration::from_secs(5), |s| s.open_connections() == 0),
        "all closed"
    );
    assert!(
        srv.metric("ringcast_abnormal_closures_total") >= 20,
        "abnormal closures counted"
    );
    assert_eq!(
        srv.metric("ringcast_protocol_errors_total{code=\"1002\"}"),
        0,
        "a client that went away is not a protocol violation"
    );
    let mut c = srv.ws("/echo");
    c.text("alive");
    assert_eq!(c.recv(), Msg::Text("alive".into()));
});
