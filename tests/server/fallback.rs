//! The epoll fallback: under a seccomp filter that denies io_uring (as Docker's default
//! profile does) the server says so and serves on epoll; `--io uring` refuses to start.

use std::process::Command;

use crate::util::{Msg, Server};

fn denied() -> Command {
    let mut c = Command::new("python3");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/deny_io_uring.py"
    ))
    .arg("--")
    .arg(env!("CARGO_BIN_EXE_ringcast"));
    c
}

#[test]
fn seccomp_denied_io_uring_falls_back_to_epoll() {
    let srv = Server::start_with(denied(), "auto", &[]);
    assert!(srv.banner.contains("io: epoll"), "banner: {}", srv.banner);
    let log = srv.log();
    assert!(
        log.contains("falling back to the epoll backend") && log.contains("EPERM"),
        "log: {log}"
    );
    let mut c = srv.ws("/echo");
    c.text("works on epoll");
    assert_eq!(c.recv(), Msg::Text("works on epoll".into()));
}

#[test]
fn io_uring_required_but_denied_fails_loudly() {
    let out = denied()
        .args(["--listen", "127.0.0.1:0", "--io", "uring"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "{err}");
}
