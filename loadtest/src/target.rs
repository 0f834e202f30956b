//! Where the generator connects: `ws://` and `http://` URLs, the `{topic}`
//! template, and the loopback-only policy (a non-loopback host is refused
//! unless the user passed `--allow-remote`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The placeholder replaced by `t{k}` in URL templates.
pub const TOPIC_PLACEHOLDER: &str = "{topic}";

/// URL scheme of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `ws://`: WebSocket upgrade.
    Ws,
    /// `http://`: plain HTTP requests (POST publishing).
    Http,
}

/// A parsed, resolved target URL whose path may contain `{topic}`.
#[derive(Clone, Debug)]
pub struct Target {
    /// Scheme.
    pub scheme: Scheme,
    /// Host as written (for the Host header), with `:port` when not the default.
    pub host_header: String,
    /// Resolved address to connect to.
    pub addr: SocketAddr,
    /// Path and query, possibly containing `{topic}`.
    pub path_template: String,
}

/// Topic name for index k.
pub fn topic_name(k: usize) -> String {
    format!("t{k}")
}

impl Target {
    /// Parses `ws://host[:port]/path?query` or `http://...`; resolves the host and
    /// refuses non-loopback addresses unless `allow_remote`.
    pub fn parse(url: &str, allow_remote: bool) -> Result<Target, String> {
        let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("ws://") {
            (Scheme::Ws, r, 80)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r, 80)
        } else if url.starts_with("wss://") || url.starts_with("https://") {
            return Err(format!("{url}: TLS is not supported; use ws:// or http://"));
        } else {
            return Err(format!("{url}: expected a ws:// or http:// URL"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: missing or unsupported host"));
        }
        let (host, port) = split_host_port(authority, default_port)
            .ok_or_else(|| format!("{url}: bad host or port"))?;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .collect();
        // Prefer IPv4 (source-address spreading is IPv4 only).
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{url}: {host} resolved to no address"))?;
        if !allow_remote && !is_loopback(addr.ip()) {
            return Err(format!(
                "{url}: {} is not a loopback address; pass --allow-remote to target another host",
                addr.ip()
            ));
        }
        Ok(Target {
            scheme,
            host_header: authority.to_string(),
            addr,
            path_template: path,
        })
    }

    /// Whether the path contains `{topic}`.
    pub fn has_topic(&self) -> bool {
        self.path_template.contains(TOPIC_PLACEHOLDER)
    }

    /// The request path for topic k (`{topic}` -> `t{k}`).
    pub fn path_for(&self, topic: usize) -> String {
        if self.has_topic() {
            self.path_template
                .replace(TOPIC_PLACEHOLDER, &topic_name(topic))
        } else {
            self.path_template.clone()
        }
    }
}

/// 127.0.0.0/8 or ::1 (and IPv4-mapped 127/8).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = rest[..end].to_string();
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), default_port)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_with_topic() {
        let t = Target::parse("ws://127.0.0.1:9001/ws/{topic}?echo=0", false).unwrap();
        assert_eq!(t.scheme, Scheme::Ws);
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.host_header, "127.0.0.1:9001");
        assert!(t.has_topic());
        assert_eq!(t.path_for(7), "/ws/t7?echo=0");
    }

    #[test]
    fn defaults_and_no_topic() {
        let t = Target::parse("http://127.0.0.2", false).unwrap();
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path_for(3), "/");
        let t = Target::parse("ws://127.0.0.1:1?x=1", false).unwrap();
        assert_eq!(t.path_for(0), "/?x=1");
        let t = Target::parse("ws://[::1]:5/a", false).unwrap();
        assert!(t.addr.is_ipv6());
        assert_eq!(t.path_for(0), "/a");
    }

    #[test]
    fn loopback_policy() {
        let err = Target::parse("ws://10.1.2.3:80/", false).unwrap_err();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(Target::parse("ws://10.1.2.3:80/", true).is_ok());
        assert!(Target::parse("ws://127.9.9.9:80/", false).is_ok());
    }

    #[test]
    fn rejects_bad_urls() {
        for u in [
            "wss://127.0.0.1/",
            "ftp://127.0.0.1/",
            "ws:///x",
            "ws://127.0.0.1:notaport/",
            "ws://u@127.0.0.1/",
            "ws://127.0.0.1:99999/",
        ] {
            assert!(Target::parse(u, false).is_err(), "{u}");
        }
    }

    #[test]
    fn topic_names() {
        assert_eq!(topic_name(0), "t0");
        assert_eq!(topic_name(999), "t999");
    }
}
