//! The HTTP/1.1 side of the protocol: request heads (any request, since the same port serves
//! `/health` and friends), the RFC 6455 §4.2.1 upgrade validation, the 101 and error responses,
//! and the client role's request and response check.
//!
//! Parsing uses `httparse` and is incremental and bounded: `Ok(None)` means "need more bytes"
//! (nothing consumed) until [`HandshakeLimits::max_header_bytes`] is passed, then
//! [`HandshakeError::TooLarge`]. Every rejection is a [`HandshakeError`] with one HTTP status
//! ([`HandshakeError::status`]) and a short reason for the body, so a bad request gets an answer,
//! never a hang.
//!
//! Policy (which paths, origins, subprotocols, extensions to accept) is the caller's: the parsed
//! [`Request`] and [`Upgrade`] expose them. [`negotiate_extensions`] is the point where
//! permessage-deflate will be negotiated; today it accepts none.

use std::fmt;
use std::mem::MaybeUninit;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest request head (request line + headers + blank line) accepted. Default 8 KiB.
    pub max_header_bytes: usize,
    /// Largest number of header fields accepted. Default 64.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_header_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

/// Everything wrong with a request (server role) or a response (client role).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is longer than `max_header_bytes`. → 431
    TooLarge,
    /// More header fields than `max_headers`. → 431
    TooManyHeaders,
    /// Not parseable as HTTP/1.x (the parser's description). → 400
    Malformed(&'static str),
    /// An upgrade with a method other than GET. → 400
    MethodNotGet,
    /// HTTP/1.0: WebSocket needs HTTP/1.1 or later. → 400
    HttpVersion,
    /// No Host header. → 400
    MissingHost,
    /// No `Upgrade: websocket` token. → 400
    MissingUpgrade,
    /// No `Connection: upgrade` token. → 400
    MissingConnectionUpgrade,
    /// No Sec-WebSocket-Version header. → 426 (with `Sec-WebSocket-Version: 13`)
    MissingVersion,
    /// A Sec-WebSocket-Version other than 13. → 426 (with `Sec-WebSocket-Version: 13`)
    UnsupportedVersion,
    /// No Sec-WebSocket-Key header, or more than one. → 400
    MissingKey,
    /// A Sec-WebSocket-Key that is not base64 of exactly 16 bytes. → 400
    InvalidKey,
    /// A header value that must be text (Origin, Sec-WebSocket-Protocol, -Extensions) is not
    /// (the header name). → 400
    InvalidHeaderValue(&'static str),
    /// A Content-Length that is not a decimal number, or several that disagree. → 400
    InvalidContentLength,
    /// Client role: the server answered with this status instead of 101 (`status()` returns it).
    UnexpectedStatus(u16),
    /// Client role: a 101 without `Upgrade: websocket` / `Connection: upgrade`. (`status()` 101)
    InvalidUpgradeResponse,
    /// Client role: Sec-WebSocket-Accept missing or not matching our key. (`status()` 101)
    AcceptMismatch,
}

impl HandshakeError {
    /// The HTTP status to answer with (server role), or the status seen (client role variants).
    pub fn status(&self) -> u16 {
        use HandshakeError::*;
        match self {
            TooLarge | TooManyHeaders => 431,
            MissingVersion | UnsupportedVersion => 426,
            UnexpectedStatus(s) => *s,
            InvalidUpgradeResponse | AcceptMismatch => 101,
            Malformed(_)
            | MethodNotGet
            | HttpVersion
            | MissingHost
            | MissingUpgrade
            | MissingConnectionUpgrade
            | MissingKey
            | InvalidKey
            | InvalidHeaderValue(_)
            | InvalidContentLength => 400,
        }
    }

    /// A short reason for the response body.
    pub fn reason(&self) -> &'static str {
        use HandshakeError::*;
        match self {
            TooLarge => "request header too large",
            TooManyHeaders => "too many request headers",
            Malformed(_) => "malformed request",
            MethodNotGet => "websocket upgrade requires GET",
            HttpVersion => "websocket upgrade requires HTTP/1.1",
            MissingHost => "missing Host header",
            MissingUpgrade => "missing Upgrade: websocket",
            MissingConnectionUpgrade => "missing Connection: upgrade",
            MissingVersion => "missing Sec-WebSocket-Version (13 is supported)",
            UnsupportedVersion => "unsupported Sec-WebSocket-Version (13 is supported)",
            MissingKey => "missing or repeated Sec-WebSocket-Key",
            InvalidKey => "invalid Sec-WebSocket-Key",
            InvalidHeaderValue(_) => "invalid header value",
            InvalidContentLength => "invalid Content-Length",
            UnexpectedStatus(_) => "server did not switch protocols",
            InvalidUpgradeResponse => "101 response without websocket upgrade headers",
            AcceptMismatch => "Sec-WebSocket-Accept does not match the key",
        }
    }

    /// Append the complete rejection response (status, reason as text body, `Connection: close`).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let mut body = String::with_capacity(64);
        body.push_str(self.reason());
        body.push('\n');
        write_response(
            self.status(),
            "text/plain; charset=utf-8",
            &[],
            body.as_bytes(),
            out,
        );
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(m) => write!(f, "malformed HTTP head: {m}"),
            HandshakeError::InvalidHeaderValue(h) => write!(f, "invalid {h} header value"),
            HandshakeError::UnexpectedStatus(s) => write!(f, "server answered {s}, not 101"),
            other => f.write_str(other.reason()),
        }?;
        write!(f, " ({})", self.status())
    }
}

impl std::error::Error for HandshakeError {}

/// A parsed HTTP/1.1 request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`GET`, `POST`...).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query after `?` (not percent-decoded), if any.
    pub query: Option<String>,
    /// Header fields in order: lower-case name, raw value (surrounding whitespace trimmed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head including the blank line: a body or frames start at `buf[head_len]`.
    pub head_len: usize,
    /// HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
}

/// What an accepted upgrade needs: the accept value and the client's offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The Sec-WebSocket-Accept value to send.
    pub accept: String,
    /// The Origin header, if sent (browsers always send it).
    pub origin: Option<String>,
    /// Subprotocols offered in Sec-WebSocket-Protocol, in order.
    pub protocols: Vec<String>,
    /// Extensions offered in Sec-WebSocket-Extensions, in order.
    pub extensions: Vec<ExtensionOffer>,
}

/// One extension offer, e.g. `permessage-deflate; client_max_window_bits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// Extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters: name and value (quotes removed), `None` for a bare parameter.
    pub params: Vec<(String, Option<String>)>,
}

fn map_httparse(e: httparse::Error) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders,
        other => HandshakeError::Malformed(other.description_str()),
    }
}

trait DescriptionStr {
    fn description_str(&self) -> &'static str;
}

impl DescriptionStr for httparse::Error {
    fn description_str(&self) -> &'static str {
        match self {
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            httparse::Error::NewLine => "invalid new line",
            httparse::Error::Status => "invalid status",
            httparse::Error::Token => "invalid token",
            httparse::Error::TooManyHeaders => "too many headers",
            httparse::Error::Version => "invalid HTTP version",
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Parse a request head from the start of `buf`, into an owned [`Request`] (for tools and
/// tests; the server parses into a borrowing [`Head`] once [`HeadScan`] found the end).
///
/// `Ok(None)` = need more bytes (nothing consumed). `Err(TooLarge)` once `buf` holds more than
/// `max_header_bytes` without a complete head, or the head is longer than that.
pub fn parse_request(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<Request>, HandshakeError> {
    let mut scan = HeadScan::default();
    let Some(end) = scan.find(buf, limits)? else {
        return Ok(None);
    };
    Ok(Some(parse_head(&buf[..end], limits)?.to_owned()))
}

/// An incremental search for the end of a request head (the empty line), so that a head
/// arriving in many small receives costs time linear in its length: each call looks only
/// at the bytes after the previous call's position, and the head is parsed once, when
/// complete ([`parse_head`]). A line ends with LF (optionally preceded by CR, RFC 9112 §2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadScan {
    /// Bytes of the buffer already searched.
    pub scanned: u32,
}

impl HeadScan {
    /// The head's length (through the empty line) once `buf` holds all of it; `Ok(None)`
    /// while it may still arrive; `TooLarge` once `max_header_bytes` bytes hold no end.
    /// `buf` must be the same buffer as before, with bytes appended only.
    pub fn find(
        &mut self,
        buf: &[u8],
        limits: &HandshakeLimits,
    ) -> Result<Option<usize>, HandshakeError> {
        let max = limits.max_header_bytes.min(buf.len());
        let mut from = (self.scanned as usize).min(max);
        // Line ends only: a head has a few dozen, so the bytes between them are skipped a
        // word at a time.
        while let Some(off) = find_lf(&buf[from..max]) {
            let i = from + off;
            if i > 0
                && (buf[i - 1] == b'\n' || (buf[i - 1] == b'\r' && i > 1 && buf[i - 2] == b'\n'))
            {
                return Ok(Some(i + 1));
            }
            from = i + 1;
        }
        self.scanned = u32::try_from(max).unwrap_or(u32::MAX);
        if buf.len() >= limits.max_header_bytes {
            return Err(HandshakeError::TooLarge);
        }
        Ok(None)
    }
}

/// The index of the first LF in `hay`, eight bytes at a time (the lowest zero byte of
/// `word ^ LF...`, found exactly by the borrow trick), the tail byte by byte. Its scalar twin
/// is `hay.iter().position(|&b| b == b'\n')`; the tests compare them on every length and
/// position up to 64.
fn find_lf(hay: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = ONES * b'\n' as u64;
    let mut words = hay.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let x = u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) ^ LFS;
        // Borrows only run upwards from a zero byte, so the lowest flagged byte is a real one.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| at + i)
}

/// A parsed request head borrowing the buffer it was parsed from: no allocation per header
/// (one small vector of slices for all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method as sent (`GET`, `POST`...).
    pub method: &'a str,
    /// The path, without the query. An absolute-form target (`http://host/p?q`, RFC 9112
    /// §3.2.2) is reduced to its path (`/p`).
    pub path: &'a str,
    /// The raw query after `?` (not percent-decoded), if any.
    pub query: Option<&'a str>,
    /// Header fields in order: name as sent, raw value (surrounding whitespace trimmed).
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Bytes of the head including the blank line: a body or frames start at `buf[head_len]`.
    pub head_len: usize,
    /// HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
}

/// Parses a complete head (`head` ends with the empty line, as found by [`HeadScan`]).
pub fn parse_head<'a>(
    head: &'a [u8],
    limits: &HandshakeLimits,
) -> Result<Head<'a>, HandshakeError> {
    if head.len() > limits.max_header_bytes {
        return Err(HandshakeError::TooLarge);
    }
    // Most requests fit the stack array; httparse needs its slots up front (left
    // uninitialised: it writes those it fills and hands back only them).
    let mut stack = [const { MaybeUninit::<httparse::Header<'a>>::uninit() }; 64];
    let mut heap;
    let slots: &mut [MaybeUninit<httparse::Header<'a>>] = if limits.max_headers <= stack.len() {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![MaybeUninit::uninit(); limits.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req
        .parse_with_uninit_headers(head, slots)
        .map_err(map_httparse)?
    {
        httparse::Status::Complete(n) => n,
        // Only empty lines before the "end": not a request.
        httparse::Status::Partial => return Err(HandshakeError::Malformed("no request line")),
    };
    let target = origin_form(req.path.unwrap_or("/"));
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Ok(Head {
        method: req.method.unwrap_or(""),
        path,
        query,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name, trim(h.value)))
            .collect(),
        head_len,
        version: req.version.unwrap_or(1),
    })
}

/// The origin form (`/path?query`) of a request target: an absolute-form target
/// (`http://host:port/path?query`) loses its scheme and authority (RFC 9112 §3.2.2 says a
/// server must accept it); an authority without a path means `/`.
fn origin_form(target: &str) -> &str {
    let starts = |scheme: &str| {
        target
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()))
    };
    // The prefix matched is ASCII, so slicing after it is on a character boundary.
    let rest = if starts("http://") {
        &target[7..]
    } else if starts("https://") {
        &target[8..]
    } else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        // No path (`http://host`, `http://host?q`): `/` (such a query is dropped).
        _ => "/",
    }
}

impl Head<'_> {
    /// The owned copy.
    pub fn to_owned(&self) -> Request {
        Request {
            method: self.method.to_owned(),
            path: self.path.to_owned(),
            query: self.query.map(str::to_owned),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
                .collect(),
            head_len: self.head_len,
            version: self.version,
        }
    }
}

/// Does the comma-separated list `value` contain `token` (ASCII case-insensitive)?
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn text<'a>(value: &'a [u8], name: &'static str) -> Result<&'a str, HandshakeError> {
    std::str::from_utf8(value).map_err(|_| HandshakeError::InvalidHeaderValue(name))
}

impl<'a> Head<'a> {
    /// The first value of a header (`lower_name` must be lower-case).
    pub fn header(&self, lower_name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|&(_, v)| v)
    }

    /// Every value of a header, in order.
    pub fn headers_named<'s>(&'s self, lower_name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|&(_, v)| v)
    }

    fn any_token(&self, lower_name: &str, token: &str) -> bool {
        self.headers_named(lower_name).any(|v| has_token(v, token))
    }

    /// The Content-Length, if present. Several values must agree.
    pub fn content_length(&self) -> Result<Option<usize>, HandshakeError> {
        let mut found = None;
        for v in self.headers_named("content-length") {
            let s = std::str::from_utf8(v).map_err(|_| HandshakeError::InvalidContentLength)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HandshakeError::InvalidContentLength);
            }
            let n: usize = s
                .parse()
                .map_err(|_| HandshakeError::InvalidContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(HandshakeError::InvalidContentLength);
            }
            found = Some(n);
        }
        Ok(found)
    }

    /// Has an `Upgrade: websocket` token: the client asks for a WebSocket.
    pub fn is_upgrade(&self) -> bool {
        self.any_token("upgrade", "websocket")
    }

    /// Full RFC 6455 §4.2.1 validation of an upgrade request.
    pub fn websocket(&self) -> Result<Upgrade, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::MethodNotGet);
        }
        if self.version < 1 {
            return Err(HandshakeError::HttpVersion);
        }
        if self.header("host").is_none() {
            return Err(HandshakeError::MissingHost);
        }
        if !self.is_upgrade() {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !self.any_token("connection", "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        match self.header("sec-websocket-version") {
            None => return Err(HandshakeError::MissingVersion),
            Some(v) if v != b"13" => return Err(HandshakeError::UnsupportedVersion),
            Some(_) => {}
        }
        let mut keys = self.headers_named("sec-websocket-key");
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return Err(HandshakeError::MissingKey);
        };
        // Decoded on the stack: 16 bytes are 24 characters, which decode into at most 18;
        // anything longer does not fit and is invalid anyway.
        let mut decoded = [0u8; 18];
        match BASE64.decode_slice(key, &mut decoded) {
            Ok(16) => {}
            _ => return Err(HandshakeError::InvalidKey),
        }
        let origin = match self.header("origin") {
            Some(v) => Some(text(v, "Origin")?.to_owned()),
            None => None,
        };
        let mut protocols = Vec::new();
        for v in self.headers_named("sec-websocket-protocol") {
            for p in text(v, "Sec-WebSocket-Protocol")?.split(',') {
                let p = p.trim();
                if !p.is_empty() {
                    protocols.push(p.to_owned());
                }
            }
        }
        let mut extensions = Vec::new();
        for v in self.headers_named("sec-websocket-extensions") {
            parse_extensions(text(v, "Sec-WebSocket-Extensions")?, &mut extensions);
        }
        Ok(Upgrade {
            accept: accept_key(key),
            origin,
            protocols,
            extensions,
        })
    }

    /// The raw (not percent-decoded) value of a query parameter; `Some("")` for a bare `name`.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if pair == name => Some(""),
                _ => None,
            })
    }
}

impl Request {
    /// The borrowing view, on which the checks are implemented.
    pub fn head(&self) -> Head<'_> {
        Head {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect(),
            head_len: self.head_len,
            version: self.version,
        }
    }

    /// The first value of a header (`lower_name` must be lower-case).
    pub fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, lower_name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == lower_name)
            .map(|(_, v)| v.as_slice())
    }

    /// See [`Head::content_length`].
    pub fn content_length(&self) -> Result<Option<usize>, HandshakeError> {
        self.head().content_length()
    }

    /// See [`Head::is_upgrade`].
    pub fn is_upgrade(&self) -> bool {
        self.head().is_upgrade()
    }

    /// See [`Head::websocket`].
    pub fn websocket(&self) -> Result<Upgrade, HandshakeError> {
        self.head().websocket()
    }

    /// See [`Head::query_param`].
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|pair| match pair.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if pair == name => Some(""),
                _ => None,
            })
    }
}

/// Parse `a; x=1; y="2", b` into offers (appended to `out`). Lenient: empty items are skipped.
fn parse_extensions(value: &str, out: &mut Vec<ExtensionOffer>) {
    for item in value.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let Some(name) = parts.next().filter(|n| !n.is_empty()) else {
            continue;
        };
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_owned(),
                    Some(v.trim().trim_matches('"').to_owned()),
                ),
                None => (p.to_owned(), None),
            })
            .collect();
        out.push(ExtensionOffer {
            name: name.to_owned(),
            params,
        });
    }
}

/// The extension negotiation point: given the client's offers, the value of the response's
/// Sec-WebSocket-Extensions header, or `None` to accept none. permessage-deflate will be
/// negotiated here (and the connection told which RSV bits it may then see); today no
/// extension is supported, so this always returns `None`.
pub fn negotiate_extensions(_offers: &[ExtensionOffer]) -> Option<String> {
    None
}

/// base64(SHA-1(key + GUID)): exactly 28 characters, no stray bytes.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Append the 101 Switching Protocols response, with the chosen subprotocol if any.
pub fn write_101(upgrade: &Upgrade, protocol: Option<&str>, out: &mut Vec<u8>) {
    write_101_with(upgrade, protocol, None, &[], out);
}

/// [`write_101`] with the negotiated extensions header value and extra headers.
pub fn write_101_with(
    upgrade: &Upgrade,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(out, "Sec-WebSocket-Accept", &upgrade.accept);
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(e) = extensions {
        push_header(out, "Sec-WebSocket-Extensions", e);
    }
    for (n, v) in extra_headers {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase for the statuses this server uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        // RFC 9110 §15: a client must treat an unknown status as the x00 of its class; the
        // phrase is informational, but "Unknown" reads like a bug in a log.
        s if (400..500).contains(&s) => "Client Error",
        s if (500..600).contains(&s) => "Server Error",
        _ => "Unknown",
    }
}

/// Any non-101 response: status line, Content-Type, Content-Length, `Connection: close` (unless
/// `extra_headers` has its own Connection header, e.g. `keep-alive`), the extra headers, then
/// the body. 426 adds `Sec-WebSocket-Version: 13` automatically.
pub fn write_response(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let ct = if content_type.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    push_header(out, "Content-Type", ct);
    push_header(out, "Content-Length", &body.len().to_string());
    let has = |name: &str| {
        extra_headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("connection") {
        push_header(out, "Connection", "close");
    }
    if status == 426 && !has("sec-websocket-version") {
        push_header(out, "Sec-WebSocket-Version", "13");
    }
    for (n, v) in extra_headers {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Client role: the Sec-WebSocket-Key for `nonce`, base64 of its 16 bytes. RFC 6455 §4.1
/// wants a nonce "randomly selected" per connection; the protocol core owns no random
/// generator, so the caller draws it (the OS generator, or any source it trusts).
pub fn generate_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// Client role: append the upgrade request.
pub fn write_client_request(
    host: &str,
    path_and_query: &str,
    key: &str,
    extra_headers: &[(&str, &str)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(
        if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        }
        .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, "Host", host);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(out, "Sec-WebSocket-Key", key);
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    for (n, v) in extra_headers {
        push_header(out, n, v);
    }
    out.extend_from_slice(b"\r\n");
}

/// The head's length once httparse saw all of it; `None` while it may still arrive; `TooLarge`
/// once `buf` holds `max_header_bytes` without a complete head.
fn complete(
    status: httparse::Status<usize>,
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<usize>, HandshakeError> {
    match status {
        httparse::Status::Complete(n) => Ok(Some(n)),
        httparse::Status::Partial if buf.len() >= limits.max_header_bytes => {
            Err(HandshakeError::TooLarge)
        }
        httparse::Status::Partial => Ok(None),
    }
}

/// Client role: `Ok(None)` need more; `Ok(Some(head_len))` on a valid 101 whose accept matches
/// `key`; `Err` otherwise (`UnexpectedStatus` carries the status seen). Bounded by the default
/// [`HandshakeLimits`].
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let limits = HandshakeLimits::default();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let scan = &buf[..buf.len().min(limits.max_header_bytes)];
    let Some(head_len) = complete(resp.parse(scan).map_err(map_httparse)?, buf, &limits)? else {
        return Ok(None);
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::UnexpectedStatus(code));
    }
    let named = |n: &'static str| {
        resp.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(n))
            .map(|h| trim(h.value))
    };
    if !named("upgrade").any(|v| has_token(v, "websocket"))
        || !named("connection").any(|v| has_token(v, "upgrade"))
    {
        return Err(HandshakeError::InvalidUpgradeResponse);
    }
    let want = accept_key(key.as_bytes());
    let mut accepts = named("sec-websocket-accept");
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if a == want.as_bytes() => Ok(Some(head_len)),
        _ => Err(HandshakeError::AcceptMismatch),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::strategy::Just;

    const RFC_REQUEST: &[u8] = b"GET /chat?room=a&x HTTP/1.1\r\nHost: server.example.com\r\n\
Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"1\"\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn every_status_the_server_sends_has_its_phrase() {
        // 411 went out as "411 Unknown" (operations issue).
        for (status, phrase) in [
            (202, "Accepted"),
            (400, "Bad Request"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (426, "Upgrade Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason_phrase(status), phrase, "{status}");
        }
        assert_eq!(reason_phrase(418), "Client Error", "an unlisted 4xx");
        assert_eq!(reason_phrase(599), "Server Error");
    }

    fn limits() -> HandshakeLimits {
        HandshakeLimits::default()
    }

    fn with_header(replace: &str, by: &str) -> Vec<u8> {
        String::from_utf8(RFC_REQUEST.to_vec())
            .unwrap()
            .replace(replace, by)
            .into_bytes()
    }

    fn upgrade_err(req: &[u8]) -> HandshakeError {
        parse_request(req, &limits())
            .unwrap()
            .unwrap()
            .websocket()
            .unwrap_err()
    }

    #[test]
    fn rfc_example_request() {
        let req = parse_request(RFC_REQUEST, &limits()).unwrap().unwrap();
        assert_eq!(req.head_len, RFC_REQUEST.len());
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query_param("room"), Some("a"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.query_param("y"), None);
        assert!(req.is_upgrade());
        let up = req.websocket().unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.origin.as_deref(), Some("http://example.com"));
        assert_eq!(up.protocols, ["chat", "superchat"]);
        assert_eq!(up.extensions.len(), 2);
        assert_eq!(up.extensions[0].name, "permessage-deflate");
        assert_eq!(
            up.extensions[0].params,
            [("client_max_window_bits".to_owned(), None)]
        );
        assert_eq!(
            up.extensions[1].params,
            [("a".to_owned(), Some("1".to_owned()))]
        );
        assert_eq!(negotiate_extensions(&up.extensions), None);
    }

    #[test]
    fn every_prefix_needs_more() {
        for n in 0..RFC_REQUEST.len() {
            assert_eq!(parse_request(&RFC_REQUEST[..n], &limits()), Ok(None), "{n}");
        }
    }

    #[test]
    fn bounded() {
        let small = HandshakeLimits {
            max_header_bytes: 64,
            max_headers: 64,
        };
        assert_eq!(
            parse_request(RFC_REQUEST, &small),
            Err(HandshakeError::TooLarge)
        );
        assert_eq!(
            parse_request(&RFC_REQUEST[..70], &small),
            Err(HandshakeError::TooLarge)
        );
        let few = HandshakeLimits {
            max_header_bytes: 8192,
            max_headers: 3,
        };
        assert_eq!(
            parse_request(RFC_REQUEST, &few),
            Err(HandshakeError::TooManyHeaders)
        );
        assert_eq!(HandshakeError::TooLarge.status(), 431);
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", &limits()),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn find_lf_matches_its_scalar_twin() {
        // Every length 0-64 at every alignment, with no LF, one LF at each position, and a
        // second one after it; the filler cycles through every byte value except LF (0x0b
        // and 0x8a sit one bit away from it, where a word-at-a-time search could go wrong).
        let filler: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
        let mut backing = [0u8; 64 + 8];
        for align in 0..8 {
            for len in 0..=64 {
                for lf in (0..=len).chain([usize::MAX]) {
                    let hay = &mut backing[align..align + len];
                    for (i, b) in hay.iter_mut().enumerate() {
                        *b = filler[(i * 7 + align + len) % filler.len()];
                    }
                    if lf < len {
                        hay[lf] = b'\n';
                        if lf + 3 < len {
                            hay[lf + 3] = b'\n';
                        }
                    }
                    let scalar = hay.iter().position(|&b| b == b'\n');
                    assert_eq!(find_lf(hay), scalar, "align {align} len {len} lf {lf}");
                }
            }
        }
    }

    /// The scalar twin of `HeadScan::find` (the byte-by-byte search it replaced).
    fn scalar_head_end(
        buf: &[u8],
        limits: &HandshakeLimits,
    ) -> Result<Option<usize>, HandshakeError> {
        let max = limits.max_header_bytes.min(buf.len());
        for i in 1..max {
            if buf[i] == b'\n'
                && (buf[i - 1] == b'\n' || (buf[i - 1] == b'\r' && i > 1 && buf[i - 2] == b'\n'))
            {
                return Ok(Some(i + 1));
            }
        }
        if buf.len() >= limits.max_header_bytes {
            return Err(HandshakeError::TooLarge);
        }
        Ok(None)
    }

    proptest::proptest! {
        // Bytes drawn mostly from CR, LF and letters, so that empty lines of every kind are
        // common; the head arrives in two receives split anywhere.
        #[test]
        fn head_scan_matches_its_scalar_twin(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), proptest::num::u8::ANY],
                0..300,
            ),
            split in 0usize..300,
            max in 1usize..320,
        ) {
            let limits = HandshakeLimits { max_header_bytes: max, max_headers: 64 };
            let split = split.min(bytes.len());
            let mut scan = HeadScan::default();
            let first = scan.find(&bytes[..split], &limits);
            let want_first = scalar_head_end(&bytes[..split], &limits);
            proptest::prop_assert_eq!(&first, &want_first);
            if let Ok(None) = first {
                proptest::prop_assert_eq!(scan.find(&bytes, &limits), scalar_head_end(&bytes, &limits));
            }
        }
    }

    #[test]
    fn head_scan_is_incremental() {
        // One byte at a time through one scan: the end is found at the first empty line,
        // whatever the line ends (CRLF, bare LF, mixed), and never before.
        let heads: [&[u8]; 4] = [
            RFC_REQUEST,
            b"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n\x81\x00",
            b"GET /a-path-longer-than-one-word HTTP/1.1\nHost: a\r\n\r\nbody\r\n\r\n",
        ];
        let ends = [RFC_REQUEST.len(), 24, 26, 53];
        for (head, want) in heads.into_iter().zip(ends) {
            let mut scan = HeadScan::default();
            let mut found = None;
            for n in 1..=head.len() {
                if let Some(end) = scan.find(&head[..n], &limits()).unwrap() {
                    found = Some((n, end));
                    break;
                }
            }
            assert_eq!(
                found,
                Some((want, want)),
                "{:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(
                HeadScan::default().find(head, &limits()),
                Ok(Some(want)),
                "all at once"
            );
        }
    }

    #[test]
    fn absolute_form_targets() {
        for (target, path) in [
            ("/p?q", "/p?q"),
            ("http://h:1/p?q", "/p?q"),
            ("HTTP://h/p", "/p"),
            ("hTtPs://h/a/b", "/a/b"),
            ("http://h", "/"),
            ("https://h?q", "/"),
            ("http:/p", "http:/p"),
            ("http", "http"),
            ("httpé://h/p", "httpé://h/p"),
            ("", ""),
        ] {
            assert_eq!(origin_form(target), path, "{target}");
        }
    }

    #[test]
    fn key_must_decode_to_16_bytes() {
        for len in [0usize, 1, 15, 17, 18, 19, 32] {
            let key = BASE64.encode(vec![7u8; len]);
            let req = with_header("dGhlIHNhbXBsZSBub25jZQ==", &key);
            assert_eq!(upgrade_err(&req), HandshakeError::InvalidKey, "{len} bytes");
        }
        let req = with_header("dGhlIHNhbXBsZSBub25jZQ==", &BASE64.encode([7u8; 16]));
        assert!(
            parse_request(&req, &limits())
                .unwrap()
                .unwrap()
                .websocket()
                .is_ok()
        );
    }

    #[test]
    fn rejections() {
        assert_eq!(
            upgrade_err(&with_header("GET", "POST")),
            HandshakeError::MethodNotGet
        );
        assert_eq!(
            upgrade_err(&with_header("HTTP/1.1", "HTTP/1.0")),
            HandshakeError::HttpVersion
        );
        assert_eq!(
            upgrade_err(&with_header("Host:", "X-Host:")),
            HandshakeError::MissingHost
        );
        assert_eq!(
            upgrade_err(&with_header("Upgrade: websocket", "Upgrade: h2c")),
            HandshakeError::MissingUpgrade
        );
        assert_eq!(
            upgrade_err(&with_header("keep-alive, Upgrade", "keep-alive")),
            HandshakeError::MissingConnectionUpgrade
        );
        let e = upgrade_err(&with_header("Version: 13", "Version: 8"));
        assert_eq!(
            (e.clone(), e.status()),
            (HandshakeError::UnsupportedVersion, 426)
        );
        assert_eq!(
            upgrade_err(&with_header("Sec-WebSocket-Version: 13\r\n", "")),
            HandshakeError::MissingVersion
        );
        assert_eq!(
            upgrade_err(&with_header("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==")),
            HandshakeError::InvalidKey
        );
        assert_eq!(
            upgrade_err(&with_header(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                ""
            )),
            HandshakeError::MissingKey
        );
        // Case-insensitive tokens are accepted.
        let ok = with_header("Upgrade: websocket", "upgrade:  WebSocket ");
        assert!(
            parse_request(&ok, &limits())
                .unwrap()
                .unwrap()
                .websocket()
                .is_ok()
        );
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(426, "text/plain", &[], b"no", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with(
            "Content-Length: 2\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n\r\nno"
        ));
        let mut out = Vec::new();
        write_response(200, "", &[("Connection", "keep-alive")], b"", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("close"));
        let mut out = Vec::new();
        HandshakeError::InvalidKey.write_response(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    }

    #[test]
    fn client_round_trip() {
        assert_eq!(
            generate_key(*b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ==",
            "RFC 6455 §1.3's example key"
        );
        let key = generate_key(*b"0123456789abcdef");
        assert_eq!(BASE64.decode(&key).unwrap(), b"0123456789abcdef");
        let mut req = Vec::new();
        write_client_request(
            "h:1",
            "/ws/t?echo=1",
            &key,
            &[("Origin", "http://x")],
            &mut req,
        );
        let parsed = parse_request(&req, &limits()).unwrap().unwrap();
        let up = parsed.websocket().unwrap();
        let mut resp = Vec::new();
        write_101(&up, Some("chat"), &mut resp);
        resp.extend_from_slice(b"\x81\x00");
        assert_eq!(parse_response(&resp, &key), Ok(Some(resp.len() - 2)));
        assert_eq!(parse_response(&resp[..10], &key), Ok(None));
        assert_eq!(
            parse_response(&resp, "dGhlIHNhbXBsZSBub25jZQ=="),
            Err(HandshakeError::AcceptMismatch)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", &key),
            Err(HandshakeError::UnexpectedStatus(404))
        );
    }
}
