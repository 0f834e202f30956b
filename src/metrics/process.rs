//! Process metrics in the names Prometheus's client libraries use (`process_*`), read from
//! `/proc/self` when `/metrics` is scraped (never on a shard's message path), and the build:
//! `ringcast_build_info{version,commit} 1`.

use std::fmt::Write as _;

/// The crate version and the commit it was built from (`build.rs`; `unknown` outside a git
/// checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// See [`VERSION`].
pub const COMMIT: &str = env!("RINGCAST_COMMIT");

/// Appends the process and build families.
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP ringcast_build_info The version and commit this server was built from.\n# TYPE ringcast_build_info gauge\nringcast_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
    );
    let stat = Stat::read();
    let page = 4096u64;
    let ticks = 100.0f64; // USER_HZ, fixed at 100 on Linux for /proc
    let mut family = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of the process, in seconds.",
        stat.as_ref().map(|s| (s.utime + s.stime) as f64 / ticks),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process, in bytes.",
        stat.as_ref().map(|s| (s.rss_pages * page) as f64),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory of the process, in bytes.",
        stat.as_ref().map(|s| s.vsize as f64),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        stat.as_ref()
            .and_then(|s| boot_time().map(|b| b + s.start_ticks as f64 / ticks)),
    );
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    family(
        "process_max_fds",
        "gauge",
        "The open-file limit (soft).",
        max_fds().map(|n| n as f64),
    );
}

/// The fields of `/proc/self/stat` used here.
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn read() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of stat(5), so field N is at index N - 3.
        let at = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Stat {
            utime: at(14)?,
            stime: at(15)?,
            start_ticks: at(22)?,
            vsize: at(23)?,
            rss_pages: at(24)?,
        })
    }
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_the_process_and_build_families() {
        let mut out = String::new();
        super::render(&mut out);
        for name in [
            "ringcast_build_info{version=\"",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(out.contains(name), "{name} missing in {out}");
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(rss > 1_000_000.0, "{rss}");
    }
}
