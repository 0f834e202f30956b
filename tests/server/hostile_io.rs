//! Hostile-client regression tests (the limits are listed in docs/DESIGN.md, "Bounds against a
//! hostile client"): see each test's doc.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use crate::both;
#[allow(unused_imports)]
use crate::util::*;

/// `n` client frames (FIN, `opcode`, masked with a zero key, so the payload goes as is).
fn frames(opcode: u8, payload_len: usize, n: usize) -> Vec<u8> {
    let mut one = vec![0x80 | opcode];
    if payload_len < 126 {
        one.push(0x80 | payload_len as u8);
    } else {
        one.push(0x80 | 126);
        one.extend_from_slice(&(payload_len as u16).to_be_bytes());
    }
    one.extend_from_slice(&[0, 0, 0, 0]);
    one.extend(std::iter::repeat_n(b'p', payload_len));
    one.repeat(n)
}

/// Writes `chunk` again and again until `total` bytes went or `deadline` passes (the
/// server may stop reading: that is the backpressure under test); returns the bytes
/// written and where in `chunk` it stopped (the rest of that chunk must still be written to
/// end on a frame boundary).
fn blast(s: &mut TcpStream, chunk: &[u8], total: usize, deadline: Instant) -> (usize, usize) {
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut sent, mut pos) = (0, 0);
    while sent < total && Instant::now() < deadline {
        match s.write(&chunk[pos..]) {
            Ok(n) => {
                sent += n;
                pos = (pos + n) % chunk.len();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (sent, pos)
}

both!(ping_flood_memory_is_bounded, |io| {
    // A client that pings and never reads: the bug queued one pong per ping past the send
    // queue limit (64 MiB of pings grew RSS by about 100 MiB). Now pongs coalesce once the
    // queue is backlogged and reading pauses, so RSS stays near its start.
    let srv = Server::start(io, &["--shards", "1"]);
    let mut c = srv.ws("/ws/pings");
    let base = srv.rss();
    let chunk = frames(0x9, 125, 8000); // ~1 MiB of pings
    let (sent, pos) = blast(
        &mut c.stream,
        &chunk,
        64 << 20,
        Instant::now() + Duration::from_secs(4),
    );
    std::thread::sleep(Duration::from_millis(300));
    let grew = srv.peak_rss().saturating_sub(base);
    eprintln!(
        "{io}: sent {} MiB of pings, peak RSS +{} KiB",
        sent >> 20,
        grew >> 10
    );
    assert!(
        grew < 24 << 20,
        "RSS grew by {} MiB for {} MiB of pings",
        grew >> 20,
        sent >> 20
    );
    // Still a working connection: the pending pong and a sentinel arrive once it reads.
    let mut other = srv.ws("/ws/pings");
    other.text("sentinel");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match c.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Some(Msg::Text(t)) => {
                assert_eq!(t, "sentinel");
                break;
            }
            Some(Msg::Eof | Msg::Close(..)) | None => panic!("no sentinel after the flood"),
            Some(_) => {}
        }
    }
    // Reading resumed once its queue drained: its next message reaches the other client.
    let mut drain = c.stream.try_clone().unwrap();
    let drainer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        drain
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    // Blocking: the rest of the pings go first.
    c.stream.set_write_timeout(None).unwrap();
    c.stream.write_all(&chunk[pos..]).unwrap();
    c.text("after the flood");
    loop {
        match other.recv_timeout(Duration::from_secs(5)) {
            Some(Msg::Text(t)) if t == "after the flood" => break,
            Some(Msg::Text(_)) => {}
            m => panic!(
                "reading never resumed: {m:?}; pauses {}; log tail: {}",
                srv.get("/metrics")
                    .lines()
                    .filter(|l| l.contains("pauses_total{"))
                    .collect::<Vec<_>>()
                    .join(" "),
                srv.log()
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    drop(c);
    let _ = drainer.join();
});

/// Server process CPU time and its log's count of accept-failure lines.
fn accept_lines(srv: &Server) -> usize {
    srv.log().matches("accept failed").count()
}

both!(accept_at_fd_limit_backs_off_and_recovers, |io| {
    // At EMFILE the io_uring driver re-armed the failed multishot accept before every wait
    // (1.75 s of CPU in 2 s, a million log lines); epoll dropped the edge, leaving the
    // waiting connections in the backlog until another one arrived.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"ulimit -n 64; exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_ringcast"),
    ]);
    let srv = Server::start_with(cmd, io, &["--shards", "1", "--handshake-timeout", "30s"]);
    let mut conns: Vec<TcpStream> = (0..90)
        .map(|_| TcpStream::connect(srv.addr).expect("connect"))
        .collect();
    // The last ones wait in the backlog with their request already sent.
    for s in conns.iter_mut().rev().take(10) {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (cpu0, lines0) = (srv.cpu_time(), accept_lines(&srv));
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, lines) = (srv.cpu_time() - cpu0, accept_lines(&srv) - lines0);
    eprintln!("{io}: at the fd limit: {cpu:?} CPU in 2 s, {lines} accept lines");
    assert!(
        cpu < Duration::from_millis(300),
        "spinning at EMFILE: {cpu:?} in 2 s"
    );
    assert!(lines <= 3, "{lines} accept-failure lines in 2 s");
    assert!(lines0 + lines >= 1, "the fd limit was never reached");
    // Free descriptors: the waiting connections must be served promptly.
    drop(conns.drain(..40));
    let start = Instant::now();
    for mut s in conns.drain(..).rev().take(10) {
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "a waiting connection was not served within {:?}",
            start.elapsed()
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "waiting connections served after {:?}",
        start.elapsed()
    );
});

both!(fast_writer_does_not_own_the_loop, |io| {
    // One client blasting large publishes: on epoll its reads filled whole turns (the
    // per-socket share was re-read in the same turn), the batch grew (+260 MiB to +1 GiB)
    // and /health took up to 1.5 s.
    let srv = Server::start(io, &["--shards", "1"]);
    let sub = srv.ws("/ws/blast");
    let mut sub_stream = sub.stream.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        sub_stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok(n) = sub_stream.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let mut publisher = srv.ws("/ws/blast");
    let base = srv.rss();
    let end = Instant::now() + Duration::from_secs(2);
    let mut pstream = publisher.stream.try_clone().unwrap();
    let blaster = std::thread::spawn(move || {
        let chunk = frames(0x2, 60_000, 16);
        let (sent, pos) = blast(&mut pstream, &chunk, usize::MAX, end);
        pstream.set_write_timeout(None).unwrap();
        pstream.write_all(&chunk[pos..]).unwrap();
        sent
    });
    let mut worst = Duration::ZERO;
    std::thread::sleep(Duration::from_millis(100));
    while Instant::now() < end {
        let t = Instant::now();
        let r = srv.get("/health");
        worst = worst.max(t.elapsed());
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = blaster.join().unwrap();
    let grew = srv.peak_rss().saturating_sub(base);
    eprintln!(
        "{io}: blasted {} MiB; worst /health {worst:?}; peak RSS +{} MiB",
        sent >> 20,
        grew >> 20
    );
    publisher.close(1000);
    drop(sub);
    let _ = reader.join();
    assert!(
        worst < Duration::from_millis(300),
        "worst /health {worst:?}"
    );
    assert!(grew < 64 << 20, "peak RSS grew by {} MiB", grew >> 20);
});
