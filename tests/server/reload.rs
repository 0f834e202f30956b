//! SIGHUP reloads the configuration (docs/configuration.md, "Reload"), and the start-up
//! and log lines come once each, in the configured format: a changed reloadable key is
//! applied and named, a restart-only one is named in a warning and keeps its old value, a
//! broken file is logged and changes nothing, an unchanged one says so, a rewritten key
//! file is re-read.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::both;
use crate::util::Server;

const WAIT: Duration = Duration::from_secs(5);

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-reload-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server reading `text` from its config file; the file's path.
fn start_with_file(io: &str, text: &str) -> (Server, PathBuf) {
    let path = temp_dir().join("ringcast.toml");
    std::fs::write(&path, text).unwrap();
    let srv = Server::start(io, &["--config", path.to_str().unwrap()]);
    (srv, path)
}

/// Rewrites the file, sends SIGHUP and waits for the `nth` (1-based) reload line.
fn reload(srv: &Server, path: &Path, text: &str, nth: usize) -> String {
    std::fs::write(path, text).unwrap();
    srv.signal("HUP");
    assert!(
        srv.wait_for(WAIT, |s| reload_lines(&s.log()).len() >= nth),
        "no reload line after SIGHUP: {}",
        srv.log()
    );
    reload_lines(&srv.log())[nth - 1].clone()
}

/// The lines a reload logs (applied, restart warning, refusal, nothing changed).
fn reload_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("configuration reload"))
        .map(str::to_owned)
        .collect()
}

/// Waits until every shard (the util starts two) has taken `generation` reloads.
fn wait_in_force(srv: &Server, generation: usize) {
    assert!(
        srv.wait_for(WAIT, |s| s
            .log()
            .matches("reloaded settings in force")
            .count()
            >= 2 * generation),
        "the shards did not take the reload: {}",
        srv.log()
    );
}

fn origin_ok(srv: &Server, origin: &str) -> bool {
    srv.ws_with("/ws/t", &[("Origin", origin)]).is_ok()
}

both!(a_changed_reloadable_key_applies_and_is_named, |io| {
    let (srv, path) = start_with_file(io, "allowed_origins = \"*\"\n");
    assert!(origin_ok(&srv, "http://evil.example"));
    let line = reload(
        &srv,
        &path,
        "allowed_origins = [\"http://good.example\"]\nmax_connections_per_ip = 3\n",
        1,
    );
    assert!(line.contains("applied"), "{line}");
    assert!(line.contains("allowed_origins"), "{line}");
    assert!(line.contains("max_connections_per_ip"), "{line}");
    wait_in_force(&srv, 1);
    // Every shard took it: the refusal is the same on each new connection (two shards,
    // connections spread by the kernel).
    for _ in 0..8 {
        assert!(!origin_ok(&srv, "http://evil.example"), "{}", srv.log());
    }
    // The per-IP limit applies too: three held, the fourth refused with 429 (once the
    // refused connections above are released).
    assert!(srv.wait_for(WAIT, |s| s.open_connections() == 0));
    let held: Vec<_> = (0..3).map(|_| srv.ws("/ws/t")).collect();
    let err = srv.ws_with("/ws/t", &[]).err().expect("fourth refused");
    assert!(err.to_string().contains("429"), "{err}");
    drop(held);
    // No restart warning: nothing restart-only changed.
    assert!(!srv.log().contains("need a restart"), "{}", srv.log());
});

both!(
    a_restart_only_key_is_warned_about_and_keeps_its_value,
    |io| {
        let (srv, path) = start_with_file(io, "max_header_bytes = \"8KiB\"\n");
        let line = reload(
            &srv,
            &path,
            "max_header_bytes = \"1KiB\"\nmax_connections_per_ip = 50\n",
            2,
        );
        let log = srv.log();
        let warn = reload_lines(&log)
            .into_iter()
            .find(|l| l.contains("need a restart"))
            .unwrap_or_else(|| panic!("no restart warning: {log}"));
        assert!(warn.contains("WARN"), "{warn}");
        assert!(warn.contains("max_header_bytes"), "{warn}");
        assert!(!warn.contains("max_connections_per_ip"), "{warn}");
        assert!(
            log.contains("applied") && line.contains("need a restart"),
            "{log}"
        );
        // The old 8 KiB still applies: a 2 KiB head is served, not refused with 431.
        let pad = "a".repeat(2048);
        let (status, _) = srv
            .request(format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").as_bytes());
        assert_eq!(status, 200);
        // Still named at the next reload (still not in force), never as applied.
        let again = reload(
            &srv,
            &path,
            "max_header_bytes = \"1KiB\"\nmax_connections_per_ip = 50\n",
            3,
        );
        assert!(
            again.contains("need a restart") && again.contains("max_header_bytes"),
            "{again}"
        );
    }
);

both!(
    a_broken_file_changes_nothing_and_the_server_serves_on,
    |io| {
        let (mut srv, file) = start_with_file(io, "allowed_origins = [\"http://good.example\"]\n");
        // A bad value: refused, naming the key.
        let line = reload(&srv, &file, "max_connections_per_ip = \"lots\"\n", 1);
        assert!(line.contains("refused"), "{line}");
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("max_connections_per_ip"), "{line}");
        // Not TOML at all: refused too.
        let line = reload(&srv, &file, "allowed_origins = [\n", 2);
        assert!(line.contains("refused"), "{line}");
        // A key file that cannot be read: refused like at start-up.
        let line = reload(
            &srv,
            &file,
            "allowed_origins = \"*\"\napi_key_file = \"/nonexistent/ringcast-keys\"\n",
            3,
        );
        assert!(
            line.contains("refused") && line.contains("api_key_file"),
            "{line}"
        );
        // The old origins still apply (after more than a shard tick), the server still serves.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(srv.log().matches("reloaded settings in force").count(), 0);
        assert!(origin_ok(&srv, "http://good.example"));
        assert!(!origin_ok(&srv, "http://evil.example"));
        assert!(srv.get("/health").contains("200"));
        srv.signal("TERM");
        let status = srv.wait_exit(WAIT).expect("exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "{}", srv.log());
    }
);

both!(a_reload_with_nothing_changed_says_so, |io| {
    let text = "allowed_origins = \"*\"\n";
    let (srv, path) = start_with_file(io, text);
    let line = reload(&srv, &path, text, 1);
    assert!(line.contains("nothing changed"), "{line}");
    // And the process did not die of the signal.
    assert!(srv.get("/health").contains("200"));
});

/// A server started without the util's `--log-level debug` (so that the file's level is
/// the one in force): the process, its stdout's first line and its stderr file.
fn spawn(io: &str, args: &[&str]) -> (Child, String, PathBuf) {
    let dir = temp_dir();
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "127.0.0.1:0", "--io", io, "--shards", "2"])
        .args(["--drain-grace", "0s"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (child, line, stderr_path)
}

fn backend_name(io: &str) -> &str {
    if io == "uring" { "io_uring" } else { io }
}

fn kill(child: &mut Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_log(path: &Path, f: impl Fn(&str) -> bool) -> String {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if f(&log) || std::time::Instant::now() >= end {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

both!(the_log_level_reloads, |io| {
    let path = temp_dir().join("ringcast.toml");
    std::fs::write(&path, "log_level = \"warn\"\n").unwrap();
    let (mut child, _, log_path) = spawn(io, &["--config", path.to_str().unwrap()]);
    // At warn, an unchanged reload's info line is filtered out...
    kill(&mut child, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("nothing changed"), "{log}");
    // ...and after the level went to info, the reload's own info line shows it.
    std::fs::write(&path, "log_level = \"info\"\n").unwrap();
    kill(&mut child, "HUP");
    let log = wait_log(&log_path, |l| l.contains("applied"));
    assert!(
        log.lines()
            .any(|l| l.contains("applied") && l.contains("log_level")),
        "{log}"
    );
    // No escape sequences: stderr is a file, not a terminal.
    assert!(!log.contains('\x1b'), "{log:?}");
    let _ = child.kill();
    let _ = child.wait();
});

both!(json_mode_writes_json_on_stdout_and_stderr, |io| {
    let path = temp_dir().join("ringcast.toml");
    std::fs::write(&path, "").unwrap();
    let (mut child, banner, log_path) = spawn(
        io,
        &[
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&banner)
        .unwrap_or_else(|e| panic!("start-up line {banner:?} is not JSON: {e}"));
    assert_eq!(v["msg"], "listening");
    let addr: std::net::SocketAddr = v["addrs"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(v["io"], backend_name(io));
    // Some traffic and a reload, then a drain: every stderr line parses.
    let _ = crate::util::get_at(addr, "/health");
    std::fs::write(&path, "max_connections_per_ip = 9\n").unwrap();
    kill(&mut child, "HUP");
    wait_log(&log_path, |l| l.contains("applied"));
    kill(&mut child, "TERM");
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("stderr line {line:?} is not JSON: {e}"));
    }
    assert!(!log.contains('\x1b'));
});

both!(text_mode_keeps_the_start_up_line_and_no_colours, |io| {
    let (mut child, banner, log_path) = spawn(io, &["--log-level", "debug"]);
    assert!(
        banner.starts_with("ringcast listening on 127.0.0.1:"),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("io: {})", backend_name(io))),
        "{banner}"
    );
    kill(&mut child, "TERM");
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("draining"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
});

both!(a_start_up_failure_prints_its_reason_once, |io| {
    // A port held by a plain listener (no SO_REUSEPORT): ringcast must refuse it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", &addr, "--io", io, "--shards", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("start-up failed").count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("already in use by another process").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(out.stdout.is_empty());
});

/// `POST /publish/t` with an API key; the status.
fn publish_with_key(srv: &Server, key: &str) -> u16 {
    srv.request(
        format!(
            "POST /publish/t HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        )
        .as_bytes(),
    )
    .0
}

both!(a_changed_api_key_file_is_re_read, |io| {
    let dir = temp_dir();
    let keys = dir.join("api-keys");
    std::fs::write(&keys, "old-key-0123456789\n").unwrap();
    let text = format!("api_key_file = {:?}\n", keys.to_str().unwrap());
    let (srv, path) = start_with_file(io, &text);
    assert_eq!(publish_with_key(&srv, "old-key-0123456789"), 202);
    assert_eq!(publish_with_key(&srv, "new-key-0123456789"), 401);
    // Same file name, new content: the key file counts as changed.
    std::fs::write(&keys, "new-key-0123456789\n").unwrap();
    let line = reload(&srv, &path, &text, 1);
    assert!(
        line.contains("applied") && line.contains("api_key_file"),
        "{line}"
    );
    wait_in_force(&srv, 1);
    for _ in 0..4 {
        assert_eq!(publish_with_key(&srv, "new-key-0123456789"), 202);
        assert_eq!(publish_with_key(&srv, "old-key-0123456789"), 401);
    }
});
