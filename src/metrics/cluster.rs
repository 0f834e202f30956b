//! Broker metrics (several nodes): whether the broker is up, what crossed it, what was
//! dropped and why. Counted by the bridge and the link (never per delivery).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::cluster::Link;
use crate::cluster::envelope::Bad;

/// Appends the broker families to a `/metrics` page (nothing without `--broker`).
pub fn render(out: &mut String, link: Option<&Link>) {
    let Some(link) = link else {
        return;
    };
    let s = &link.stats;
    let labels = format!("node=\"{}\",broker=\"{}\"", link.node, link.kind.as_str());
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 10] = [
        (
            "ringcast_broker_up",
            "gauge",
            "1 while the broker is connected, 0 while it is lost.",
            u64::from(link.is_up()),
        ),
        (
            "ringcast_broker_published_total",
            "counter",
            "Messages sent to the broker.",
            get(&s.published),
        ),
        (
            "ringcast_broker_envelopes_out_total",
            "counter",
            "Broker messages sent (one per batch).",
            get(&s.envelopes_out),
        ),
        (
            "ringcast_broker_received_total",
            "counter",
            "Messages received from other nodes through the broker.",
            get(&s.received),
        ),
        (
            "ringcast_broker_dropped_total",
            "counter",
            "Messages that could not reach the broker (lost, --broker-max-pending, failed send): other nodes miss them.",
            get(&s.dropped),
        ),
        (
            "ringcast_broker_inbound_dropped_total",
            "counter",
            "Messages from the broker dropped on this node (a shard's inbox full, the client library's buffer full).",
            get(&s.inbound_dropped),
        ),
        (
            "ringcast_broker_disconnects_total",
            "counter",
            "Broker connections lost.",
            get(&s.disconnects),
        ),
        (
            "ringcast_broker_epoch_resets_total",
            "counter",
            "Topics given a new epoch after a broker outage.",
            get(&s.epoch_resets),
        ),
        (
            "ringcast_broker_subscriptions",
            "gauge",
            "Topics this node is subscribed to at the broker.",
            get(&s.subscribed),
        ),
        (
            "ringcast_broker_pending_bytes",
            "gauge",
            "Publications (frame bytes) waiting for the bridge.",
            s.pending_bytes.load(Ordering::Relaxed) as u64,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {v}"
        );
    }
    let name = "ringcast_broker_bad_messages_total";
    let _ = writeln!(
        out,
        "# HELP {name} Broker messages ringcast did not write (or another version wrote), dropped.\n# TYPE {name} counter"
    );
    for why in Bad::ALL {
        let v = s.bad.get(why as usize).map_or(0, get);
        let _ = writeln!(out, "{name}{{{labels},reason=\"{}\"}} {v}", why.as_str());
    }
}
