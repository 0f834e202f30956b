//! `blast`, the floor server: accepts subscribers, completes the WebSocket
//! handshake with `ringcast::proto::handshake`, and has the io_uring send loop
//! ([`crate::uring::blast`]) write pre-built batches of stamped frames to every
//! connection as fast as the kernel takes them. Payloads use the generator's
//! stamp with publisher id `BLAST_FLAG | frames_per_batch` and sequence = index
//! in the batch, so `run --publishers 0` checks order and gaps per connection.
//!
//! This file owns the listener, the handshake thread and the batch template;
//! the unsafe send loop lives in the uring module.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringcast::proto::frame::{OpCode, encode_frame};
use ringcast::proto::handshake::{HandshakeLimits, parse_request, write_101};

use crate::cli::BlastArgs;
use crate::payload::{BLAST_FLAG, Stamp, fill_template, write_stamp};
use crate::uring::blast::{BlastStats, Template};

/// Builds the batch: as many frames as fit in `batch_bytes` (at least one).
pub fn build_template(size: usize, binary: bool, batch_bytes: usize) -> Result<Template, String> {
    let mut payload = vec![0u8; size];
    fill_template(&mut payload)?;
    let mut one = Vec::new();
    let opcode = if binary { OpCode::Binary } else { OpCode::Text };
    encode_frame(&mut one, true, opcode, None, &payload);
    let frame_len = one.len();
    let hdr_len = frame_len - size;
    let k = (batch_bytes / frame_len).clamp(1, 0x7fff_ffff);
    let mut bytes = Vec::with_capacity(k * frame_len);
    let mut payload_offsets = Vec::with_capacity(k);
    for i in 0..k {
        write_stamp(
            &mut payload,
            Stamp {
                publisher: BLAST_FLAG | k as u32,
                seq: i as u64,
                sent_ns: crate::sys::now_ns(),
            },
        );
        let off = bytes.len();
        encode_frame(&mut bytes, true, opcode, None, &payload);
        payload_offsets.push(off + hdr_len);
    }
    Ok(Template {
        bytes,
        payload_offsets,
    })
}

/// A running blast server (in-process handle, used by `main` and the tests).
#[derive(Debug)]
pub struct Blast {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<BlastStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<io::Result<()>>>,
}

impl Blast {
    /// Binds, spawns the accept/handshake thread and the io_uring send thread.
    pub fn start(args: &BlastArgs) -> Result<Blast, String> {
        if !args.allow_remote && !crate::target::is_loopback(args.listen.ip()) {
            return Err(format!(
                "--listen {}: not a loopback address; pass --allow-remote to listen elsewhere",
                args.listen
            ));
        }
        crate::uring::probe().map_err(|e| format!("blast needs io_uring: {e}"))?;
        let _ = crate::sys::raise_nofile_limit();
        let template = build_template(args.size, args.binary, args.batch_bytes)?;
        let listener =
            TcpListener::bind(args.listen).map_err(|e| format!("bind {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        crate::sys::set_backlog(&listener, 4096).map_err(|e| format!("listen backlog: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(BlastStats::default());
        let (tx, rx) = mpsc::channel::<TcpStream>();
        let until = Instant::now() + args.max_duration;
        let max_conns = args.max_connections as u64;
        let idle = args.idle;
        let s1 = Arc::clone(&stop);
        let st1 = Arc::clone(&stats);
        let acceptor = thread::Builder::new()
            .name("blast-accept".into())
            .spawn(move || accept_loop(listener, tx, s1, st1, max_conns, until))
            .map_err(|e| e.to_string())?;
        let s2 = Arc::clone(&stop);
        let st2 = Arc::clone(&stats);
        let sender = thread::Builder::new()
            .name("blast-send".into())
            .spawn(move || crate::uring::blast::run(&template, rx, s2, st2, until, idle))
            .map_err(|e| e.to_string())?;
        Ok(Blast {
            addr,
            stats,
            stop,
            threads: vec![acceptor, sender],
        })
    }

    /// Whether both threads are still running.
    pub fn running(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops and joins (sends close frames to connected clients first).
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("blast thread panicked".into()),
            }
        }
        Ok(())
    }
}

fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<TcpStream>,
    stop: Arc<AtomicBool>,
    stats: Arc<BlastStats>,
    max_conns: u64,
    until: Instant,
) -> io::Result<()> {
    let mut idle_polls = 0u32;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        match listener.accept() {
            Ok((stream, _)) => {
                idle_polls = 0;
                if stats.conns.load(Ordering::Relaxed) >= max_conns {
                    continue; // dropped: over --max-connections
                }
                if let Ok(s) = handshake(stream)
                    && tx.send(s).is_err()
                {
                    return Ok(()); // sender gone
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Poll fast while connections arrive, slowly once they stop.
                idle_polls = idle_polls.saturating_add(1);
                thread::sleep(Duration::from_millis(if idle_polls > 200 { 20 } else { 1 }));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => thread::sleep(Duration::from_millis(10)), // EMFILE and friends: back off
        }
    }
    Ok(())
}

/// Server side of the upgrade, blocking with a short timeout; any error ends the connection.
fn handshake(stream: TcpStream) -> io::Result<TcpStream> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_nodelay(true)?;
    let limits = HandshakeLimits::default();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let req = loop {
        let n = (&stream).read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, &limits) {
            Ok(Some(r)) => break r,
            Ok(None) => {}
            Err(e) => {
                let mut out = Vec::new();
                e.write_response(&mut out);
                let _ = (&stream).write_all(&out);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.reason()));
            }
        }
    };
    let upgrade = match req.websocket() {
        Ok(u) => u,
        Err(e) => {
            let mut out = Vec::new();
            e.write_response(&mut out);
            let _ = (&stream).write_all(&out);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.reason()));
        }
    };
    let mut out = Vec::with_capacity(256);
    write_101(&upgrade, None, &mut out);
    (&stream).write_all(&out)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// `ringcast-loadtest blast`: serve until `--max-duration`, printing a line per second.
pub fn main(args: &BlastArgs) -> Result<(), String> {
    let blast = Blast::start(args)?;
    let frame_len = build_template(args.size, args.binary, 1)?.bytes.len();
    let per_batch = (args.batch_bytes / frame_len).max(1);
    println!(
        "blast listening on {} (frame {} bytes, {} frames per send, io: io_uring)",
        blast.addr, frame_len, per_batch
    );
    let _ = io::stdout().flush();
    let mut last = 0u64;
    if args.idle {
        println!("blast: --idle: connections are accepted and upgraded, nothing is sent");
    }
    while blast.running() {
        thread::sleep(Duration::from_secs(1));
        let bytes = blast.stats.bytes.load(Ordering::Relaxed);
        eprintln!(
            "blast: conns {}  frames/s {:.2}M  errors {}",
            blast.stats.conns.load(Ordering::Relaxed),
            (bytes - last) as f64 / frame_len as f64 / 1e6,
            blast.stats.errors.load(Ordering::Relaxed)
        );
        last = bytes;
    }
    blast.stop()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::payload::decode;
    use ringcast::proto::frame::FrameHeader;

    #[test]
    fn template_frames_carry_cyclic_stamps() {
        let t = build_template(64, false, 1000).unwrap();
        let mut pos = 0;
        let mut i = 0u64;
        while pos < t.bytes.len() {
            let (h, hl) = FrameHeader::parse(&t.bytes[pos..]).unwrap().unwrap();
            assert_eq!(h.opcode, OpCode::Text);
            let p = &t.bytes[pos + hl..pos + hl + h.payload_len as usize];
            let st = decode(p).unwrap();
            assert_eq!(st.publisher, BLAST_FLAG | 15);
            assert_eq!(st.seq, i);
            assert_eq!(t.payload_offsets[i as usize], pos + hl);
            pos += hl + h.payload_len as usize;
            i += 1;
        }
        assert_eq!(i, 15); // 1000 / 66
        assert!(build_template(10, false, 1000).is_err());
        let mut one = build_template(64, true, 1).unwrap();
        assert_eq!(one.payload_offsets.len(), 1);
        let o = one.payload_offsets[0];
        crate::payload::write_time(&mut one.bytes[o..], 77);
        assert_eq!(decode(&one.bytes[o..]).unwrap().sent_ns, 77);
    }
}
