//! The NATS publish ceiling with the client the bridge uses (async-nats, one connection,
//! buffered publishes, one flush at the end): what `scripts/bench-cluster` compares the
//! bridge's publish rate with. Debian ships nats-server without the `nats bench` tool.
//!
//! Usage: `cargo run --release --example nats_ceiling -- nats://127.0.0.1:4222 [MESSAGES] [SIZE]`

#[cfg(feature = "cluster")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let n: usize = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let size: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await?;
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        let start = std::time::Instant::now();
        for _ in 0..n {
            client
                .publish("ringcast.t.ceiling", payload.clone())
                .await?;
        }
        client.flush().await?;
        let s = start.elapsed().as_secs_f64();
        println!(
            "nats ceiling: {n} messages of {size} B in {s:.3} s: {:.0} msg/s",
            n as f64 / s
        );
        Ok(())
    })
}

#[cfg(not(feature = "cluster"))]
fn main() {
    eprintln!("built without the `cluster` feature");
}
