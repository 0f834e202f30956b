#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::collections::HashMap;

const EXAMPLE_TOML: &str = include_str!("../../docs/ringcast.example.toml");
const CONFIG_DOC: &str = include_str!("../../docs/configuration.md");

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn args(list: &[&str]) -> Vec<String> {
    std::iter::once("ringcast")
        .chain(list.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn load_args(list: &[&str]) -> Result<Config, ConfigError> {
    load_from(args(list), &no_env)
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_from(args(&[]), &env_of(pairs))
}

fn load_file(text: &str) -> Result<Config, ConfigError> {
    load_with_file_text(args(&[]), "test.toml", text, &no_env)
}

/// The error's text and its key; panics if loading succeeded.
fn err_of(r: Result<Config, ConfigError>) -> (String, Option<&'static str>) {
    let e = r.expect_err("expected a configuration error");
    assert_eq!(exit_code(&e), 2, "{e}");
    (e.to_string(), e.key())
}

// --- defaults ---------------------------------------------------------------

#[test]
fn defaults_with_no_input() {
    let cfg = load_args(&[]).unwrap();
    assert_eq!(cfg, Config::default());
    assert_eq!(
        cfg.listen,
        vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        cfg.shards,
        std::thread::available_parallelism().unwrap().get()
    );
    assert_eq!(cfg.io, IoBackend::Auto);
    assert_eq!(cfg.ring_entries, 4096);
    assert_eq!(cfg.recv_buffer_size, 16 * 1024);
    assert_eq!(cfg.recv_buffers, 256);
    assert_eq!(cfg.max_connections, 100_000);
    assert_eq!(cfg.max_message_size, 64 * 1024);
    assert_eq!(cfg.max_frame_size, 64 * 1024);
    assert_eq!(cfg.max_header_bytes, 8 * 1024);
    assert_eq!(cfg.send_queue_limit, 1 << 20);
    assert_eq!(cfg.slow_consumer, SlowConsumerPolicy::Disconnect);
    assert_eq!(cfg.ping_interval, Duration::from_secs(30));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(90));
    assert_eq!(cfg.handshake_timeout, Duration::from_secs(10));
    assert_eq!(cfg.write_delay, Duration::ZERO);
    assert!(cfg.pin_cores);
    assert_eq!(cfg.log_level, "info");
    assert_eq!(cfg.log_format, LogFormat::Text);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(10));
    assert_eq!(cfg.allowed_origins, vec!["*".to_owned()]);
    assert_eq!(cfg.max_connections_per_ip, 0);
    assert_eq!(cfg.connect_rate_per_ip, 0);
    assert_eq!(cfg.connect_burst_per_ip, 20);
    assert_eq!(cfg.max_topics_per_connection, 256);
    assert_eq!(cfg.mux_error_budget, 20);
    Config::default().validate().unwrap();
}

// --- each layer -----------------------------------------------------------

#[test]
fn every_key_from_flags() {
    let cfg = load_args(&[
        "--listen",
        "0.0.0.0:9000",
        "--listen",
        "[::1]:9001",
        "--shards",
        "3",
        "--io",
        "epoll",
        "--ring-entries",
        "256",
        "--recv-buffer-size",
        "4KiB",
        "--recv-buffers",
        "64",
        "--max-connections",
        "500",
        "--max-message-size",
        "1MiB",
        "--max-frame-size",
        "16KiB",
        "--max-header-bytes",
        "4096",
        "--send-queue-limit",
        "2MiB",
        "--slow-consumer",
        "drop",
        "--ping-interval",
        "500ms",
        "--idle-timeout",
        "2m",
        "--handshake-timeout",
        "3s",
        "--no-pin-cores",
        "--log-level",
        "ringcast=debug,info",
        "--log-format",
        "json",
        "--drain-timeout",
        "3s",
        "--allowed-origins",
        "https://a.example, http://127.0.0.1:8080",
        "--max-connections-per-ip",
        "7",
        "--connect-rate-per-ip",
        "5",
        "--connect-burst-per-ip",
        "9",
        "--max-topics-per-connection",
        "3",
        "--mux-error-budget",
        "0",
    ])
    .unwrap();
    assert_eq!(
        cfg.listen,
        vec![
            "0.0.0.0:9000".parse::<SocketAddr>().unwrap(),
            "[::1]:9001".parse().unwrap()
        ]
    );
    assert_eq!(cfg.shards, 3);
    assert_eq!(cfg.io, IoBackend::Epoll);
    assert_eq!(cfg.ring_entries, 256);
    assert_eq!(cfg.recv_buffer_size, 4096);
    assert_eq!(cfg.recv_buffers, 64);
    assert_eq!(cfg.max_connections, 500);
    assert_eq!(cfg.max_message_size, 1 << 20);
    assert_eq!(cfg.max_frame_size, 16 << 10);
    assert_eq!(cfg.max_header_bytes, 4096);
    assert_eq!(cfg.send_queue_limit, 2 << 20);
    assert_eq!(cfg.slow_consumer, SlowConsumerPolicy::Drop);
    assert_eq!(cfg.ping_interval, Duration::from_millis(500));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(120));
    assert_eq!(cfg.handshake_timeout, Duration::from_secs(3));
    assert!(!cfg.pin_cores);
    assert_eq!(cfg.log_level, "ringcast=debug,info");
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(3));
    assert_eq!(
        cfg.allowed_origins,
        vec![
            "https://a.example".to_owned(),
            "http://127.0.0.1:8080".to_owned()
        ]
    );
    assert_eq!(cfg.max_connections_per_ip, 7);
    assert_eq!(cfg.connect_rate_per_ip, 5);
    assert_eq!(cfg.connect_burst_per_ip, 9);
    assert_eq!(cfg.max_topics_per_connection, 3);
    assert_eq!(cfg.mux_error_budget, 0);
}

#[test]
fn every_key_from_env() {
    let pairs: Vec<(String, String)> = [
        ("listen", "127.0.0.1:1, 127.0.0.1:2"),
        ("shards", "2"),
        ("io", "uring"),
        ("ring_entries", "8"),
        ("recv_buffer_size", "512"),
        ("recv_buffers", "1"),
        ("max_connections", "100_000"),
        ("max_message_size", "128KiB"),
        ("max_frame_size", "128 KiB"),
        ("max_header_bytes", "1KiB"),
        ("send_queue_limit", "128KiB"),
        ("slow_consumer", "DROP"),
        ("ping_interval", "0"),
        ("idle_timeout", "0"),
        ("handshake_timeout", "1m"),
        ("write_delay", "5ms"),
        ("pin_cores", "off"),
        ("log_level", "warn"),
        ("log_format", "json"),
        ("drain_timeout", "1s"),
        ("drain_grace", "2s"),
        ("admin_listen", "127.0.0.1:9090"),
        ("allowed_origins", "*"),
        ("max_connections_per_ip", "100"),
        ("connect_rate_per_ip", "50"),
        ("connect_burst_per_ip", "60"),
        ("max_topics_per_connection", "10"),
        ("mux_error_budget", "5"),
        ("max_batch_bytes", "64KiB"),
        ("max_inbox_bytes", "8MiB"),
        ("http_idle_timeout", "5s"),
        ("http_max_requests_per_connection", "1000"),
        ("max_publish_batch_bytes", "1MiB"),
        ("max_publish_batch_items", "500"),
        ("jwt_hmac_secret", "s3cret"),
        ("jwt_hmac_secret_file", "/run/secrets/hmac"),
        ("jwt_public_key_file", "/etc/a.pem,/etc/b.pem"),
        ("jwks_file", "/etc/jwks.json"),
        ("jwks_url", "https://auth.example.com/.well-known/jwks.json"),
        ("jwt_audience", "app"),
        ("jwt_issuer", "https://auth.example.com"),
        ("jwt_leeway", "30s"),
        ("max_token_size", "16KiB"),
        ("api_key", "k1,k2"),
        ("api_key_file", "/run/secrets/api"),
        ("anonymous", "subscribe"),
        ("client_publish", "false"),
        ("client_publish_rate", "50"),
        ("client_publish_burst", "100"),
        ("history_size", "50"),
        ("history_ttl", "10m"),
        ("history_memory_limit", "64MiB"),
        ("max_recovery_publications", "500"),
        ("broker", "redis://:pw@127.0.0.1:6380/2"),
        ("broker_password_file", "/run/secrets/broker"),
        ("node_id", "edge-1"),
        ("broker_required", "true"),
        ("broker_optional", "yes"),
        ("broker_timeout", "5s"),
        ("broker_max_pending", "8MiB"),
        ("broker_prefix", "rc-prod"),
    ]
    .iter()
    .map(|(k, v)| (env_name(k), (*v).to_owned()))
    .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(refs.len(), KEYS.len());
    let cfg = load_env(&refs).unwrap();
    assert_eq!(cfg.max_batch_bytes, 64 << 10);
    assert_eq!(cfg.max_inbox_bytes, 8 << 20);
    assert_eq!(cfg.http_idle_timeout, Duration::from_secs(5));
    assert_eq!(cfg.http_max_requests_per_connection, 1000);
    assert_eq!(cfg.max_publish_batch_bytes, 1 << 20);
    assert_eq!(cfg.max_publish_batch_items, 500);
    assert_eq!(cfg.jwt_hmac_secret, Some(Secret("s3cret".into())));
    assert_eq!(cfg.jwt_public_key_file.len(), 2);
    assert_eq!(cfg.jwt_leeway, Duration::from_secs(30));
    assert_eq!(cfg.max_token_size, 16 << 10);
    assert_eq!(cfg.api_key.len(), 2);
    assert_eq!(cfg.anonymous, Some(crate::pubsub::Anonymous::Subscribe));
    assert!(!cfg.client_publish);
    let b = cfg.broker.as_ref().unwrap();
    assert_eq!((b.port, b.db, b.password.as_deref()), (6380, 2, Some("pw")));
    assert_eq!(cfg.node_id.as_deref(), Some("edge-1"));
    assert!(cfg.broker_required && cfg.broker_optional);
    assert_eq!(
        (
            cfg.broker_timeout,
            cfg.broker_max_pending,
            cfg.broker_prefix.as_str()
        ),
        (Duration::from_secs(5), 8 << 20, "rc-prod")
    );
    assert_eq!(
        (
            cfg.history_size,
            cfg.history_ttl,
            cfg.history_memory_limit,
            cfg.max_recovery_publications
        ),
        (50, Duration::from_secs(600), 64 << 20, 500)
    );
    assert_eq!(
        (cfg.client_publish_rate, cfg.client_publish_burst),
        (50, 100)
    );
    assert_eq!(cfg.listen.len(), 2);
    assert_eq!(cfg.shards, 2);
    assert_eq!(cfg.io, IoBackend::Uring);
    assert_eq!(cfg.ring_entries, 8);
    assert_eq!(cfg.recv_buffer_size, 512);
    assert_eq!(cfg.recv_buffers, 1);
    assert_eq!(cfg.max_connections, 100_000);
    assert_eq!(cfg.max_message_size, 128 << 10);
    assert_eq!(cfg.max_frame_size, 128 << 10);
    assert_eq!(cfg.max_header_bytes, 1024);
    assert_eq!(cfg.send_queue_limit, 128 << 10);
    assert_eq!(cfg.slow_consumer, SlowConsumerPolicy::Drop);
    assert_eq!(cfg.ping_interval, Duration::ZERO);
    assert_eq!(cfg.idle_timeout, Duration::ZERO);
    assert_eq!(cfg.handshake_timeout, Duration::from_secs(60));
    assert_eq!(cfg.write_delay, Duration::from_millis(5));
    assert!(!cfg.pin_cores);
    assert_eq!(cfg.log_level, "warn");
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(1));
    assert_eq!(cfg.max_connections_per_ip, 100);
    assert_eq!(cfg.connect_rate_per_ip, 50);
    assert_eq!(cfg.connect_burst_per_ip, 60);
    assert_eq!(cfg.max_topics_per_connection, 10);
    assert_eq!(cfg.mux_error_budget, 5);
}

#[test]
fn every_key_from_file() {
    let cfg = load_file(
        r#"
        listen = ["127.0.0.1:7000", "127.0.0.1:7001"]
        shards = 4
        io = "epoll"
        ring_entries = 1024
        recv_buffer_size = 8192
        recv_buffers = "2048"
        max_connections = 1_000
        max_message_size = "256KiB"
        max_frame_size = 65536
        max_header_bytes = "16KiB"
        send_queue_limit = "4MiB"
        slow_consumer = "drop"
        ping_interval = "10s"
        idle_timeout = "25s"
        handshake_timeout = "2s"
        pin_cores = false
        log_level = "debug"
        log_format = "json"
        drain_timeout = "30s"
        allowed_origins = ["https://a.example", "https://B.example:8443"]
        max_connections_per_ip = 10
        connect_rate_per_ip = "4"
        connect_burst_per_ip = 8
        max_topics_per_connection = 1000
        mux_error_budget = 1
        "#,
    )
    .unwrap();
    assert_eq!(cfg.listen.len(), 2);
    assert_eq!(cfg.shards, 4);
    assert_eq!(cfg.io, IoBackend::Epoll);
    assert_eq!(cfg.ring_entries, 1024);
    assert_eq!(cfg.recv_buffer_size, 8192);
    assert_eq!(cfg.recv_buffers, 2048);
    assert_eq!(cfg.max_connections, 1000);
    assert_eq!(cfg.max_message_size, 256 << 10);
    assert_eq!(cfg.max_frame_size, 64 << 10);
    assert_eq!(cfg.max_header_bytes, 16 << 10);
    assert_eq!(cfg.send_queue_limit, 4 << 20);
    assert_eq!(cfg.slow_consumer, SlowConsumerPolicy::Drop);
    assert_eq!(cfg.ping_interval, Duration::from_secs(10));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(25));
    assert_eq!(cfg.handshake_timeout, Duration::from_secs(2));
    assert!(!cfg.pin_cores);
    assert_eq!(cfg.log_level, "debug");
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.drain_timeout, Duration::from_secs(30));
    assert_eq!(
        cfg.allowed_origins,
        vec![
            "https://a.example".to_owned(),
            "https://b.example:8443".to_owned()
        ]
    );
    assert_eq!(cfg.max_connections_per_ip, 10);
    assert_eq!(cfg.connect_rate_per_ip, 4);
    assert_eq!(cfg.connect_burst_per_ip, 8);
    assert_eq!(cfg.max_topics_per_connection, 1000);
    assert_eq!(cfg.mux_error_budget, 1);
}

#[test]
fn origins_are_checked() {
    for bad in [
        "example.com",
        "https://a.example/",
        "https://a.example/path",
        "*, https://a.example",
        " , ",
    ] {
        let (msg, k) = err_of(load_env(&[("RINGCAST_ALLOWED_ORIGINS", bad)]));
        assert_eq!(k, Some("allowed_origins"), "{bad:?}: {msg}");
    }
    let (msg, k) = err_of(load_file("allowed_origins = []"));
    assert_eq!(k, Some("allowed_origins"), "{msg}");
}

#[test]
fn file_listen_may_be_a_single_string() {
    let cfg = load_file(r#"listen = "[::]:80""#).unwrap();
    assert_eq!(cfg.listen, vec!["[::]:80".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn real_file_via_flag_and_via_env() {
    let dir = std::env::temp_dir().join(format!("ringcast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.toml");
    std::fs::write(&path, "shards = 5\n").unwrap();
    let p = path.to_str().unwrap();
    assert_eq!(load_args(&["--config", p]).unwrap().shards, 5);
    assert_eq!(load_env(&[("RINGCAST_CONFIG", p)]).unwrap().shards, 5);
    std::fs::remove_dir_all(&dir).unwrap();

    let e = load_args(&["--config", p]).unwrap_err();
    assert!(matches!(e, ConfigError::ReadFile { .. }), "{e}");
    assert!(e.to_string().contains(p), "{e}");
    assert_eq!(exit_code(&e), 2);
}

// --- precedence -------------------------------------------------------------

#[test]
fn precedence_flag_over_env_over_file_over_default() {
    let toml = "max_message_size = \"256KiB\"\nshards = 6\nring_entries = 1024\n";
    let env = env_of(&[
        ("RINGCAST_MAX_MESSAGE_SIZE", "512KiB"),
        ("RINGCAST_SHARDS", "7"),
    ]);
    // All four layers for max_message_size: the flag wins.
    let cfg = load_with_file_text(
        args(&["--max-message-size", "128KiB"]),
        "f.toml",
        toml,
        &env,
    )
    .unwrap();
    assert_eq!(cfg.max_message_size, 128 << 10);
    // No flag: the environment wins over the file.
    assert_eq!(cfg.shards, 7);
    // Only the file: it wins over the default.
    assert_eq!(cfg.ring_entries, 1024);
    // Nothing: the default.
    assert_eq!(cfg.recv_buffers, 256);

    let cfg = load_with_file_text(args(&[]), "f.toml", toml, &env).unwrap();
    assert_eq!(cfg.max_message_size, 512 << 10);
    let cfg = load_with_file_text(args(&[]), "f.toml", toml, &no_env).unwrap();
    assert_eq!(cfg.max_message_size, 256 << 10);
    assert_eq!(cfg.shards, 6);
}

#[test]
fn the_systemd_units_own_combination_works() {
    // scripts/ringcast.service sets RINGCAST_LOG_FORMAT=json and runs with the example
    // file installed as /etc/ringcast.toml (log_format = "text"): the unit must win, and
    // an operator's RINGCAST_MAX_CONNECTIONS in a drop-in too.
    let unit = include_str!("../../scripts/ringcast.service");
    assert!(unit.contains("Environment=RINGCAST_LOG_FORMAT=json"));
    assert!(EXAMPLE_TOML.contains("log_format = \"text\""));
    let env = env_of(&[
        ("RINGCAST_LOG_FORMAT", "json"),
        ("RINGCAST_MAX_CONNECTIONS", "1000"),
    ]);
    let cfg = load_with_file_text(
        args(&["--config", "/etc/ringcast.toml"]),
        "/etc/ringcast.toml",
        EXAMPLE_TOML,
        &env,
    )
    .unwrap();
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.max_connections, 1000);
}

#[test]
fn pin_cores_flags_and_last_one_wins() {
    let env = env_of(&[("RINGCAST_PIN_CORES", "false")]);
    assert!(!load_from(args(&[]), &env).unwrap().pin_cores);
    assert!(load_from(args(&["--pin-cores"]), &env).unwrap().pin_cores);
    assert!(!load_args(&["--no-pin-cores"]).unwrap().pin_cores);
    assert!(
        !load_args(&["--pin-cores", "--no-pin-cores"])
            .unwrap()
            .pin_cores
    );
    assert!(
        load_args(&["--no-pin-cores", "--pin-cores"])
            .unwrap()
            .pin_cores
    );
}

#[test]
fn frame_size_defaults_to_message_size_from_any_layer() {
    let cfg = load_env(&[("RINGCAST_MAX_MESSAGE_SIZE", "512KiB")]).unwrap();
    assert_eq!(cfg.max_frame_size, 512 << 10);
    let cfg = load_args(&["--max-message-size", "1000"]).unwrap();
    assert_eq!(cfg.max_frame_size, 1000);
}

#[test]
fn malformed_value_in_overridden_layer_is_still_an_error() {
    let env = env_of(&[("RINGCAST_SHARDS", "four")]);
    let (msg, key) = err_of(load_from(args(&["--shards", "4"]), &env));
    assert_eq!(key, Some("shards"));
    assert!(msg.contains("from RINGCAST_SHARDS"), "{msg}");
}

#[test]
fn empty_env_var_counts_as_unset() {
    let cfg = load_env(&[("RINGCAST_SHARDS", ""), ("RINGCAST_CONFIG", " ")]).unwrap();
    assert_eq!(cfg.shards, Config::default().shards);
}

// --- value syntax -----------------------------------------------------------

#[test]
fn size_parsing() {
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("65536"), Ok(65536));
    assert_eq!(parse_size("64_000"), Ok(64_000));
    assert_eq!(parse_size("512B"), Ok(512));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("64 kib"), Ok(65536));
    assert_eq!(parse_size(" 1MiB "), Ok(1 << 20));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    for bad in [
        "", "KiB", "-1", "1.5MiB", "64 KB?", "0x10", "_1", "1 KiB B", "one",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} parsed");
    }
    for ambiguous in ["64KB", "1MB", "1GB", "10k", "1M"] {
        let e = parse_size(ambiguous).unwrap_err();
        assert!(e.contains("KiB, MiB or GiB"), "{ambiguous}: {e}");
    }
    assert!(parse_size("99999999999999999999").is_err());
    assert_eq!(parse_size("17179869184GiB"), Err("is too large".to_owned()));
}

#[test]
fn duration_parsing() {
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    for bad in ["", "30", "-1s", "soon", "1 fortnight"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
    }
    // TOML integers: 0 is fine, any other bare number is refused.
    assert_eq!(
        load_file("ping_interval = 0").unwrap().ping_interval,
        Duration::ZERO
    );
    let (msg, key) = err_of(load_file("ping_interval = 30"));
    assert_eq!(key, Some("ping_interval"));
    assert!(msg.contains("no unit"), "{msg}");
}

#[test]
fn the_error_message_from_the_brief() {
    let (msg, key) = err_of(load_env(&[("RINGCAST_MAX_MESSAGE_SIZE", "64 KB?")]));
    assert_eq!(key, Some("max_message_size"));
    assert_eq!(
        msg,
        "invalid configuration: max_message_size = \"64 KB?\" (from RINGCAST_MAX_MESSAGE_SIZE): \
         expected a size such as 65536, 64KiB or 1MiB"
    );
}

#[test]
fn parse_errors_name_key_and_source_in_every_layer() {
    // key, a malformed value
    let cases: [(&str, &str); 61] = [
        ("listen", "localhost:8080"),
        ("shards", "many"),
        ("io", "kqueue"),
        ("ring_entries", "4k"),
        ("recv_buffer_size", "16 KB"),
        ("recv_buffers", "1.5"),
        ("max_connections", "1,000"),
        ("max_message_size", "lots"),
        ("max_frame_size", "1e6"),
        ("max_header_bytes", "8 kilobytes"),
        ("send_queue_limit", "1 MB"),
        ("slow_consumer", "block"),
        ("ping_interval", "30"),
        ("idle_timeout", "forever"),
        ("handshake_timeout", "10 parsecs"),
        ("write_delay", "2s"),
        ("pin_cores", "maybe"),
        ("log_level", ""), // empty flag value: refused by validation
        ("log_format", "xml"),
        ("drain_timeout", "soon"),
        ("drain_grace", "a bit"),
        ("admin_listen", "localhost:9090"),
        ("allowed_origins", "example.com"),
        ("max_connections_per_ip", "1e3"),
        ("connect_rate_per_ip", "10/s"),
        ("connect_burst_per_ip", "ten"),
        ("max_topics_per_connection", "lots"),
        ("mux_error_budget", "1.5"),
        ("max_batch_bytes", "big"),
        ("max_inbox_bytes", "1 MB"),
        ("http_idle_timeout", "a while"),
        ("http_max_requests_per_connection", "many"),
        ("max_publish_batch_bytes", "4 MB"),
        ("max_publish_batch_items", "10k"),
        ("jwt_hmac_secret", " "),
        ("jwt_hmac_secret_file", " "),
        ("jwt_public_key_file", ","),
        ("jwks_file", " "),
        ("jwks_url", "ftp://x"),
        ("jwt_audience", " "),
        ("jwt_issuer", " "),
        ("jwt_leeway", "a while"),
        ("max_token_size", "8 KB"),
        ("api_key", " , "),
        ("api_key_file", " "),
        ("anonymous", "everyone"),
        ("client_publish", "perhaps"),
        ("client_publish_rate", "fast"),
        ("client_publish_burst", "a few"),
        ("history_size", "some"),
        ("history_ttl", "forever"),
        ("history_memory_limit", "lots"),
        ("max_recovery_publications", "1e3"),
        ("broker", "localhost:6379"),
        ("broker_password_file", " "),
        ("node_id", "a b"),
        ("broker_required", "perhaps"),
        ("broker_optional", "sometimes"),
        ("broker_timeout", "soon"),
        ("broker_max_pending", "lots"),
        ("broker_prefix", "a.b"),
    ];
    assert_eq!(cases.len(), KEYS.len());
    for (key, bad) in cases {
        // flag
        let flag = flag_name(key);
        let flag_args = Some(vec![flag.clone(), bad.to_owned()]);
        if let Some(a) = flag_args {
            let mut full = vec!["ringcast".to_owned()];
            full.extend(a);
            let (msg, k) = err_of(load_from(full, &no_env));
            assert_eq!(k, Some(key), "{msg}");
            assert!(msg.contains(&format!("from {flag}")), "{key}: {msg}");
            assert!(
                msg.starts_with(&format!("invalid configuration: {key} = ")),
                "{msg}"
            );
        }
        if bad.is_empty() {
            continue; // an empty env var is unset; an empty TOML string is checked below
        }
        // environment (a blank variable counts as unset)
        if !bad.trim().is_empty() {
            let (msg, k) = err_of(load_env(&[(&env_name(key), bad)]));
            assert_eq!(k, Some(key), "{msg}");
            assert!(
                msg.contains(&format!("from {}", env_name(key))),
                "{key}: {msg}"
            );
        }
        // file
        let (msg, k) = err_of(load_file(&format!("{key} = {bad:?}")));
        assert_eq!(k, Some(key), "{msg}");
        assert!(msg.contains("from test.toml"), "{key}: {msg}");
    }
    let (msg, k) = err_of(load_file("log_level = \"\""));
    assert_eq!(k, Some("log_level"), "{msg}");
}

#[test]
fn file_values_of_the_wrong_type_name_the_key() {
    for (text, key) in [
        ("shards = 2.5", "shards"),
        ("pin_cores = \"sometimes\"", "pin_cores"),
        ("listen = [1, 2]", "listen"),
        ("io = { kind = \"epoll\" }", "io"),
        ("max_message_size = -1", "max_message_size"),
        ("log_level = 3", "log_level"),
    ] {
        let (msg, k) = err_of(load_file(text));
        assert_eq!(k, Some(key), "{text}: {msg}");
        assert!(msg.contains("expected"), "{text}: {msg}");
    }
    let (msg, _) = err_of(load_file("shards = 2.5"));
    assert_eq!(
        msg,
        "invalid configuration: shards = 2.5 (from test.toml): \
         a TOML float is not accepted here; expected a whole number such as 4096"
    );
}

// --- validation ---------------------------------------------------------------

#[test]
fn range_errors_name_their_key() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["--shards", "0"], "shards", "between 1 and 1024"),
        (&["--shards", "5000"], "shards", "between 1 and 1024"),
        (&["--ring-entries", "1000"], "ring_entries", "power of two"),
        (&["--ring-entries", "4"], "ring_entries", "power of two"),
        (&["--ring-entries", "65536"], "ring_entries", "power of two"),
        (
            &["--recv-buffer-size", "256"],
            "recv_buffer_size",
            "between 512 and 1MiB",
        ),
        (
            &["--recv-buffer-size", "2MiB"],
            "recv_buffer_size",
            "between",
        ),
        (&["--recv-buffers", "1000"], "recv_buffers", "power of two"),
        (&["--recv-buffers", "0"], "recv_buffers", "power of two"),
        (&["--max-connections", "0"], "max_connections", "between"),
        (
            &["--max-message-size", "100"],
            "max_message_size",
            "between 125 and 1GiB",
        ),
        (
            &["--max-message-size", "2GiB"],
            "max_message_size",
            "between",
        ),
        (&["--max-frame-size", "100"], "max_frame_size", "between"),
        (
            &["--max-header-bytes", "100"],
            "max_header_bytes",
            "between 256 and 1MiB",
        ),
        (
            &["--ping-interval", "1ms"],
            "ping_interval",
            "between 10ms and 1day",
        ),
        (
            &["--idle-timeout", "2days"],
            "idle_timeout",
            "or 0 to disable",
        ),
        (
            &["--handshake-timeout", "0"],
            "handshake_timeout",
            "between",
        ),
        (
            &["--log-level", "info,x[[[=debug"],
            "log_level",
            "not a log filter",
        ),
        (
            &["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1"],
            "listen",
            "twice",
        ),
    ];
    for (argv, key, problem) in cases {
        let (msg, k) = err_of(load_args(argv));
        assert_eq!(k, Some(*key), "{argv:?}: {msg}");
        assert!(msg.contains(problem), "{argv:?}: {msg}");
        assert!(
            msg.contains(&format!("from {}", flag_name(key))),
            "{argv:?}: {msg}"
        );
    }
    // A value that is out of range only where it is overridden is fine.
    let env = env_of(&[("RINGCAST_SHARDS", "0")]);
    assert_eq!(load_from(args(&["--shards", "2"]), &env).unwrap().shards, 2);
}

#[test]
fn frame_size_must_not_exceed_message_size() {
    let (msg, k) = err_of(load_args(&["--max-frame-size", "1MiB"]));
    assert_eq!(k, Some("max_frame_size"));
    assert_eq!(
        msg,
        "invalid configuration: max_frame_size = \"1MiB\" (from --max-frame-size): \
         must not exceed max_message_size = 64KiB (default)"
    );
    let e = load_args(&["--max-frame-size", "1MiB"]).unwrap_err();
    assert!(matches!(
        e,
        ConfigError::Conflict {
            other: "max_message_size",
            ..
        }
    ));
    // Equal is fine.
    load_args(&["--max-frame-size", "64KiB"]).unwrap();
}

#[test]
fn send_queue_must_hold_one_largest_message() {
    let (msg, k) = err_of(load_env(&[
        ("RINGCAST_MAX_MESSAGE_SIZE", "4MiB"),
        ("RINGCAST_SEND_QUEUE_LIMIT", "1MiB"),
    ]));
    assert_eq!(k, Some("send_queue_limit"));
    assert!(msg.contains("from RINGCAST_SEND_QUEUE_LIMIT"), "{msg}");
    assert!(
        msg.contains("max_message_size = \"4MiB\" (from RINGCAST_MAX_MESSAGE_SIZE)"),
        "{msg}"
    );
    // Left to its default, the queue limit grows with the message size.
    let cfg = load_args(&["--max-message-size", "4MiB"]).unwrap();
    assert_eq!(cfg.send_queue_limit, 4 << 20);
    assert_eq!(load_args(&[]).unwrap().send_queue_limit, 1 << 20);
}

#[test]
fn idle_timeout_must_exceed_ping_interval_unless_disabled() {
    let (msg, k) = err_of(load_args(&["--idle-timeout", "20s"]));
    assert_eq!(k, Some("idle_timeout"));
    assert!(
        msg.contains("must be longer than ping_interval = 30s (default)"),
        "{msg}"
    );
    let (_, k) = err_of(load_args(&["--idle-timeout", "30s"]));
    assert_eq!(k, Some("idle_timeout"));
    load_args(&["--idle-timeout", "20s", "--ping-interval", "0"]).unwrap();
    load_args(&["--idle-timeout", "0", "--ping-interval", "1m"]).unwrap();
    load_args(&["--idle-timeout", "31s"]).unwrap();
}

#[test]
fn validate_a_config_built_in_code() {
    let cfg = Config {
        recv_buffers: 3,
        ..Config::default()
    };
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.key(), Some("recv_buffers"));
    assert!(e.to_string().contains("(set in code)"), "{e}");
    let cfg = Config {
        listen: vec![],
        ..Config::default()
    };
    assert_eq!(cfg.validate().unwrap_err().key(), Some("listen"));
}

#[test]
fn unknown_file_key_is_an_error_naming_it() {
    let e = load_file("max_mesage_size = 1024").unwrap_err();
    assert!(matches!(e, ConfigError::ParseFile { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("max_mesage_size"), "{msg}");
    assert!(msg.contains("test.toml"), "{msg}");
    assert_eq!(exit_code(&e), 2);
    // Syntax errors too.
    let e = load_file("shards = = 2").unwrap_err();
    assert!(matches!(e, ConfigError::ParseFile { .. }), "{e}");
}

// --- command line -------------------------------------------------------------

#[test]
fn help_and_version_exit_zero_usage_errors_exit_two() {
    for flag in ["--help", "-h", "--version", "-V"] {
        let e = load_args(&[flag]).unwrap_err();
        assert!(matches!(e, ConfigError::Cli(_)));
        assert_eq!(exit_code(&e), 0, "{flag}");
    }
    for bad in [&["--no-such-flag"][..], &["--shards"], &["positional"]] {
        let e = load_args(bad).unwrap_err();
        assert!(matches!(e, ConfigError::Cli(_)));
        assert_eq!(exit_code(&e), 2, "{bad:?}");
    }
}

#[test]
fn help_mentions_every_knob_with_env_toml_and_default() {
    // Collapse the wrapping so that phrases split across lines still match.
    let help = help_text().split_whitespace().collect::<Vec<_>>().join(" ");
    for key in KEYS {
        assert!(
            help.contains(&flag_name(key)),
            "--help lacks {}",
            flag_name(key)
        );
        assert!(
            help.contains(&env_name(key)),
            "--help lacks {}",
            env_name(key)
        );
        assert!(
            help.contains(&format!("toml: {key}")),
            "--help lacks toml key {key}"
        );
    }
    assert!(help.contains("--config"));
    assert!(help.contains("--no-pin-cores"));
    assert!(help.matches("[default: ").count() >= KEYS.len(), "{help}");
}

// --- docs -------------------------------------------------------------------

#[test]
fn example_file_parses_and_matches_the_defaults() {
    let cfg = load_with_file_text(
        args(&[]),
        "docs/ringcast.example.toml",
        EXAMPLE_TOML,
        &no_env,
    )
    .unwrap();
    assert_eq!(cfg, Config::default());
    for key in KEYS {
        assert!(
            EXAMPLE_TOML.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
            }),
            "docs/ringcast.example.toml does not show {key}"
        );
    }
}

#[test]
fn configuration_doc_lists_every_knob() {
    for key in KEYS {
        let row = CONFIG_DOC
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for {key}"));
        assert!(row.contains(&format!("`{}", flag_name(key))), "{row}");
        assert!(row.contains(&format!("`{}`", env_name(key))), "{row}");
    }
}

#[test]
fn broker_keys_are_checked() {
    let e = load_from(args(&["--broker-required"]), &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broker"), "{e}");
    let e = load_from(
        args(&["--broker", "nats://h:1", "--broker-timeout", "10ms"]),
        &no_env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("broker_timeout") || e.contains("broker-timeout"),
        "{e}"
    );
    let e = load_from(args(&["--broker", "redis://u:hunter2@h:99999"]), &no_env)
        .unwrap_err()
        .to_string();
    assert!(!e.contains("hunter2"), "the password never shows: {e}");
    let cfg = load_from(args(&["--broker", "nats://tok@127.0.0.1:4222"]), &no_env).unwrap();
    assert_eq!(
        cfg.broker.map(|b| b.to_string()).as_deref(),
        Some("nats://***@127.0.0.1:4222")
    );
}

// --- open-file limit -------------------------------------------------------

#[test]
fn raise_nofile_limit_sets_soft_to_hard() {
    let (soft, hard) = raise_nofile_limit(1000).unwrap();
    assert_eq!(soft, hard);
    let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    assert_eq!(now.current, Some(soft));
    assert_eq!(nofile_needed(1000), 1000 + NOFILE_SLACK);
    // Idempotent.
    assert_eq!(raise_nofile_limit(1000).unwrap(), (soft, hard));
}

#[test]
fn batch_and_inbox_bounds() {
    let d = Config::default();
    assert_eq!(d.max_batch_bytes, 128 << 10);
    assert_eq!(d.max_inbox_bytes, 64 << 20);
    assert!(
        load_args(&["--max-batch-bytes", "512"]).is_err(),
        "below 1 KiB"
    );
    assert!(
        load_args(&["--max-batch-bytes", "1MiB", "--max-inbox-bytes", "512KiB"]).is_err(),
        "an inbox holds at least one batch"
    );
    let cfg = load_args(&["--max-batch-bytes", "256KiB", "--max-inbox-bytes", "1MiB"]).unwrap();
    assert_eq!(
        (cfg.max_batch_bytes, cfg.max_inbox_bytes),
        (256 << 10, 1 << 20)
    );
}

#[test]
fn http_keepalive_and_batch_publish_keys() {
    let d = Config::default();
    assert_eq!(d.http_idle_timeout, Duration::from_secs(30));
    assert_eq!(d.http_max_requests_per_connection, 0);
    assert_eq!(d.max_publish_batch_bytes, 4 << 20);
    assert_eq!(d.max_publish_batch_items, 10_000);
    let cfg = load_args(&[
        "--http-idle-timeout",
        "0",
        "--http-max-requests-per-connection",
        "7",
        "--max-publish-batch-bytes",
        "64KiB",
        "--max-publish-batch-items",
        "3",
    ])
    .unwrap();
    assert_eq!(
        cfg.http_idle_timeout,
        Duration::ZERO,
        "0 turns keep-alive off"
    );
    assert_eq!(cfg.http_max_requests_per_connection, 7);
    assert_eq!(cfg.max_publish_batch_bytes, 64 << 10);
    assert_eq!(cfg.max_publish_batch_items, 3);
    let cfg = load_file(
        "http_idle_timeout = \"2s\"\nhttp_max_requests_per_connection = 9\n\
         max_publish_batch_bytes = \"2MiB\"\nmax_publish_batch_items = 20\n",
    )
    .unwrap();
    assert_eq!(
        (
            cfg.http_idle_timeout,
            cfg.http_max_requests_per_connection,
            cfg.max_publish_batch_bytes,
            cfg.max_publish_batch_items
        ),
        (Duration::from_secs(2), 9, 2 << 20, 20)
    );
    for (argv, key) in [
        (&["--http-idle-timeout", "1ms"][..], "http_idle_timeout"),
        (&["--http-idle-timeout", "2days"], "http_idle_timeout"),
        (
            &["--max-publish-batch-bytes", "512"],
            "max_publish_batch_bytes",
        ),
        (
            &["--max-publish-batch-bytes", "2GiB"],
            "max_publish_batch_bytes",
        ),
        (
            &["--max-publish-batch-items", "0"],
            "max_publish_batch_items",
        ),
        (
            &["--max-publish-batch-items", "1000001"],
            "max_publish_batch_items",
        ),
        (
            &["--http-max-requests-per-connection", "4294967296"],
            "http_max_requests_per_connection",
        ),
    ] {
        let (msg, k) = err_of(load_args(argv));
        assert_eq!(k, Some(key), "{argv:?}: {msg}");
        assert!(msg.contains(&format!("from {}", flag_name(key))), "{msg}");
    }
}

#[test]
fn log_level_takes_levels_and_directives_only() {
    for ok in [
        "info",
        "WARN",
        "off",
        "ringcast=debug,info",
        "ringcast::shard=trace",
        "h2=off,debug",
    ] {
        assert!(load_env(&[("RINGCAST_LOG_LEVEL", ok)]).is_ok(), "{ok}");
    }
    for bad in ["verbose", "inf", "info,verbose", "=debug", "ringcast=loud"] {
        let (msg, k) = err_of(load_env(&[("RINGCAST_LOG_LEVEL", bad)]));
        assert_eq!(k, Some("log_level"), "{bad}: {msg}");
        assert!(
            msg.contains("not a log level") || msg.contains("log filter"),
            "{msg}"
        );
    }
}

#[test]
fn booleans_have_one_syntax_in_every_layer() {
    for (argv, want) in [
        (&["--pin-cores"][..], true),
        (&["--pin-cores", "false"][..], false),
        (&["--pin-cores", "off"][..], false),
        (&["--pin-cores=no"][..], false),
        (&["--no-pin-cores"][..], false),
        (&["--pin-cores", "true"][..], true),
    ] {
        assert_eq!(load_args(argv).unwrap().pin_cores, want, "{argv:?}");
    }
    assert!(
        !load_env(&[("RINGCAST_PIN_CORES", "false")])
            .unwrap()
            .pin_cores
    );
    assert!(!load_file("pin_cores = false").unwrap().pin_cores);
    assert!(!load_file("pin_cores = \"off\"").unwrap().pin_cores);
}

#[test]
fn print_config_round_trips_and_redacts_secrets() {
    let env = env_of(&[("RINGCAST_MAX_CONNECTIONS", "77")]);
    let argv = args(&[
        "--print-config",
        "--shards",
        "3",
        "--jwt-hmac-secret",
        "very-secret-value",
        "--api-key",
        "key-1",
        "--jwt-public-key-file",
        "/etc/a.pem",
    ]);
    let text = match load_with_file_text(
        argv,
        "f.toml",
        "ring_entries = 512\n[namespaces.chat]\nanonymous = \"subscribe\"\n",
        &env,
    ) {
        Err(ConfigError::Report(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(
        !text.contains("very-secret-value") && !text.contains("key-1"),
        "{text}"
    );
    assert!(
        text.contains("jwt_hmac_secret = \"<redacted>\"  # --jwt-hmac-secret"),
        "{text}"
    );
    assert!(text.contains("shards = 3  # --shards"), "{text}");
    assert!(
        text.contains("max_connections = 77  # RINGCAST_MAX_CONNECTIONS"),
        "{text}"
    );
    assert!(text.contains("ring_entries = 512  # f.toml"), "{text}");
    assert!(
        text.contains("[namespaces.chat]\nanonymous = \"subscribe\""),
        "{text}"
    );
    assert!(
        !text.contains(print::NO_PRINTER_MARK),
        "a key has no printer: {text}"
    );
    // Pasted back as a file (without the secrets), it gives the same configuration.
    let pasted: String = text
        .lines()
        .filter(|l| !l.contains("<redacted>"))
        .collect::<Vec<_>>()
        .join("\n");
    let again = load_with_file_text(args(&[]), "printed.toml", &pasted, &no_env).unwrap();
    let first = load_with_file_text(
        args(&[
            "--shards",
            "3",
            "--jwt-hmac-secret",
            "x",
            "--jwt-public-key-file",
            "/etc/a.pem",
        ]),
        "f.toml",
        "ring_entries = 512\n[namespaces.chat]\nanonymous = \"subscribe\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(again.shards, first.shards);
    assert_eq!(again.max_connections, first.max_connections);
    assert_eq!(again.ring_entries, first.ring_entries);
    assert_eq!(again.idle_timeout, first.idle_timeout);
    assert_eq!(again.namespaces, first.namespaces);
    assert_eq!(again.jwt_public_key_file, first.jwt_public_key_file);
}

#[test]
fn check_config_validates_key_files_too() {
    match load_args(&["--check-config"]) {
        Err(ConfigError::Report(t)) => assert!(t.is_empty()),
        other => panic!("{other:?}"),
    }
    let (msg, _) = err_of(load_args(&[
        "--check-config",
        "--jwt-public-key-file",
        "/nonexistent/key.pem",
    ]));
    assert!(msg.contains("/nonexistent/key.pem"), "{msg}");
    assert_eq!(
        exit_code(
            &load_args(&[
                "--check-config",
                "--jwt-public-key-file",
                "/nonexistent/key.pem"
            ])
            .unwrap_err()
        ),
        2
    );
    let (msg, k) = err_of(load_args(&["--check-config", "--shards", "0"]));
    assert_eq!(k, Some("shards"), "{msg}");
}
