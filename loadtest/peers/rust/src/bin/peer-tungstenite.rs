//! Broadcast peer on tokio-tungstenite 0.30 (tokio `current_thread`).
//!
//! The idiomatic minimal broadcast server for this library: `accept_async_with_config`
//! for the handshake (any path), `StreamExt::split` into a sink and a stream,
//! one reader task and one writer task per connection, and one
//! `tokio::sync::broadcast` channel for everybody. Every message a client sends
//! goes to every other client; text stays text.
//!
//! Two choices make this a fair, best-effort peer rather than a strawman:
//!
//! - **`read_buffer_size(4096)`.** tungstenite 0.30 zero-fills its whole read
//!   buffer before every read (`in_buffer.resize(.., 0)` in
//!   `protocol/frame/mod.rs`), and the default buffer is 128 KiB. A first
//!   version with a per-connection `select!` over the broadcast channel and
//!   `ws.next()` spent 63% of its CPU in `memset`: every wake-up of the select
//!   re-armed a read that cleared 128 KiB. With 4 KiB the clearing is cheap, and
//!   per-connection memory drops from about 137 KiB to about 7 KiB.
//! - **Separate reader and writer tasks** instead of one `select!` loop, for the
//!   same reason: the writer's wake-ups never touch the read path.
//!
//! The writer `feed`s every message already waiting in the channel and then
//! `flush`es once, so that many frames share one `send()`.
//! Run: `PORT=9001 peer-tungstenite` (see `ringcast_peers` for the environment
//! variables).

use std::sync::atomic::Ordering::Relaxed;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ringcast_peers::{MAX_BATCH, STATS, Subscription};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const PEER: &str = "peer-tungstenite";

/// Read buffer per connection; see the module comment for why not the default 128 KiB.
const READ_BUFFER_SIZE: usize = 4096;

/// What travels on the broadcast channel. `Message::Text`/`Binary` hold
/// reference-counted bytes in 0.30, so cloning per subscriber copies no payload.
type Msg = (u64, Message);

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
                tokio::spawn(handle_client(stream, tx.clone()));
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

async fn handle_client(stream: TcpStream, tx: broadcast::Sender<Msg>) {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_SIZE);
    let ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(_) => {
            STATS.errors.fetch_add(1, Relaxed);
            return;
        }
    };
    STATS.connections.fetch_add(1, Relaxed);
    let id = ringcast_peers::next_conn_id();
    let sub = Subscription::new(tx.subscribe());
    let (sink, stream) = ws.split();
    let writer = tokio::spawn(write_loop(sink, id, sub));
    read_loop(stream, id, &tx).await;
    // tungstenite answers pings and close frames itself from the read side.
    // Once the client is gone there is nothing left to write.
    writer.abort();
    STATS.closed.fetch_add(1, Relaxed);
}

async fn read_loop(
    mut stream: SplitStream<WebSocketStream<TcpStream>>,
    id: u64,
    tx: &broadcast::Sender<Msg>,
) {
    // On a close frame tungstenite queues the reply; reading on until the
    // stream ends is what sends it (and completes the close handshake).
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(_) | Message::Binary(_) = msg {
            STATS.received.fetch_add(1, Relaxed);
            // No receivers is not an error for a broadcast.
            let _ = tx.send((id, msg));
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocketStream<TcpStream>, Message>,
    id: u64,
    mut sub: Subscription<Msg>,
) {
    let rx = &mut sub.rx;
    loop {
        let first = match rx.recv().await {
            Ok(m) => m,
            Err(RecvError::Lagged(n)) => {
                STATS.record_lag(n);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if write_batch(&mut sink, id, first, rx).await.is_err() {
            return;
        }
    }
}

/// Feeds `first` and whatever else is already queued (up to `MAX_BATCH`
/// messages), then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocketStream<TcpStream>, Message>,
    id: u64,
    first: Msg,
    rx: &mut broadcast::Receiver<Msg>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (mut from, mut msg) = first;
    let mut written = 0u64;
    for taken in 1.. {
        if from != id {
            sink.feed(msg).await?;
            written += 1;
        }
        if taken == MAX_BATCH {
            break;
        }
        (from, msg) = match try_next(rx) {
            Some(m) => m,
            None => break,
        };
    }
    sink.flush().await?;
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
