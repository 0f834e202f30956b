//! `ringcast-loadtest`: thin entry point; see the library crate for everything.

use std::process::ExitCode;

use clap::Parser;
use ringcast_loadtest::cli::{Cli, Command};
use ringcast_loadtest::{blast, chat, idle_storm, pubhttp, recover, run};

/// "  tokens: ES256 x10000 (header), minted in 0.52s before the timed part", or nothing.
fn minted(t: Option<&ringcast_loadtest::token::TokenReport>) -> String {
    t.map_or(String::new(), |t| {
        format!(
            "  tokens: {} x{} ({}), minted in {:.2}s before the timed part",
            t.alg,
            t.count,
            t.placement.name(),
            t.mint_s
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ringcast_loadtest::token::install_provider();
    // A completed run whose offsets break the server's promise (dense, ordered per topic),
    // or a recovery that did not give every client exactly what it missed, exits with 2:
    // unlike loss under load, that is never data (see the README).
    let mut check_failed: Option<String> = None;
    let result = match &cli.command {
        Command::Run(a) => run::run(a, std::env::args().collect()).map(|r| {
            if !a.quiet {
                eprintln!();
            }
            print!("{}", r.summary());
            check_failed = r.offset_failure;
        }),
        Command::Chat(a) => chat::chat(a, std::env::args().collect()).map(|r| {
            if !a.quiet {
                eprintln!();
            }
            print!("{}", r.summary());
            check_failed = r.offset_failure;
        }),
        Command::Idle(a) => idle_storm::idle(a).map(|r| {
            println!("{}{}", r.summary(), minted(r.token.as_ref()));
        }),
        Command::Storm(a) => idle_storm::storm(a).map(|r| {
            println!(
                "storm: {} of {} connections in {:.2}s: {:.0} handshakes/s  p50 {:.0}us  p99 {:.0}us  failed {}{}",
                r.connect.ok, r.connections, r.duration_s, r.handshakes_per_s, r.connect.p50_us, r.connect.p99_us, r.connect.failed,
                minted(r.token.as_ref())
            )
        }),
        Command::Pubhttp(a) => pubhttp::pubhttp(a, std::env::args().collect()).map(|r| {
            print!("{}", r.summary());
        }),
        Command::Blast(a) => blast::main(a),
        Command::Recover(a) => recover::recover(a).map(|r| {
            print!("{}", r.summary());
            check_failed = r.failure.clone();
        }),
    };
    match result {
        Ok(()) => match check_failed {
            None => ExitCode::SUCCESS,
            Some(why) => {
                eprintln!("ringcast-loadtest: check failed: {why}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("ringcast-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
