//! Reading a server's Prometheus text exposition (`--metrics-url`, e.g.
//! ringcast's `/metrics`) at the start and at the end of the measured window,
//! so that server-side counters (messages in and out, bus batches...) cover the
//! same interval as the generator's own figures. One blocking HTTP/1.1 GET per
//! scrape, with a deadline; a failed scrape is a note in the report, never a
//! failed run. The samples are kept raw (`name{labels}` -> value): what they
//! mean is for whoever reads the record (scripts/chart-bench.py).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::target::{Scheme, Target};

/// Largest response accepted (a metrics page is a few KiB).
const MAX_RESPONSE: usize = 4 << 20;

/// Where to scrape, and how long one scrape may take.
#[derive(Clone, Debug)]
pub struct Scraper {
    target: Target,
    url: String,
    timeout: Duration,
}

/// Two scrapes around the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricsReport {
    /// The URL scraped.
    pub url: String,
    /// Seconds between the two scrapes (what the deltas cover).
    pub interval_s: f64,
    /// Samples at the start of the window: `name{labels}` -> value.
    pub before: BTreeMap<String, f64>,
    /// Samples at the end of the window.
    pub after: BTreeMap<String, f64>,
}

impl Scraper {
    /// A scraper for an `http://` URL (loopback unless `allow_remote`).
    pub fn new(url: &str, allow_remote: bool) -> Result<Scraper, String> {
        let target = Target::parse(url, allow_remote)?;
        if target.scheme != Scheme::Http {
            return Err(format!("--metrics-url {url}: expected an http:// URL"));
        }
        Ok(Scraper {
            target,
            url: url.to_string(),
            timeout: Duration::from_secs(2),
        })
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One GET; the parsed samples, or why there are none.
    pub fn scrape(&self) -> Result<BTreeMap<String, f64>, String> {
        let deadline = Instant::now() + self.timeout;
        let body = get(&self.target, deadline).map_err(|e| format!("{}: {e}", self.url))?;
        Ok(parse(&body))
    }
}

/// GET the target's path; the body as text.
fn get(t: &Target, deadline: Instant) -> Result<String, String> {
    let path = t.path_for(0);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        t.host_header
    );
    exchange(t, req.as_bytes(), deadline)
}

/// POST `body` to `path` on the target's address (one connection, `Connection: close`),
/// with extra `Name: value` headers; the body of the `200` answer as text (`recover`
/// publishes its missed messages with this).
pub fn post(
    t: &Target,
    path: &str,
    headers: &[String],
    content_type: &str,
    body: &[u8],
    deadline: Instant,
) -> Result<String, String> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        t.host_header,
        body.len()
    );
    for h in headers {
        req.push_str(h.trim());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    exchange(t, &req, deadline)
}

/// Sends one request on a new connection; the body of a `200` answer.
fn exchange(t: &Target, req: &[u8], deadline: Instant) -> Result<String, String> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&t.addr, left()).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    s.write_all(req).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(body) = complete(&buf)? {
            return Ok(body);
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => {
                return complete_at_eof(&buf);
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(format!("response larger than {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The body once a response with a Content-Length is complete; None while more is needed.
fn complete(buf: &[u8]) -> Result<Option<String>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 200 {
        return Err(format!("HTTP status {code}"));
    }
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(len) if buf.len() >= head + len => Ok(Some(
            String::from_utf8_lossy(&buf[head..head + len]).into_owned(),
        )),
        _ => Ok(None),
    }
}

/// The body of a response ended by the server closing (no Content-Length).
fn complete_at_eof(buf: &[u8]) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head)) if resp.code == Some(200) => {
            if resp
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("content-length"))
            {
                return Err("connection closed before the whole body arrived".into());
            }
            Ok(String::from_utf8_lossy(&buf[head..]).into_owned())
        }
        Ok(httparse::Status::Complete(_)) => Err(format!("HTTP status {}", resp.code.unwrap_or(0))),
        Ok(httparse::Status::Partial) => Err("connection closed inside the response head".into()),
        Err(e) => Err(format!("bad response: {e}")),
    }
}

/// Parses the Prometheus text format: one sample per line, `name{labels} value
/// [timestamp]`; comments, blank lines, unreadable and non-finite values are skipped.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Labels may hold spaces inside quotes: the series ends at the last '}'.
        let (series, rest) = match line.find('{') {
            Some(open) if line[open..].contains('}') => {
                let close = line.rfind('}').unwrap_or(line.len() - 1);
                (&line[..=close], &line[close + 1..])
            }
            _ => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>()
            && v.is_finite()
        {
            out.insert(series.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP ringcast_messages_in_total Messages published.\n\
                    # TYPE ringcast_messages_in_total counter\n\
                    ringcast_messages_in_total 42\n\
                    ringcast_loop_turns_total{shard=\"1\",io=\"epoll\"} 7 1700000000\n\
                    odd{label=\"a } b\"} 3\n\
                    nan_value NaN\n\
                    broken\n\
                    \n";
        let m = parse(text);
        assert_eq!(m.get("ringcast_messages_in_total"), Some(&42.0));
        assert_eq!(
            m.get("ringcast_loop_turns_total{shard=\"1\",io=\"epoll\"}"),
            Some(&7.0)
        );
        assert_eq!(m.get("odd{label=\"a } b\"}"), Some(&3.0));
        assert_eq!(m.len(), 3);
    }

    /// A one-shot HTTP server answering `reply` to the first request.
    fn serve(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let _ = s.write_all(reply);
            }
        });
        format!("http://{addr}/metrics")
    }

    #[test]
    fn scrapes_with_and_without_content_length() {
        let url = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\na 1\nb 2");
        let m = Scraper::new(&url, false).unwrap().scrape().unwrap();
        assert_eq!(m.get("a"), Some(&1.0));
        assert_eq!(m.get("b"), None, "past Content-Length");
        let url = serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nx 5\n");
        let m = Scraper::new(&url, false).unwrap().scrape().unwrap();
        assert_eq!(m.get("x"), Some(&5.0));
    }

    #[test]
    fn failures_are_errors_not_panics() {
        let url = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let e = Scraper::new(&url, false).unwrap().scrape().unwrap_err();
        assert!(e.contains("404"), "{e}");
        let url = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
        assert!(Scraper::new(&url, false).unwrap().scrape().is_err());
        assert!(Scraper::new("ws://127.0.0.1:1/metrics", false).is_err());
        assert!(Scraper::new("http://10.1.2.3/metrics", false).is_err());
        // Nobody listening.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(
            Scraper::new(&format!("http://{addr}/metrics"), false)
                .unwrap()
                .scrape()
                .is_err()
        );
    }
}
