//! What an operator relies on: a second server on a held address refuses to start (the
//! shards share their port with `SO_REUSEPORT`; nobody else may), and a restart on the same
//! port right after the previous process exited works.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::both;
use crate::util::Server;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn second_on(addr: &str, io: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", addr, "--io", io, "--shards", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; kill it if it does not, and fail below.
    for _ in 0..50 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

both!(a_second_server_on_a_held_address_refuses_to_start, |io| {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let first = Server::start_with(
        Command::new(env!("CARGO_BIN_EXE_ringcast")),
        io,
        &["--listen", &addr],
    );
    let out = second_on(&addr, io);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already in use by another process"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it must not have served"
    );
    // The first one still serves alone.
    assert!(first.get("/health").contains("ok"));
    // Once it is gone, the port can be taken again at once.
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let again = Server::start_with(
        Command::new(env!("CARGO_BIN_EXE_ringcast")),
        io,
        &["--listen", &addr],
    );
    assert!(again.get("/health").contains("ok"));
});

both!(an_unknown_ringcast_variable_is_warned_about, |io| {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.env("RINGCAST_MAX_CONECTIONS", "10");
    let srv = Server::start_with(cmd, io, &[]);
    assert!(srv.wait_for(Duration::from_secs(2), |s| {
        s.log().contains("RINGCAST_MAX_CONECTIONS")
    }));
    let log = srv.log();
    assert!(
        log.contains("did you mean RINGCAST_MAX_CONNECTIONS?"),
        "{log}"
    );
});
