#!/usr/bin/env python3
"""Verdicts, summary table and chart for scripts/bench records (standard library only).

    chart-bench.py verdict RUN.json --p99-ms 100 [--min-delivered 0.999]
        One line about a `ringcast-loadtest run` result, loss first; exit 0 if the
        rate was sustained, 1 if not ("behind" or "lossy"), 2 if the file is
        missing or unreadable. Sustained means all of:
          - delivered / (delivered + lost) >= min-delivered (the only tolerance:
            at the default 0.999, up to 0.1% of the deliveries may be missing at
            the end of a run, messages still in flight when the drain ends);
          - p99 <= the limit;
          - nothing else went wrong, with no tolerance at all: publish_skipped,
            publish_failed, errors, duplicated, out_of_order all 0, the offsets
            check passed (no offset_failure; no offset dups, no offset gaps
            unless the run allowed them), and something was published when
            the run had publishers.
        A run that skipped or failed publishes is never sustained, however well
        what did get published was delivered.

    chart-bench.py --self-test
        Checks the verdict against made-up results (run by scripts/test).

    chart-bench.py cross-shard RUN.json
        One line about the server metrics a run scraped around its window
        (`--metrics-url`): the share of deliveries whose message came over the bus
        from another shard, where the server exposes what that needs, else "n/a"
        with the counters it does have. Always exits 0 (a missing metric is n/a).

    chart-bench.py report RECORD_DIR
        Reads RECORD_DIR/meta.json, RECORD_DIR/runs.jsonl and the raw JSON files
        they name; writes RECORD_DIR/README.md (summary tables with ratios to the
        best peer and to the blast floor, then every run) and RECORD_DIR/chart.svg.

The generator's JSON keys are the ones loadtest/README.md ("What it measures") lists. Missing
keys show as "?" rather than failing, so that a record is still written when the
generator's output changes; the raw files are kept next to the table anyway.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

# Display order and colours. "blast" is the floor, not a competitor.
SERVERS = ["ringcast-uring", "ringcast-epoll", "ringcast-delay", "ringcast-default", "fastwebsockets", "tungstenite", "node-ws", "blast"]
PEERS = ["fastwebsockets", "tungstenite", "node-ws"]
RINGCAST = ["ringcast-uring", "ringcast-epoll", "ringcast-delay", "ringcast-default"]
COLOURS = {
    "ringcast-uring": "#d62728",
    "ringcast-epoll": "#ff9896",
    "ringcast-delay": "#8c1515",
    "ringcast-default": "#e377c2",
    "fastwebsockets": "#1f77b4",
    "tungstenite": "#2ca02c",
    "node-ws": "#9467bd",
    "blast": "#7f7f7f",
}


# ---------------------------------------------------------------- reading runs


def load_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def get(d: dict | None, *keys, default=None):
    """d[k1][k2]... or default when any level is missing or not a dict."""
    cur = d
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return default
        cur = cur[k]
    return cur


def num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class Run:
    """One generator result, with the derived figures the tables need."""

    def __init__(self, entry: dict, data: dict | None):
        self.entry = entry
        self.data = data
        self.delivered_per_s = num(get(data, "delivered_per_s"))
        self.expected_per_s = num(get(data, "expected_per_s"))
        p99 = num(get(data, "latency_us", "p99"))
        p50 = num(get(data, "latency_us", "p50"))
        self.p99_ms = p99 / 1000 if p99 is not None else None
        self.p50_ms = p50 / 1000 if p50 is not None else None
        self.lost = num(get(data, "lost"))
        self.server_pct = num(get(data, "cpu", "server_pct"))
        self.generator_pct = num(get(data, "cpu", "generator_pct"))
        self.generator_limited = bool(get(data, "generator_limited", default=False))
        self.counters: dict[str, int] = {}

    @property
    def delivered_ratio(self) -> float | None:
        """Fraction of the expected deliveries that arrived, over the whole run.

        From the totals (delivered / (delivered + lost)) when the result has them:
        the per-second rates are taken over the measured window only, so a message
        published near its end and delivered during the drain moves the rate
        ratio by a fraction of a percent without anything being lost. A server that
        falls behind shows up in the p99 criterion (and in `lost` once it is
        further behind than the drain)."""
        delivered, lost = num(get(self.data, "delivered")), self.lost
        if delivered is not None and lost is not None and delivered + lost > 0:
            return delivered / (delivered + lost)
        d, e = self.delivered_per_s, self.expected_per_s
        if d is None or e is None:
            return None
        if e <= 0:
            return 1.0 if d >= 0 else None
        return d / e

    @property
    def notes(self) -> list[str]:
        """The generator's own remarks, plus duplicates or reordering if any."""
        out = [str(n) for n in (get(self.data, "notes") or []) if n]
        for key in ("duplicated", "out_of_order"):
            v = num(get(self.data, key))
            if v:
                # A broken guarantee, wherever it shows up: bold, not a footnote.
                out.append(f"**{key.replace('_', '-')}: {v:.0f} (ordering guarantee broken)**")
        return out

    @property
    def cpu_ns_per_delivery(self) -> float | None:
        if self.server_pct is None or not self.delivered_per_s:
            return None
        return self.server_pct / 100 * 1e9 / self.delivered_per_s

    def faults(self) -> list[str]:
        """What went wrong besides the delivered ratio and latency: each one alone means
        the run was not sustained (no tolerance)."""
        d = self.data
        why = []
        for key, what in (
            ("publish_skipped", "publishes skipped"),
            ("publish_failed", "publishes failed"),
            ("errors", "errors"),
            ("duplicated", "duplicated messages"),
            ("out_of_order", "out-of-order messages"),
            ("offset_dups", "offset dups/reorders"),
        ):
            v = num(get(d, key))
            if v:
                why.append(f"{what}: {v:.0f}")
        gaps = num(get(d, "offset_gaps"))
        if gaps and not get(d, "offset_gaps_allowed", default=False):
            why.append(f"offset gaps: {gaps:.0f}")
        if get(d, "offset_failure"):
            why.append(f"offsets check failed: {get(d, 'offset_failure')}")
        if (num(get(d, "publishers")) or 0) > 0 and num(get(d, "published")) == 0:
            why.append("nothing was published")
        return why

    def sustained(self, p99_limit_ms: float, min_delivered: float) -> tuple[bool, str]:
        ratio = self.delivered_ratio
        faults = self.faults()
        loss = (
            f"lost {fmt_num(self.lost)}, skipped {fmt_num(num(get(self.data, 'publish_skipped')))}, "
            f"failed {fmt_num(num(get(self.data, 'publish_failed', default=0)))}, "
            f"errors {fmt_num(num(get(self.data, 'errors')))}"
        )
        if ratio is None or self.p99_ms is None:
            return False, "lossy: no delivery figures in the result — " + loss
        why = []
        if ratio < min_delivered:
            why.append(f"delivered {ratio * 100:.2f}% < {min_delivered * 100:g}%")
        if self.p99_ms > p99_limit_ms:
            why.append(f"p99 {self.p99_ms:.1f} ms > {p99_limit_ms:g} ms")
        summary = (
            f"{loss} ({ratio * 100:.2f}% delivered); "
            f"delivered {fmt_rate(self.delivered_per_s)}/s of {fmt_rate(self.expected_per_s)}/s, "
            f"p99 {self.p99_ms:.2f} ms, server CPU {fmt_pct(self.server_pct)}, "
            f"generator CPU {fmt_pct(self.generator_pct)}"
            + (" [generator-limited]" if self.generator_limited else "")
        )
        if faults:
            return False, "lossy: " + "; ".join(faults + why) + " — " + summary
        if why:
            return False, "behind: " + "; ".join(why) + " — " + summary
        return True, "sustained — " + summary

    def recorded_sustained(self) -> bool:
        """The record says sustained, and its raw result agrees under today's verdict
        (a record written before the verdict counted skipped publishes and errors may
        call a lossy run sustained)."""
        if self.entry.get("verdict") != "sustained":
            return False
        if self.data is None:
            return True
        p99 = num(self.entry.get("p99_limit_ms"))
        return self.sustained(p99 if p99 is not None else math.inf, 0.999)[0]


# ---------------------------------------------------------------- formatting


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "?"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def fmt_pct(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}%"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v:.2f} ms" if v < 10 else f"{v:.0f} ms"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "?"
    return f"{v:,.0f}{unit}"


# ---------------------------------------------------------------- server metrics

# The counter that makes the cross-shard share exact: deliveries (one per subscriber
# per message) of messages that came over the bus from another shard. ringcast has it
# since the pub/sub rewrite (summed over shards); older servers do not, and their share
# is n/a. Per shard when the counters carry a `shard` label.
BUS_DELIVERED = "ringcast_bus_delivered_messages_total"
BUS_DELIVERED_NAMES = (BUS_DELIVERED, "ringcast_bus_messages_delivered_total")


def series_name(key: str) -> str:
    return key.split("{", 1)[0]


def label(key: str, name: str) -> str | None:
    """The value of label `name` in a `metric{a="x",b="y"}` key, or None."""
    if "{" not in key:
        return None
    for part in key[key.index("{") + 1 : key.rindex("}")].split(","):
        k, _, v = part.partition("=")
        if k.strip() == name:
            return v.strip().strip('"')
    return None


class Metrics:
    """Deltas of the server's metrics over a run's window (`server_metrics` in its JSON)."""

    def __init__(self, data: dict | None):
        m = get(data, "server_metrics")
        self.ok = isinstance(m, dict) and isinstance(m.get("before"), dict) and isinstance(m.get("after"), dict)
        self.before = m["before"] if self.ok else {}
        self.after = m["after"] if self.ok else {}
        self.secs = num(get(m, "interval_s")) if self.ok else None

    def has(self, name: str) -> bool:
        return any(series_name(k) == name for k in self.after)

    def delta(self, name: str) -> float | None:
        """Growth of a counter over the window, summed over its series; None when absent."""
        keys = [k for k in self.after if series_name(k) == name]
        if not keys:
            return None
        return sum(self.after[k] - (num(self.before.get(k)) or 0.0) for k in keys)

    def per_shard(self, name: str) -> dict[str, float]:
        """Growth per `shard` label ({} when the metric has no shard label)."""
        out: dict[str, float] = {}
        for k, v in self.after.items():
            shard = label(k, "shard")
            if series_name(k) == name and shard is not None:
                out[shard] = out.get(shard, 0.0) + v - (num(self.before.get(k)) or 0.0)
        return out

    def rate(self, v: float | None) -> float | None:
        return v / self.secs if v is not None and self.secs else None


def cross_shard(data: dict | None) -> dict:
    """What the metrics say about the cross-shard path; every figure None when unknown."""
    m = Metrics(data)
    out = {"scraped": m.ok, "share": None, "share_per_shard": {}, "why": ""}
    if not m.ok:
        out["why"] = "no server metrics in the result (not ringcast, or a scrape failed: see its notes)"
        return out
    msgs_in, msgs_out = m.delta("ringcast_messages_in_total"), m.delta("ringcast_messages_out_total")
    # Renamed from ringcast_bus_messages_in_total (it counts batches); older binaries and
    # records carry the old name.
    bus_name = "ringcast_bus_batches_in_total"
    if m.delta(bus_name) is None:
        bus_name = "ringcast_bus_messages_in_total"
    bus_in, bus_dropped = m.delta(bus_name), m.delta("ringcast_bus_dropped_messages_total")
    out.update(
        in_per_s=m.rate(msgs_in),
        out_per_s=m.rate(msgs_out),
        bus_batches_per_s=m.rate(bus_in),
        bus_dropped=bus_dropped,
        bus_batches_per_shard={k: m.rate(v) for k, v in m.per_shard(bus_name).items()},
        out_per_shard={k: m.rate(v) for k, v in m.per_shard("ringcast_messages_out_total").items()},
        messages_per_batch=(msgs_in / bus_in) if msgs_in and bus_in else None,
    )
    name = next((n for n in BUS_DELIVERED_NAMES if m.has(n)), BUS_DELIVERED)
    via_bus = m.delta(name)
    if via_bus is not None and msgs_out:
        out["share"] = via_bus / msgs_out
        outs = m.per_shard("ringcast_messages_out_total")
        for shard, v in m.per_shard(name).items():
            if outs.get(shard):
                out["share_per_shard"][shard] = v / outs[shard]
    elif via_bus is None:
        out["why"] = f"the server exposes no {BUS_DELIVERED} (a build older than the pub/sub rewrite)"
    else:
        out["why"] = "no deliveries in the window"
    return out


def fmt_share(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def fmt_per_shard(d: dict) -> str:
    return ", ".join(f"shard {k} {fmt_rate(v)}/s" for k, v in sorted(d.items())) if d else ""


def cross_shard_line(data: dict | None) -> str:
    c = cross_shard(data)
    if not c["scraped"]:
        return f"cross-shard share n/a: {c['why']}"
    line = f"cross-shard share {fmt_share(c['share'])}"
    if c["share_per_shard"]:
        line += " (" + ", ".join(f"shard {k} {fmt_share(v)}" for k, v in sorted(c["share_per_shard"].items())) + ")"
    if c["why"]:
        line += f" ({c['why']})"
    line += (
        f"; server: messages in {fmt_rate(c['in_per_s'])}/s, out {fmt_rate(c['out_per_s'])}/s, "
        f"bus batches received {fmt_rate(c['bus_batches_per_s'])}/s"
    )
    if c["bus_batches_per_shard"]:
        line += f" ({fmt_per_shard(c['bus_batches_per_shard'])})"
    if c["messages_per_batch"]:
        line += f", {c['messages_per_batch']:.1f} messages published per bus batch"
    if c["bus_dropped"]:
        line += f", bus dropped {fmt_num(c['bus_dropped'])}"
    return line


def cmd_cross_shard(args: argparse.Namespace) -> int:
    print(cross_shard_line(load_json(Path(args.file))))
    return 0


# ---------------------------------------------------------------- verdict


def cmd_verdict(args: argparse.Namespace) -> int:
    data = load_json(Path(args.file))
    if data is None:
        print(f"no result: {args.file} is missing or not a JSON object")
        return 2
    ok, line = Run({}, data).sustained(args.p99_ms, args.min_delivered)
    print(line)
    return 0 if ok else 1


# ---------------------------------------------------------------- report


def server_counters(rec: Path, entry: dict) -> dict[str, int]:
    """The `key=value` counters a peer prints on exit (`... stats: lagged_messages=12 ...`)."""
    log = entry.get("server_log")
    if not log:
        return {}
    try:
        text = (rec / log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    counters: dict[str, int] = {}
    for line in text.splitlines():
        if " stats: " not in line:
            continue
        for pair in line.split(" stats: ", 1)[1].split():
            key, _, value = pair.partition("=")
            if value.isdigit():
                counters[key] = int(value)
    return counters


def counter_notes(counters: dict[str, int]) -> list[str]:
    out = []
    if counters.get("lagged_messages"):
        out.append(f"broadcast channel dropped {counters['lagged_messages']:,} messages (lagged)")
    if counters.get("max_buffered_bytes"):
        out.append(f"largest send backlog {counters['max_buffered_bytes'] / 1024:,.0f} KiB")
    return out


def read_record(rec: Path) -> tuple[dict, list[Run]]:
    meta = load_json(rec / "meta.json") or {}
    runs = []
    try:
        lines = (rec / "runs.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        # Labels such as "1" arrive as numbers from runs.jsonl; "4a" as strings.
        entry["scenario"] = str(entry.get("scenario", "?"))
        data = load_json(rec / entry["json"]) if entry.get("json") else None
        run = Run(entry, data)
        run.counters = server_counters(rec, entry)
        runs.append(run)
    return meta, runs


def by(runs: list[Run], **match) -> list[Run]:
    return [r for r in runs if all(r.entry.get(k) == v for k, v in match.items())]


def ordered_servers(runs: list[Run]) -> list[str]:
    seen = {r.entry.get("server") for r in runs}
    return [s for s in SERVERS if s in seen] + sorted(s for s in seen if s not in SERVERS and s)


def scenarios_in(runs: list[Run]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for r in runs:
        key = (r.entry.get("scenario", "?"), r.entry.get("title", ""))
        if key not in out:
            out.append(key)
    return out


def best_sustained(runs: list[Run]) -> tuple[Run | None, Run | None]:
    """(highest sustained step, first step that fell behind) of one server's sweep."""
    best = None
    behind = None
    for r in runs:
        if r.recorded_sustained():
            if best is None or (r.delivered_per_s or 0) > (best.delivered_per_s or 0):
                best = r
        elif r.entry.get("verdict") == "behind" and behind is None:
            behind = r
    return best, behind


def group_label(scen: str, e: dict) -> str:
    """Short x-axis label of a scenario in the chart."""
    subs = e.get("subscribers")
    size = e.get("size")
    parts = [f"S{scen}"]
    if isinstance(subs, (int, float)):
        parts.append(f"{subs / 1000:g}k subs")
    if isinstance(e.get("topics"), (int, float)) and e["topics"] > 1:
        parts.append(f"{e['topics']:,} topics")
    if isinstance(size, (int, float)):
        parts.append(f"{size / 1024:g} KiB" if size >= 1024 else f"{size} B")
    return " · ".join(parts)


def sweep_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    servers = ordered_servers(runs)
    first = runs[0].entry
    label = group_label(scen, first)
    p99_limit = first.get("p99_limit_ms")
    out.append(f"## {scen}: {title}\n")
    out.append(
        f"{first.get('subscribers', '?')} subscribers, {first.get('topics', '?')} topic(s), "
        f"{first.get('publishers', '?')} publisher(s), {first.get('size', '?')}-byte messages. "
        f"Sustained = at least 99.9% delivered and p99 ≤ {p99_limit} ms; the rate is stepped up "
        "until delivery falls behind, and the figure is the delivered rate of the highest sustained step.\n"
    )
    floor_runs = [r for r in by(runs, server="blast") if r.entry.get("status") == "ok"]
    floor = max((r.delivered_per_s or 0 for r in floor_runs), default=0) or None

    best: dict[str, Run | None] = {}
    behind: dict[str, Run | None] = {}
    for s in servers:
        if s == "blast":
            continue
        best[s], behind[s] = best_sustained(by(runs, server=s))
    peer_values = {s: best[s].delivered_per_s for s in PEERS if best.get(s) and best[s].delivered_per_s}
    best_peer = max(peer_values, key=lambda s: peer_values[s]) if peer_values else None

    closed = {r.entry.get("server"): r for r in runs if r.entry.get("verdict") == "closed-loop" and r.data}
    closed_best = max((r.delivered_per_s or 0 for s, r in closed.items() if s in PEERS), default=0) or None
    out.append(
        "| server | max sustained deliveries/s | × best peer | × floor | p50 / p99 there | server CPU there "
        "| CPU ns/delivery at 0.1 M / 1 M | fell behind at | notes |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for s in servers:
        srv_runs = by(runs, server=s)
        notes = sorted({r.entry.get("note", "") for r in srv_runs if r.entry.get("note")})
        if s == "blast":
            fr = floor_runs[0] if floor_runs else None
            out.append(
                f"| blast (floor) | {fmt_rate(floor)} | | 1.00× | "
                f"{fmt_ms(fr.p50_ms if fr else None)} / {fmt_ms(fr.p99_ms if fr else None)} | "
                f"{fmt_pct(fr.server_pct if fr else None)} | | | {'; '.join(notes)} |"
            )
            if floor:
                # Not its p99: blast writes as fast as the kernel takes frames, so
                # its latency is queueing in full socket buffers, not a figure to compare.
                chart.setdefault("rate", {}).setdefault(label, {})[s] = floor
            continue
        b, fb = best.get(s), behind.get(s)
        if all(r.entry.get("status") in ("n/a", "skipped") for r in srv_runs):
            out.append(f"| {s} | n/a | | | | | | | {'; '.join(notes)} |")
            continue
        value = b.delivered_per_s if b else None
        vs_peer = value / peer_values[best_peer] if value and best_peer else None
        vs_floor = value / floor if value and floor else None
        cpu_at = []
        for target in (100_000, 1_000_000):
            hit = [r for r in srv_runs if r.entry.get("target_deliveries_per_s") == target]
            cpu_at.append(f"{hit[0].cpu_ns_per_delivery:.0f}" if hit and hit[0].cpu_ns_per_delivery else "?")
        extra = list(notes)
        # One server process served the whole sweep: its counters cover every step.
        extra += counter_notes(srv_runs[-1].counters) if srv_runs else []
        if b and b.generator_limited:
            extra.append("generator-limited at the max")
        if any(r.entry.get("status") == "failed" for r in srv_runs):
            extra.append("a run failed (see logs/)")
        name = f"**{s}**" if s == best_peer else s
        fell = (
            f"{fmt_rate(fb.entry.get('target_deliveries_per_s'))}/s target: "
            f"{(fb.delivered_ratio or 0) * 100:.1f}% delivered, p99 {fmt_ms(fb.p99_ms)}"
            if fb
            else ("still sustained at the highest step" if b else "?")
        )
        out.append(
            f"| {name} | {fmt_rate(value) if b else 'none sustained'} | "
            f"{fmt_ratio(vs_peer) if s not in PEERS or s != best_peer else '1.00× (best)'} | {fmt_ratio(vs_floor)} | "
            f"{fmt_ms(b.p50_ms if b else None)} / {fmt_ms(b.p99_ms if b else None)} | "
            f"{fmt_pct(b.server_pct if b else None)} | {cpu_at[0]} / {cpu_at[1]} | {fell} | {'; '.join(extra)} |"
        )
        if not value and any(r.entry.get("status") == "ok" for r in srv_runs):
            # Ran, but sustained not even the lowest step: a visible zero, not a gap.
            chart.setdefault("rate", {}).setdefault(label, {})[s] = 0.0
        if value:
            chart.setdefault("rate", {}).setdefault(label, {})[s] = value
            if b.p99_ms is not None:
                chart.setdefault("p99", {}).setdefault(label, {})[s] = b.p99_ms
    if closed:
        out.append(
            "\nClosed loop (the publisher keeps 32 messages not yet seen by its probe subscriber; "
            "the server sets the pace):\n"
        )
        out.append("| server | deliveries/s | × best peer | p50 / p99 | server CPU | lost | notes |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for s in servers:
            r = closed.get(s)
            if not r:
                continue
            ratio = r.delivered_per_s / closed_best if r.delivered_per_s and closed_best else None
            flags = r.notes + (["generator-limited"] if r.generator_limited else [])
            out.append(
                f"| {s} | {fmt_rate(r.delivered_per_s)} | {fmt_ratio(ratio)} | {fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} | "
                f"{fmt_pct(r.server_pct)} | {fmt_num(r.lost)} | {'; '.join(flags)} |"
            )
            if r.delivered_per_s:
                chart.setdefault("rate", {}).setdefault(label + " · closed loop", {})[s] = r.delivered_per_s
                if r.p99_ms is not None:
                    chart.setdefault("p99", {}).setdefault(label + " · closed loop", {})[s] = r.p99_ms
    if best_peer:
        out.append(f"\nBest peer: **{best_peer}**.")
    # Efficiency and latency at the fixed rates, against the best peer at that rate (the
    # lowest CPU per delivery, the lowest p99), for every ringcast variant that ran.
    for target, label_rate in ((100_000, "0.1 M/s"), (1_000_000, "1 M/s")):
        at = {s: next(iter(by(runs, server=s, target_deliveries_per_s=target)), None) for s in servers}
        peer_cpu = {s: r.cpu_ns_per_delivery for s, r in at.items() if s in PEERS and r and r.cpu_ns_per_delivery}
        peer_p99 = {s: r.p99_ms for s, r in at.items() if s in PEERS and r and r.p99_ms is not None}
        if not peer_cpu:
            continue
        cpu_best = min(peer_cpu, key=lambda s: peer_cpu[s])
        p99_best = min(peer_p99, key=lambda s: peer_p99[s]) if peer_p99 else None
        parts = []
        for s in RINGCAST:
            r = at.get(s)
            if not r or not r.cpu_ns_per_delivery:
                continue
            part = f"{s} {r.cpu_ns_per_delivery / peer_cpu[cpu_best]:.2f}× CPU/delivery"
            if p99_best and r.p99_ms is not None:
                part += f", p99 {fmt_ms(r.p99_ms)} vs {fmt_ms(peer_p99[p99_best])}"
            parts.append(part)
        if parts:
            out.append(
                f"At {label_rate} (best peer: {cpu_best} at {peer_cpu[cpu_best]:.0f} ns/delivery"
                + (f", lowest peer p99 {p99_best}" if p99_best else "")
                + "): " + "; ".join(parts) + "."
            )
    u, e = best.get("ringcast-uring"), best.get("ringcast-epoll")
    if u and e and u.delivered_per_s and e.delivered_per_s:
        line = f"io_uring / epoll: throughput {u.delivered_per_s / e.delivered_per_s:.2f}×"
        cu = [r for r in by(runs, server="ringcast-uring", target_deliveries_per_s=1_000_000)]
        ce = [r for r in by(runs, server="ringcast-epoll", target_deliveries_per_s=1_000_000)]
        if cu and ce and cu[0].cpu_ns_per_delivery and ce[0].cpu_ns_per_delivery:
            line += f", CPU per delivery at 1 M/s {cu[0].cpu_ns_per_delivery / ce[0].cpu_ns_per_delivery:.2f}×"
        out.append(line + ".")
    out.append("")


def idle_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    out.append(f"## {scen}: {title}\n")
    out.append(
        "RSS of the server process with N idle WebSocket connections open, minus its RSS before they "
        "connected, divided by N. From the generator's `server_rss_kib` when present, else from "
        "scripts/bench's own sampling of `/proc/PID/status` (peak during the run).\n"
    )
    out.append("| server | connections | connected | RSS before | RSS with connections | bytes per connection | × best peer | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for r in runs:
        e = r.entry
        n = e.get("connections") or e.get("subscribers")
        before = num(get(r.data, "server_rss_kib", "before")) or num(e.get("rss_before_kib"))
        after = num(get(r.data, "server_rss_kib", "after")) or num(e.get("rss_peak_kib"))
        ok = num(get(r.data, "connect", "ok"))
        per = (after - before) * 1024 / (ok or n) if before is not None and after is not None and (ok or n) else None
        rows.append((e.get("server"), n, ok, before, after, per, e.get("note", ""), e.get("status")))
    peer_vals = [(row[5], row[1]) for row in rows if row[0] in PEERS and row[5] and row[7] == "ok"]
    for server, n, ok, before, after, per, note, status in rows:
        if status in ("n/a", "skipped"):
            out.append(f"| {server} | {n} | | | | {status} | | {note} |")
            continue
        same_n = [p for p, pn in peer_vals if pn == n]
        best_peer = min(same_n) if same_n else None
        ratio = per / best_peer if per and best_peer else None
        out.append(
            f"| {server} | {fmt_num(num(n))} | {fmt_num(ok)} | {fmt_num(before, ' KiB')} | {fmt_num(after, ' KiB')} | "
            f"{fmt_num(per, ' B')} | {fmt_ratio(ratio)} | {note} |"
        )
        if per and status == "ok":
            chart.setdefault("idle", {}).setdefault(f"S{scen} · {n:,} idle connections", {})[server] = per / 1024
    out.append("\nLower is better; the ratio is to the peer with the fewest bytes per connection.\n")


def storm_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    out.append(f"## {scen}: {title}\n")
    out.append("| server | connections | ok | failed | handshakes/s | connect p50 / p99 | × best peer | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for r in runs:
        d, e = r.data, r.entry
        rate = (
            num(get(d, "handshakes_per_s"))
            or num(get(d, "connect", "per_s"))
            or num(get(d, "connect", "rate"))
            or num(get(d, "connects_per_s"))
        )
        ok = num(get(d, "connect", "ok"))
        secs = num(get(d, "elapsed_s")) or num(get(d, "duration_s"))
        if rate is None and ok and secs:
            rate = ok / secs
        rows.append((e, rate, ok, num(get(d, "connect", "failed")), num(get(d, "connect", "p50_us")), num(get(d, "connect", "p99_us"))))
    peer_best = max((rate for e, rate, *_ in rows if e.get("server") in PEERS and rate), default=None)
    for e, rate, ok, failed, p50, p99 in rows:
        if e.get("status") in ("n/a", "skipped"):
            out.append(f"| {e.get('server')} | | | | {e.get('status')} | | | {e.get('note', '')} |")
            continue
        out.append(
            f"| {e.get('server')} | {fmt_num(num(e.get('connections')))} | {fmt_num(ok)} | {fmt_num(failed)} | "
            f"{fmt_num(rate)} | {fmt_ms(p50 / 1000 if p50 else None)} / {fmt_ms(p99 / 1000 if p99 else None)} | "
            f"{fmt_ratio(rate / peer_best if rate and peer_best else None)} | {e.get('note', '')} |"
        )
        if rate and e.get("status") == "ok":
            chart.setdefault("storm", {}).setdefault(f"S{scen} · {e.get('connections', 0):,} connections", {})[e.get("server")] = rate
    out.append("")


def slow_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    first = runs[0].entry
    out.append(f"## {scen}: {title}\n")
    out.append(
        f"{first.get('subscribers', '?')} subscribers, {first.get('size', '?')}-byte messages at "
        f"{fmt_rate(first.get('target_deliveries_per_s'))} deliveries/s; 10% of the subscribers stop "
        "reading. What matters: the healthy subscribers' delivery and p99, how the slow ones were "
        "treated, and whether the server's memory stayed bounded.\n"
    )
    out.append(
        "| server | healthy delivered | healthy p99 | slow: count / disconnected / still connected "
        "| server RSS before → peak | server's own counters | notes |"
    )
    out.append("|---|---:|---:|---|---:|---|---|")
    for r in runs:
        e = r.entry
        if e.get("status") in ("n/a", "skipped"):
            out.append(f"| {e.get('server')} | {e.get('status')} | | | | | {e.get('note', '')} |")
            continue
        slow = get(r.data, "slow") or {}
        own = "; ".join(counter_notes(r.counters)) or ("none dropped" if "lagged_messages" in r.counters else "")
        # Both from the script's own sampling when it has them (one source, one method).
        before = num(e.get("rss_before_kib")) or num(get(r.data, "server_rss_kib", "before"))
        peak = num(e.get("rss_peak_kib")) or num(get(r.data, "server_rss_kib", "after"))
        ratio = r.delivered_ratio
        out.append(
            f"| {e.get('server')} | {'?' if ratio is None else f'{ratio * 100:.2f}%'} | {fmt_ms(r.p99_ms)} | "
            f"{slow.get('count', '?')} / {slow.get('disconnected', '?')} / {slow.get('still_connected', '?')} | "
            f"{fmt_num(before, ' KiB')} → {fmt_num(peak, ' KiB')} | {own} | {'; '.join([e.get('note', '')] + r.notes).strip('; ')} |"
        )
        if r.p99_ms is not None and e.get("status") == "ok":
            chart.setdefault("slow_p99", {}).setdefault(f"S{scen} · 10% stop reading", {})[e.get("server")] = r.p99_ms
    out.append("")


def shards_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    """A sweep with two shards: the usual table, then the server's own counters per step."""
    sweep_section(title, scen, runs, out, chart)
    pin = runs[0].entry.get("pinning")
    out.append(
        f"Pinning: {pin or 'see meta.json'}. The generator shares the server's cores, so these figures "
        "are not comparable with the one-core scenarios; compare the two ringcast backends, and read "
        "the cross-shard columns.\n"
    )
    out.append(
        "| server | step | delivered/s | p50 / p99 / p99.9 | cross-shard share | server msgs in/s | "
        "server msgs out/s | bus batches in/s | msgs per bus batch | bus dropped | verdict |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    missing = ""
    for r in runs:
        if r.data is None or r.entry.get("status") in ("n/a", "skipped"):
            continue
        c = cross_shard(r.data)
        p999 = num(get(r.data, "latency_us", "p999"))
        share = fmt_share(c["share"])
        if c["share_per_shard"]:
            share += " (" + ", ".join(f"{k}: {fmt_share(v)}" for k, v in sorted(c["share_per_shard"].items())) + ")"
        batches = fmt_rate(c.get("bus_batches_per_s"))
        if c.get("bus_batches_per_shard"):
            batches += f" ({fmt_per_shard(c['bus_batches_per_shard'])})"
        mpb = c.get("messages_per_batch")
        out.append(
            f"| {r.entry.get('server')} | {r.entry.get('step', '')} | {fmt_rate(r.delivered_per_s)} | "
            f"{fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} / {fmt_ms(p999 / 1000 if p999 is not None else None)} | {share} | "
            f"{fmt_rate(c.get('in_per_s'))} | {fmt_rate(c.get('out_per_s'))} | {batches} | "
            f"{'?' if not mpb else f'{mpb:.1f}'} | {fmt_num(c.get('bus_dropped'))} | {r.entry.get('verdict', '')} |"
        )
        missing = missing or c["why"]
    if missing:
        out.append(
            f"\nCross-shard share n/a: {missing} (deliveries of messages that came over the bus from "
            "another shard). No other metric tells it: `ringcast_bus_batches_in_total` counts batches, "
            "not messages, and messages in and out are summed over the shards."
        )
    out.append("")


def chat_section(title: str, scen: str, runs: list[Run], out: list[str], chart: dict) -> None:
    first = runs[0].entry
    members = first.get("members", "?")
    out.append(f"## {scen}: {title}\n")
    out.append(
        f"{members} members on one connection each, all on one topic; each publishes "
        f"{first.get('rate_per_member', '?')} message/s of {first.get('size', '?')} bytes and receives every "
        "other member's (no echo: each message is due at every member but its sender). Delivered = "
        "deliveries/s in the window; lost, duplicated, out of order and own messages sent back are over "
        "the whole run.\n"
    )
    out.append(
        "| server | members | published/s | expected/s | delivered/s | delivered | p50 / p99 / p99.9 "
        "| lost | dup / out of order | own sent back | server CPU | CPU ns/delivery | generator CPU | notes |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        e, d = r.entry, r.data
        if d is None:
            out.append(f"| {e.get('server')} | {members} | | | | | | | | | | | | {e.get('status', '')} {e.get('note', '')} |")
            continue
        p999 = num(get(d, "latency_us", "p999"))
        ratio = r.delivered_ratio
        notes = r.notes + counter_notes(r.counters) + (["generator-limited"] if r.generator_limited else [])
        cpu = r.cpu_ns_per_delivery
        out.append(
            f"| {e.get('server')} | {fmt_num(num(get(d, 'subscribers')))} | {fmt_rate(num(get(d, 'published_per_s')))} | "
            f"{fmt_rate(r.expected_per_s)} | {fmt_rate(r.delivered_per_s)} | {'?' if ratio is None else f'{ratio * 100:.2f}%'} | "
            f"{fmt_ms(r.p50_ms)} / {fmt_ms(r.p99_ms)} / {fmt_ms(p999 / 1000 if p999 is not None else None)} | "
            f"{fmt_num(r.lost)} | {fmt_num(num(get(d, 'duplicated')))} / {fmt_num(num(get(d, 'out_of_order')))} | "
            f"{fmt_num(num(get(d, 'self_delivered')))} | {fmt_pct(r.server_pct)} | {'?' if cpu is None else f'{cpu:.0f}'} | "
            f"{fmt_pct(r.generator_pct)} | {'; '.join(notes)} |"
        )
        label = f"S{scen} · chat, {members} members"
        if r.delivered_per_s and e.get("status") == "ok":
            chart.setdefault("rate", {}).setdefault(label, {})[e.get("server")] = r.delivered_per_s
            if r.p99_ms is not None:
                chart.setdefault("p99", {}).setdefault(label, {})[e.get("server")] = r.p99_ms
    out.append("")


def all_runs_section(runs: list[Run], out: list[str]) -> None:
    out.append("## Every run\n")
    out.append(
        "| scenario | server | step | target deliveries/s | publish rate | delivered/s | delivered | p50 | p99 "
        "| server CPU | generator CPU | verdict | raw |"
    )
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in runs:
        e = r.entry
        if e.get("kind") in ("idle", "storm"):
            continue  # their tables above already show every run
        ratio = r.delivered_ratio
        raw = f"[json]({e['json']})" if e.get("json") and r.data is not None else ""
        verdict = e.get("verdict") or e.get("status", "")
        if verdict == "sustained" and not r.recorded_sustained():
            limit = num(e.get("p99_limit_ms")) or math.inf
            verdict = "**not sustained** (recorded as sustained: " + r.sustained(limit, 0.999)[1] + ")"
        if r.generator_limited:
            verdict += " (generator-limited)"
        if e.get("note"):
            verdict += f" — {e['note']}"
        if r.notes:
            verdict += " — generator: " + "; ".join(r.notes)
        out.append(
            f"| {e.get('scenario')} | {e.get('server')} | {e.get('step', '')} | "
            f"{fmt_rate(e.get('target_deliveries_per_s'))} | {e.get('rate', '')} | {fmt_rate(r.delivered_per_s)} | "
            f"{'' if ratio is None else f'{ratio * 100:.2f}%'} | {fmt_ms(r.p50_ms) if r.data else ''} | "
            f"{fmt_ms(r.p99_ms) if r.data else ''} | {fmt_pct(r.server_pct) if r.data else ''} | "
            f"{fmt_pct(r.generator_pct) if r.data else ''} | {verdict} | {raw} |"
        )
    out.append("")


def cmd_report(args: argparse.Namespace) -> int:
    rec = Path(args.dir)
    meta, runs = read_record(rec)
    out: list[str] = []
    chart: dict = {}
    title = meta.get("title", rec.name)
    out.append(f"# Benchmark record: {title}\n")
    out.append(
        "Written by `scripts/bench`; the tables are generated by `scripts/chart-bench.py report` from the "
        "raw JSON in `raw/`. How to read it: `docs/benchmarks/README.md`.\n"
    )
    out.append("| | |\n|---|---|")
    for key, label in [
        ("date", "date (UTC)"),
        ("mode", "mode"),
        ("command", "command"),
        ("commit", "git commit"),
        ("kernel", "kernel (`uname -r`)"),
        ("cpu", "CPU"),
        ("cpus", "CPUs"),
        ("pinning", "pinning"),
        ("durations", "run length"),
        ("nofile", "open-file limit"),
        ("versions", "versions"),
        ("elapsed", "suite wall time"),
        ("loadavg_start", "load average at start (1/5/15 min)"),
        ("loadavg_end", "load average at end"),
    ]:
        if key in meta:
            value = meta[key]
            if key in ("command", "commit"):
                value = f"`{value}`"
            out.append(f"| {label} | {value} |")
    out.append("")
    out.append("![delivered messages/s and p99 latency per server and scenario](chart.svg)\n")
    if meta.get("notes"):
        out.append("Notes:\n")
        out.extend(f"- {n}" for n in meta["notes"])
        out.append("")
    for scen, scen_title in scenarios_in(runs):
        srs = by(runs, scenario=scen)
        kind = srs[0].entry.get("kind", "sweep")
        section = {
            "sweep": sweep_section,
            "idle": idle_section,
            "storm": storm_section,
            "slow": slow_section,
            "chat": chat_section,
        }.get(kind, sweep_section)
        if kind == "sweep" and (num(srs[0].entry.get("shards")) or 1) > 1:
            section = shards_section
        section(scen_title, scen, srs, out, chart)
    all_runs_section(runs, out)
    out.append(
        "Files: `commands.txt` (every command, in order), `meta.json`, `runs.jsonl` (one line per run), "
        "`raw/` (generator JSON), `logs/` (server and generator output; the peers print their counters, "
        "including messages dropped by tokio's broadcast channel, when stopped).\n"
    )
    (rec / "README.md").write_text("\n".join(out), encoding="utf-8")
    (rec / "chart.svg").write_text(render_svg(chart, title), encoding="utf-8")
    print(f"wrote {rec / 'README.md'} and {rec / 'chart.svg'}")
    return 0


# ---------------------------------------------------------------- SVG


def nice_ceiling(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= v:
            return m * 10**exp
    return 10 ** (exp + 1)


def fmt_axis(v: float, unit: str) -> str:
    if unit == "/s":
        return fmt_rate(v).replace(" ", "")
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def panel(
    svg: list[str], y0: float, width: float, height: float, title: str, unit: str, data: dict, servers: list[str], log: bool
) -> None:
    """Grouped bar chart: one group per scenario, one bar per server.

    Latencies use a log scale: they span 1 ms to seconds across servers, and on a
    linear axis every figure but the worst would be an invisible sliver."""
    left, right, top, bottom = 70, 20, 28, 42
    x0, x1 = left, width - right
    plot_top, plot_bottom = y0 + top, y0 + height - bottom
    svg.append(f'<text x="{x0}" y="{y0 + 18}" class="title">{html.escape(title)}</text>')
    groups = list(data)
    values = [v for g in data.values() for v in g.values()]
    if log:
        positive = [v for v in values if v > 0] or [1.0]
        # One decade below the smallest value, so that the best bar is not a sliver.
        lo = 10 ** (math.floor(math.log10(min(positive))) - 1)
        hi = 10 ** math.ceil(math.log10(max(positive) * 1.0001))
        if hi <= lo:
            hi = lo * 10

        def frac(v: float) -> float:
            return 0.0 if v <= lo else (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

        ticks = [lo * 10**i for i in range(round(math.log10(hi / lo)) + 1)]
    else:
        vmax = nice_ceiling(max(values, default=1))

        def frac(v: float) -> float:
            return v / vmax

        ticks = [vmax * i / 4 for i in range(5)]
    for v in ticks:
        y = plot_bottom - (plot_bottom - plot_top) * frac(v)
        svg.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>')
        svg.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{fmt_axis(v, unit)}</text>')
    if not groups:
        svg.append(f'<text x="{(x0 + x1) / 2}" y="{(plot_top + plot_bottom) / 2}" class="axis" text-anchor="middle">no data</text>')
        return
    gw = (x1 - x0) / len(groups)
    for gi, g in enumerate(groups):
        present = [s for s in servers if s in data[g]]
        bw = min(36.0, (gw * 0.8) / max(1, len(present)))
        start = x0 + gi * gw + (gw - bw * len(present)) / 2
        for si, s in enumerate(present):
            v = data[g][s]
            h = (plot_bottom - plot_top) * frac(v)
            x = start + si * bw
            svg.append(
                f'<rect x="{x:.1f}" y="{plot_bottom - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(s, "#bcbd22")}"><title>{html.escape(s)}: {fmt_axis(v, unit)}{"" if unit == "/s" else " " + unit}</title></rect>'
            )
            svg.append(
                f'<text x="{x + (bw - 2) / 2:.1f}" y="{plot_bottom - h - 3:.1f}" class="val" text-anchor="middle">'
                f"{fmt_axis(v, unit)}</text>"
            )
        svg.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{plot_bottom + 16}" class="axis" text-anchor="middle">{html.escape(g)}</text>')
    svg.append(f'<line x1="{x0}" y1="{plot_bottom}" x2="{x1}" y2="{plot_bottom}" class="axisline"/>')


def render_svg(chart: dict, title: str) -> str:
    panels = [
        ("rate", "Max sustained delivered messages/s (higher is better)", "/s"),
        ("p99", "p99 latency at that rate, ms, log scale (lower is better)", "ms"),
        ("idle", "Idle memory: KiB of server RSS per connection (lower is better)", "KiB"),
        ("storm", "Connect storm: handshakes/s (higher is better)", "/s"),
        ("slow_p99", "Slow consumers: healthy subscribers' p99, ms, log scale (lower is better)", "ms"),
    ]
    panels = [p for p in panels if chart.get(p[0])] or panels[:2]
    servers = [s for s in SERVERS if any(s in g for d in chart.values() for g in d.values())]
    width, ph = 960, 250
    legend_h = 40
    height = legend_h + ph * len(panels) + 10
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">',
        "<style>.title{font-size:14px;font-weight:bold}.axis{font-size:11px;fill:#333}.val{font-size:9px;fill:#222}"
        ".grid{stroke:#ddd;stroke-width:1}.axisline{stroke:#333;stroke-width:1}.legend{font-size:12px}</style>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="16" class="axis">{html.escape(title)}</text>',
    ]
    lx = 10
    for s in servers:
        svg.append(f'<rect x="{lx}" y="24" width="12" height="12" fill="{COLOURS.get(s, "#bcbd22")}"/>')
        label = s + (" (floor)" if s == "blast" else "")
        svg.append(f'<text x="{lx + 16}" y="34" class="legend">{html.escape(label)}</text>')
        lx += 26 + 7.2 * len(label)
    for i, (key, ptitle, unit) in enumerate(panels):
        panel(svg, legend_h + i * ph, width, ph, ptitle, unit, chart.get(key, {}), servers, log=unit == "ms")
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


# ---------------------------------------------------------------- self-test


def self_test() -> int:
    """The verdict against made-up results: fast, standard library only (scripts/test)."""
    import contextlib
    import io
    import tempfile

    def result(**over) -> dict:
        d = {
            "delivered_per_s": 10000.0, "expected_per_s": 10000.0, "published": 10000, "delivered": 100000,
            "lost": 0, "duplicated": 0, "out_of_order": 0, "errors": 0, "publish_skipped": 0,
            "publish_failed": 0, "offset_gaps": 0, "offset_dups": 0, "offset_gaps_allowed": False,
            "offset_failure": None, "publishers": 1, "latency_us": {"p50": 500.0, "p99": 2000.0},
            "cpu": {"server_pct": 50.0, "generator_pct": 20.0},
        }
        d.update(over)
        return d

    def verdict(d: dict, p99_ms: float = 100.0) -> tuple[bool, str]:
        return Run({}, d).sustained(p99_ms, 0.999)

    failures = []

    def check(name: str, got: tuple[bool, str], ok: bool, prefix: str, *parts: str) -> None:
        good, line = got
        if good != ok or not line.startswith(prefix) or any(p not in line for p in parts):
            failures.append(f"{name}: got {got!r}, wanted {ok} / {prefix!r} with {parts!r}")
        # Loss first: the loss figures come before any rate in the line.
        if "lost " in line and "/s of" in line and line.index("lost ") > line.index("/s of"):
            failures.append(f"{name}: rates before loss in {line!r}")

    check("clean", verdict(result()), True, "sustained", "lost 0, skipped 0, failed 0, errors 0")
    # Issue 14: one message published (and delivered), 149 skipped: nothing "lost".
    issue14 = result(published=1, delivered=1, publish_skipped=149, delivered_per_s=1.0, expected_per_s=1.0)
    check("skipped", verdict(issue14), False, "lossy", "publishes skipped: 149", "skipped 149")
    check("within tolerance", verdict(result(delivered=99950, lost=50)), True, "sustained", "lost 50")
    check("beyond tolerance", verdict(result(delivered=99800, lost=200)), False, "behind", "99.80% < 99.9%")
    check("p99", verdict(result(), p99_ms=1.0), False, "behind", "p99 2.0 ms > 1 ms")
    for key, what in (
        ("errors", "errors: 1"),
        ("publish_failed", "publishes failed: 1"),
        ("duplicated", "duplicated messages: 1"),
        ("out_of_order", "out-of-order messages: 1"),
        ("offset_dups", "offset dups/reorders: 1"),
        ("offset_gaps", "offset gaps: 1"),
    ):
        check(key, verdict(result(**{key: 1})), False, "lossy", what)
    check("gaps allowed", verdict(result(offset_gaps=3, offset_gaps_allowed=True)), True, "sustained")
    check("offset failure", verdict(result(offset_failure="2 gaps")), False, "lossy", "offsets check failed: 2 gaps")
    check("nothing published", verdict(result(published=0, delivered=0, delivered_per_s=0.0, expected_per_s=0.0)),
          False, "lossy", "nothing was published")
    check("receive only", verdict(result(publishers=0, published=0)), True, "sustained")
    check("no figures", verdict({"lost": 0}), False, "lossy", "no delivery figures")
    # A record that called a lossy run sustained is not taken at its word.
    lossy = Run({"verdict": "sustained", "p99_limit_ms": 100}, issue14)
    clean = Run({"verdict": "sustained", "p99_limit_ms": 100}, result(delivered_per_s=5000.0))
    if lossy.recorded_sustained() or not clean.recorded_sustained():
        failures.append("recorded_sustained: a lossy run passed, or a clean one did not")
    if best_sustained([lossy, clean])[0] is not clean:
        failures.append("best_sustained picked a lossy run")
    # The command: exit 0 / 1 / 2.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        for name, data, want in (("clean", result(), 0), ("lossy", issue14, 1)):
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(data))
            ns = argparse.Namespace(file=str(path), p99_ms=100.0, min_delivered=0.999)
            if cmd_verdict(ns) != want:
                failures.append(f"cmd_verdict {name}: exit status not {want}")
        ns = argparse.Namespace(file=str(Path(tmp) / "missing.json"), p99_ms=100.0, min_delivered=0.999)
        if cmd_verdict(ns) != 2:
            failures.append("cmd_verdict: a missing file does not exit 2")
    for f in failures:
        print("self-test FAILED:", f, file=sys.stderr)
    if not failures:
        print("chart-bench.py self-test: ok")
    return 1 if failures else 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verdict", help="was this run's rate sustained?")
    v.add_argument("file")
    v.add_argument("--p99-ms", type=float, required=True)
    v.add_argument("--min-delivered", type=float, default=0.999)
    c = sub.add_parser("cross-shard", help="what a run's server metrics say about the cross-shard path")
    c.add_argument("file")
    r = sub.add_parser("report", help="write README.md and chart.svg of a record directory")
    r.add_argument("dir")
    args = ap.parse_args()
    return {"verdict": cmd_verdict, "cross-shard": cmd_cross_shard, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
