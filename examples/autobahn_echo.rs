//! A tiny echo server driving `ringcast::proto` over blocking `std::net` sockets, one thread
//! per connection. It exists so `scripts/autobahn` can run Autobahn|Testsuite against the
//! protocol core on its own; the real server's `/echo` endpoint replaces it when given a URL.
//!
//! Usage: `cargo run --release --example autobahn_echo -- [ADDR]` (default 127.0.0.1:9002).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use bytes::BytesMut;
use ringcast::proto::{
    Connection, Event, HandshakeLimits, Limits, Role, State, encode_frame, handshake,
};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = TcpListener::bind(&addr)?;
    println!("autobahn_echo listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("connection: {e}");
            }
        });
    }
    Ok(())
}

fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let limits = HandshakeLimits::default();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (request, upgrade) = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        match handshake::parse_request(&head, &limits) {
            Ok(None) => continue,
            Ok(Some(req)) => match req.websocket() {
                Ok(up) => break (req, up),
                Err(e) => return reject(&mut stream, &e),
            },
            Err(e) => return reject(&mut stream, &e),
        }
    };
    let mut resp = Vec::new();
    handshake::write_101(&upgrade, None, &mut resp);
    stream.write_all(&resp)?;

    // Autobahn sends messages up to 16 MiB (chapter 9).
    let mut conn = Connection::new(
        Role::Server,
        Limits {
            max_frame_size: 32 << 20,
            max_message_size: 32 << 20,
        },
    );
    let mut out = BytesMut::new();
    // Frames may follow the request head in the same read.
    let mut rest = head.split_off(request.head_len);
    let mut more = pump(&mut conn, &mut rest, &mut out);
    loop {
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if !more || matches!(conn.state(), State::CloseReceived | State::Closed) {
            // The server closes the TCP connection first (RFC 6455 §7.1.1).
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            let _ = conn.eof();
            return Ok(());
        }
        more = pump(&mut conn, &mut buf[..n], &mut out);
    }
}

/// Feed one read to the connection, echoing every message into `out`. `false` on a violation
/// (the close frame is already in `out`).
fn pump(conn: &mut Connection, mut data: &mut [u8], out: &mut BytesMut) -> bool {
    while !data.is_empty() {
        match conn.feed(data, out) {
            Ok(p) => {
                if let Some(Event::Message { opcode, payload }) = p.event {
                    // What the server engine does too: frame directly, no `send` needed.
                    encode_frame(out, true, opcode, None, payload);
                }
                let consumed = p.consumed;
                data = &mut data[consumed..];
            }
            Err(_) => return false,
        }
    }
    true
}

fn reject(stream: &mut TcpStream, e: &handshake::HandshakeError) -> std::io::Result<()> {
    let mut out = Vec::new();
    e.write_response(&mut out);
    stream.write_all(&out)
}
