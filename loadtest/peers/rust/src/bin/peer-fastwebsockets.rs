//! Broadcast peer on fastwebsockets 0.10 (tokio `current_thread`, hyper upgrade).
//!
//! The idiomatic minimal broadcast server for this library, following its
//! README and `examples/echo_server_split.rs`:
//! - hyper's HTTP/1 server with `.with_upgrades()` and
//!   `fastwebsockets::upgrade::upgrade` for the handshake (any path);
//! - the socket split into a read half and a write half (`unstable-split`),
//!   with one reader task and one writer task per connection;
//! - one `tokio::sync::broadcast` channel for everybody: the reader publishes
//!   `(sender id, opcode, payload)`, every writer forwards what is not its own.
//!
//! The writer writes into a `BufWriter` and drains whatever else is already in
//! the channel before it flushes, so that one `send()` carries many frames.
//! Without it fastwebsockets issues one `write` per frame, and one core manages
//! only about 1 M `send()` calls per second: the peer would measure syscalls,
//! not the library.
//!
//! Control frames the reader must answer (pong, close reply) go to the writer
//! over a small per-connection channel, because only the writer owns the write
//! half. Run: `PORT=9001 peer-fastwebsockets` (see `ringcast_peers` for the
//! environment variables).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite, upgrade,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ringcast_peers::{MAX_BATCH, STATS, Subscription};
use tokio::io::{BufWriter, ReadHalf, WriteHalf};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::mpsc;

const PEER: &str = "peer-fastwebsockets";

/// What travels on the broadcast channel: cheap to clone (`Bytes` is reference-counted).
#[derive(Clone, Debug)]
struct Msg {
    from: u64,
    opcode: OpCode,
    payload: Bytes,
}

/// A control frame the reader owes the client (pong or close reply).
#[derive(Debug)]
struct Control {
    opcode: OpCode,
    payload: Vec<u8>,
}

type Io = TokioIo<Upgraded>;
type Reader = FragmentCollectorRead<ReadHalf<Io>>;
type Writer = WebSocketWrite<BufWriter<WriteHalf<Io>>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("{PEER}: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = ringcast_peers::listen_addr()?;
    // One thread: the benchmark pins each server to one core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = ringcast_peers::listen(addr)?;
        let (tx, capacity) = ringcast_peers::channel::<Msg>()?;
        println!("{PEER} listening on {addr} (broadcast capacity {capacity})");
        let accept_loop = async {
            loop {
                let stream = ringcast_peers::accept(&listener).await;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| server_upgrade(req, tx.clone()));
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    if conn.await.is_err() {
                        STATS.errors.fetch_add(1, Relaxed);
                    }
                });
            }
        };
        tokio::select! {
            r = ringcast_peers::shutdown_signal() => r?,
            () = accept_loop => {}
        }
        println!("{}", STATS.summary(PEER));
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

async fn server_upgrade(
    mut req: Request<Incoming>,
    tx: broadcast::Sender<Msg>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    // Subscribe now, so that the client gets everything sent after its 101.
    let sub = Subscription::new(tx.subscribe());
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => handle_client(ws, tx, sub).await,
            Err(_) => {
                STATS.errors.fetch_add(1, Relaxed);
            }
        }
    });
    Ok(response)
}

async fn handle_client(
    ws: fastwebsockets::WebSocket<Io>,
    tx: broadcast::Sender<Msg>,
    sub: Subscription<Msg>,
) {
    STATS.connections.fetch_add(1, Relaxed);
    let id = ringcast_peers::next_conn_id();
    // tokio's default 8 KiB BufWriter: about 120 frames of 64 bytes per send().
    let (read, write) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, BufWriter::new(w))
    });
    let reader = FragmentCollectorRead::new(read);
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(write, id, sub, ctrl_rx));
    read_loop(reader, id, tx, ctrl_tx).await;
    // The reader ends on close or error; the writer ends when the control
    // channel closes (after sending any close reply) or when its socket fails.
    let _ = writer.await;
    STATS.closed.fetch_add(1, Relaxed);
}

async fn read_loop(
    mut reader: Reader,
    id: u64,
    tx: broadcast::Sender<Msg>,
    ctrl: mpsc::UnboundedSender<Control>,
) {
    // Obligated sends (auto-pong, close reply) are handed to the writer task.
    let mut send_fn = |frame: Frame<'_>| {
        let res = ctrl
            .send(Control {
                opcode: frame.opcode,
                payload: frame.payload.to_vec(),
            })
            .map_err(|_| std::io::Error::other("writer gone"));
        async move { res }
    };
    loop {
        let frame = match reader.read_frame::<_, std::io::Error>(&mut send_fn).await {
            Ok(frame) => frame,
            Err(_) => return,
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                STATS.received.fetch_add(1, Relaxed);
                // No receivers is not an error for a broadcast.
                let _ = tx.send(Msg {
                    from: id,
                    opcode: frame.opcode,
                    payload: Bytes::copy_from_slice(&frame.payload),
                });
            }
            OpCode::Close => return,
            _ => {}
        }
    }
}

async fn write_loop(
    mut ws: Writer,
    id: u64,
    mut sub: Subscription<Msg>,
    mut ctrl: mpsc::UnboundedReceiver<Control>,
) {
    let rx = &mut sub.rx;
    loop {
        tokio::select! {
            // Control frames first: a close reply must not wait behind data.
            biased;
            c = ctrl.recv() => {
                let Some(c) = c else { return };
                let close = c.opcode == OpCode::Close;
                let frame = Frame::new(true, c.opcode, None, Payload::Owned(c.payload));
                if ws.write_frame(frame).await.is_err() || ws.flush().await.is_err() || close {
                    return;
                }
            }
            r = rx.recv() => {
                let first = match r {
                    Ok(m) => m,
                    Err(RecvError::Lagged(n)) => {
                        STATS.record_lag(n);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if write_batch(&mut ws, id, first, rx).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued (up to `MAX_BATCH`
/// messages), then flushes once.
async fn write_batch(
    ws: &mut Writer,
    id: u64,
    first: Msg,
    rx: &mut broadcast::Receiver<Msg>,
) -> Result<(), WebSocketError> {
    let mut m = first;
    let mut written = 0u64;
    for taken in 1.. {
        if m.from != id {
            let frame = Frame::new(true, m.opcode, None, Payload::Borrowed(&m.payload));
            ws.write_frame(frame).await?;
            written += 1;
        }
        if taken == MAX_BATCH {
            break;
        }
        m = match try_next(rx) {
            Some(m) => m,
            None => break,
        };
    }
    ws.flush().await?;
    STATS.delivered.fetch_add(written, Relaxed);
    Ok(())
}

/// The next message already in the channel, if any (counting lags on the way).
fn try_next(rx: &mut broadcast::Receiver<Msg>) -> Option<Msg> {
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Lagged(n)) => STATS.record_lag(n),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        }
    }
}
