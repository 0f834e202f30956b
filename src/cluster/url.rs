//! The `broker` key: which broker, where, and with what credentials (pure, so that the
//! configuration can validate it without starting anything).

use std::fmt;

/// Which broker a node shares its topics through.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Redis or NATS.
    pub kind: BrokerKind,
    /// Host name or address.
    pub host: String,
    /// TCP port (default 6379 for Redis, 4222 for NATS).
    pub port: u16,
    /// The user name, when the URL names one.
    pub user: Option<String>,
    /// The password (Redis, NATS user/password) or token (NATS without a user), from the
    /// URL or `--broker-password-file`. Never printed.
    pub password: Option<String>,
    /// Redis database number (`/db`); 0 otherwise.
    pub db: u32,
}

/// The broker's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Redis pub/sub (with Redis as sequencer and history store for topics with history).
    Redis,
    /// NATS core pub/sub.
    Nats,
}

impl BrokerKind {
    /// The label value in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The URL without its password (logs, `--print-config`).
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.as_str())?;
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, Some(_)) => write!(f, "***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if self.kind == BrokerKind::Redis && self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl BrokerUrl {
    /// Parses `redis://[user:password@]host[:port][/db]` or
    /// `nats://[token@|user:password@]host[:port]`. The error says what is wrong, without
    /// repeating the password.
    pub fn parse(s: &str) -> Result<BrokerUrl, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("expected redis://host:port or nats://host:port")?;
        let kind = match scheme {
            "redis" => BrokerKind::Redis,
            "nats" => BrokerKind::Nats,
            "rediss" | "tls" => {
                return Err(format!(
                    "{scheme}:// (TLS) is not supported yet: use redis:// or nats:// over a trusted network or a TLS tunnel"
                ));
            }
            other => return Err(format!("unknown scheme {other:?}: expected redis or nats")),
        };
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, path) = match hostpart.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (hostpart, None),
        };
        let db = match (kind, path) {
            (_, None) | (_, Some("")) => 0,
            (BrokerKind::Redis, Some(p)) => p
                .parse::<u32>()
                .map_err(|_| format!("database {p:?} is not a number"))?,
            (BrokerKind::Nats, Some(p)) => return Err(format!("a NATS URL has no path ({p:?})")),
        };
        let default_port = match kind {
            BrokerKind::Redis => 6379,
            BrokerKind::Nats => 4222,
        };
        let (host, port) = split_host_port(hostport, default_port)?;
        let (user, password) = match auth {
            None | Some("") => (None, None),
            Some(a) => match a.split_once(':') {
                Some(("", p)) => (None, Some(p.to_owned())),
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                // NATS: a bare token; Redis: a bare password (the `default` user).
                None => (None, Some(a.to_owned())),
            },
        };
        Ok(BrokerUrl {
            kind,
            host,
            port,
            user,
            password,
            db,
        })
    }
}

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unclosed [ in the host")?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err("expected :port after ]".to_owned()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(format!(
            "host {host:?} has a character a host name cannot have"
        ));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not a port number (1-65535)")),
            Ok(n) => n,
        },
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_brokers() {
        let u = BrokerUrl::parse("redis://127.0.0.1:7000/3").expect("parses");
        assert_eq!(
            (u.kind, u.host.as_str(), u.port, u.db),
            (BrokerKind::Redis, "127.0.0.1", 7000, 3)
        );
        let u = BrokerUrl::parse("redis://:s3cret@localhost").expect("parses");
        assert_eq!(
            (u.port, u.password.as_deref(), u.user),
            (6379, Some("s3cret"), None)
        );
        let u = BrokerUrl::parse("nats://tok@[::1]:4300").expect("parses");
        assert_eq!(
            (u.kind, u.host.as_str(), u.port),
            (BrokerKind::Nats, "::1", 4300)
        );
        assert_eq!(u.password.as_deref(), Some("tok"));
        let u = BrokerUrl::parse("nats://ann:pw@h").expect("parses");
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref(), u.port),
            (Some("ann"), Some("pw"), 4222)
        );
    }

    #[test]
    fn display_hides_the_password() {
        let u = BrokerUrl::parse("redis://bob:hunter2@h:1/2").expect("parses");
        assert_eq!(u.to_string(), "redis://bob:***@h:1/2");
        assert!(!format!("{u:?}").contains("hunter2"));
    }

    #[test]
    fn refuses_what_is_not_a_broker_url() {
        for bad in [
            "localhost:6379",
            "http://h:1",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:1/x",
            "nats://h:1/x",
            "redis://h h:1",
            "rediss://h:1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
