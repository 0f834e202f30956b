//! The requests `pubhttp` sends, built once before the timed part: a single
//! publish (`POST {prefix}/publish/{topic}`, the body is the message) or a
//! batch (`POST {prefix}/publish`, a JSON array of `{"topic","data"}` items),
//! and a "burst" of the same request back to back, so that refilling a
//! pipeline of k requests is one write of a slice: no allocation or copy per
//! message in the hot loop.

use crate::payload::{STAMP_LEN, Stamp, write_stamp};

/// What one request carries.
#[derive(Clone, Debug)]
pub struct RequestSpec<'a> {
    /// `Host` header value.
    pub host: &'a str,
    /// Path before `/publish` (no trailing slash; empty for the root).
    pub prefix: &'a str,
    /// Query to append (`token=...`), without `?`, or empty.
    pub query: &'a str,
    /// Topic of every message.
    pub topic: &'a str,
    /// Message size in bytes.
    pub size: usize,
    /// 0: one message per request; n > 0: n items in a JSON array.
    pub batch: usize,
    /// Extra headers, `Name: value` each.
    pub headers: &'a [String],
    /// Send `Connection: close` (one request per connection).
    pub close: bool,
}

/// The message bytes: a generator stamp (ASCII hex, publisher `0x7ffffffe`,
/// sequence = `seq`) padded with `.` to `size`; under the stamp's 42 bytes,
/// only dots. Always printable ASCII, so valid as text and inside a JSON string.
pub fn message(size: usize, seq: u64) -> Vec<u8> {
    let mut m = vec![b'.'; size];
    if size >= STAMP_LEN {
        m[..2].copy_from_slice(b"rc");
        write_stamp(
            &mut m,
            Stamp {
                publisher: 0x7fff_fffe,
                seq,
                sent_ns: 0,
            },
        );
    }
    m
}

/// The batch body: `[{"topic":"t","data":"..."},...]` with `n` items. The
/// topic is JSON-escaped; the data is [`message`] (no escaping needed).
pub fn batch_body(topic: &str, size: usize, n: usize) -> Vec<u8> {
    let topic_json = serde_json::to_string(topic).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(n * (size + topic_json.len() + 24) + 2);
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"topic\":");
        out.extend_from_slice(topic_json.as_bytes());
        out.extend_from_slice(b",\"data\":\"");
        out.extend_from_slice(&message(size, i as u64));
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
    out
}

/// One complete request (head and body).
pub fn request(spec: &RequestSpec<'_>) -> Vec<u8> {
    let (path, body, ctype) = if spec.batch == 0 {
        (
            format!("{}/publish/{}", spec.prefix, spec.topic),
            message(spec.size, 0),
            "text/plain; charset=utf-8",
        )
    } else {
        (
            format!("{}/publish", spec.prefix),
            batch_body(spec.topic, spec.size, spec.batch),
            "application/json",
        )
    };
    let mut head = format!("POST {path}");
    if !spec.query.is_empty() {
        head.push('?');
        head.push_str(spec.query);
    }
    head.push_str(" HTTP/1.1\r\nHost: ");
    head.push_str(spec.host);
    head.push_str("\r\nContent-Type: ");
    head.push_str(ctype);
    head.push_str(&format!("\r\nContent-Length: {}\r\n", body.len()));
    if spec.close {
        head.push_str("Connection: close\r\n");
    }
    for h in spec.headers {
        head.push_str(h.trim());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// `request` repeated: at least `copies` times, at least twice, within about
/// `max_bytes` where that allows more than two. A writer at offset `phase`
/// (< request length) into the cycle of identical requests can write up to
/// `burst.len() - phase` bytes from here in one call.
pub fn burst(request: &[u8], copies: usize, max_bytes: usize) -> Vec<u8> {
    let fit = (max_bytes / request.len().max(1)).max(2);
    let n = copies.max(2).min(fit).max(2);
    request.repeat(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(batch: usize) -> RequestSpec<'static> {
        RequestSpec {
            host: "127.0.0.1:8080",
            prefix: "",
            query: "",
            topic: "t0",
            size: 64,
            batch,
            headers: &[],
            close: false,
        }
    }

    fn parse(req: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = r.parse(req).unwrap() else {
            panic!("incomplete request");
        };
        let hs = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (r.path.unwrap().to_string(), hs, req[n..].to_vec())
    }

    #[test]
    fn single_publish_request() {
        let req = request(&spec(0));
        let (path, hs, body) = parse(&req);
        assert_eq!(path, "/publish/t0");
        assert!(hs.contains(&("content-length".into(), "64".into())));
        assert_eq!(body.len(), 64);
        assert!(body.starts_with(b"rc") && body.is_ascii());
        assert!(!hs.iter().any(|(n, _)| n == "connection"));
    }

    #[test]
    fn batch_body_is_the_json_array() {
        let body = batch_body("news/\"x\"", 50, 3);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 3);
        for (i, it) in items.iter().enumerate() {
            assert_eq!(it["topic"], "news/\"x\"");
            let data = it["data"].as_str().unwrap();
            assert_eq!(data.len(), 50);
            // Each item is a stamped message with its index as the sequence.
            let stamp = crate::payload::decode(data.as_bytes()).unwrap();
            assert_eq!(stamp.seq, i as u64);
        }
        // Tiny messages: dots only.
        let v: serde_json::Value = serde_json::from_slice(&batch_body("t", 5, 2)).unwrap();
        assert_eq!(v[1]["data"], ".....");
        assert_eq!(batch_body("t", 8, 0), b"[]");
    }

    #[test]
    fn batch_request_and_options() {
        let headers = vec!["X-Api-Key: k1".to_string()];
        let s = RequestSpec {
            prefix: "/api",
            query: "token=a.b.c",
            headers: &headers,
            close: true,
            ..spec(100)
        };
        let req = request(&s);
        let (path, hs, body) = parse(&req);
        assert_eq!(path, "/api/publish?token=a.b.c");
        assert!(hs.contains(&("content-type".into(), "application/json".into())));
        assert!(hs.contains(&("connection".into(), "close".into())));
        assert!(hs.contains(&("x-api-key".into(), "k1".into())));
        let cl: usize = hs
            .iter()
            .find(|(n, _)| n == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(cl, body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 100);
    }

    #[test]
    fn burst_covers_any_phase() {
        let req = request(&spec(0));
        let b = burst(&req, 32, 1 << 20);
        assert_eq!(b.len(), req.len() * 32);
        // Small limits still give two copies, so a phase inside one request leaves a whole one.
        let b = burst(&req, 32, 10);
        assert_eq!(b.len(), req.len() * 2);
        assert!(b.chunks(req.len()).all(|c| c == req.as_slice()));
    }
}
