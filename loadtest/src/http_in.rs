//! The client side of HTTP/1.1 answers for `pubhttp`: an incremental reader
//! that takes bytes as they arrive (several pipelined answers in one read, or
//! one answer split over many) and yields one [`Answer`] per complete
//! response, in order. Bodies are framed by `Content-Length`; 204/304 have
//! none; a response with neither ends when the server closes
//! ([`HttpIn::at_eof`]); chunked bodies are refused (the generator's servers
//! never send them, and guessing would miscount). Interim 1xx answers are
//! skipped. The buffer is reused: nothing is allocated per answer.

use std::fmt;

/// Largest head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted (a batch answer of 100,000 items fits).
pub const MAX_BODY: usize = 16 << 20;

/// One complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The server will close after this answer (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// Where the body is in the reader's buffer, valid until the next read into it.
    body: (usize, usize),
}

/// Why an answer could not be read (the connection is unusable afterwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Not an HTTP/1.x response head.
    Malformed,
    /// The head is over [`MAX_HEAD`].
    HeadTooLarge,
    /// `Content-Length` missing a number, repeated with different values, or over [`MAX_BODY`].
    BadLength,
    /// `Transfer-Encoding` (chunked) bodies are not supported.
    Chunked,
    /// The connection ended in the middle of an answer.
    Truncated,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpError::Malformed => "malformed response head",
            HttpError::HeadTooLarge => "response head too large",
            HttpError::BadLength => "bad Content-Length",
            HttpError::Chunked => "chunked response (unsupported)",
            HttpError::Truncated => "connection closed inside a response",
        })
    }
}

/// Body framing of a parsed head.
enum Framing {
    Length(usize),
    UntilClose,
}

/// Incremental reader of pipelined answers.
#[derive(Debug)]
pub struct HttpIn {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl HttpIn {
    /// A reader with `cap` bytes of buffer to begin with (it grows to hold one whole answer).
    pub fn new(cap: usize) -> HttpIn {
        HttpIn {
            buf: vec![0; cap.max(1024)],
            start: 0,
            end: 0,
        }
    }

    /// Bytes received and not yet consumed.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Drops everything buffered (a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room to read into: moves unread bytes to the front, grows when full.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(MAX_HEAD + MAX_BODY + 4096);
            if grown > self.buf.len() {
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`HttpIn::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies `data` in (tests, and callers that read elsewhere).
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.spare();
            if room.is_empty() {
                return;
            }
            let k = room.len().min(data.len());
            room[..k].copy_from_slice(&data[..k]);
            self.filled(k);
            data = &data[k..];
        }
    }

    /// The body of `a`, the answer just returned.
    pub fn body(&self, a: &Answer) -> &[u8] {
        self.buf.get(a.body.0..a.body.1).unwrap_or(&[])
    }

    /// The next complete answer, None while more bytes are needed.
    pub fn next_answer(&mut self) -> Result<Option<Answer>, HttpError> {
        loop {
            let data = &self.buf[self.start..self.end];
            let Some((head, status, close, framing)) = parse_head(data)? else {
                return Ok(None);
            };
            if (100..200).contains(&status) && status != 101 {
                // Interim (100 Continue): no body, the real answer follows.
                self.start += head;
                continue;
            }
            let len = match framing {
                Framing::Length(n) => n,
                Framing::UntilClose => return Ok(None),
            };
            if data.len() < head + len {
                return Ok(None);
            }
            let body = (self.start + head, self.start + head + len);
            self.start += head + len;
            return Ok(Some(Answer {
                status,
                close,
                body,
            }));
        }
    }

    /// The server closed: the answer whose body runs to the close, if one is
    /// buffered; Err when the close cut an answer short.
    pub fn at_eof(&mut self) -> Result<Option<Answer>, HttpError> {
        if let Some(a) = self.next_answer()? {
            return Ok(Some(a));
        }
        if self.pending() == 0 {
            return Ok(None);
        }
        let data = &self.buf[self.start..self.end];
        match parse_head(data)? {
            Some((head, status, _, Framing::UntilClose)) => {
                let body = (self.start + head, self.end);
                self.start = self.end;
                Ok(Some(Answer {
                    status,
                    close: true,
                    body,
                }))
            }
            _ => Err(HttpError::Truncated),
        }
    }
}

/// (head length, status, close, framing) once the head is complete.
fn parse_head(data: &[u8]) -> Result<Option<(usize, u16, bool, Framing)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let mut length: Option<usize> = None;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&v| v <= MAX_BODY)
                .ok_or(HttpError::BadLength)?;
            if length.is_some_and(|l| l != v) {
                return Err(HttpError::BadLength);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for tok in h.value.split(|&b| b == b',') {
                let tok = tok.trim_ascii();
                if tok.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let framing = match length {
        Some(n) => Framing::Length(n),
        None if status == 204 || status == 304 || (100..200).contains(&status) => {
            Framing::Length(0)
        }
        None => Framing::UntilClose,
    };
    Ok(Some((head, status, close, framing)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const PIPELINED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
HTTP/1.1 100 Continue\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 413 Content Too Large\r\ncontent-length: 5\r\nConnection: keep-alive\r\n\r\nlarge\
HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"results\":[{\"ok\":true},1]}\
HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

    fn drain(r: &mut HttpIn, out: &mut Vec<(u16, bool, Vec<u8>)>) {
        while let Some(a) = r.next_answer().unwrap() {
            out.push((a.status, a.close, r.body(&a).to_vec()));
        }
    }

    fn expected() -> Vec<(u16, bool, Vec<u8>)> {
        vec![
            (200, false, b"ok".to_vec()),
            (204, false, vec![]),
            (413, false, b"large".to_vec()),
            (200, false, br#"{"results":[{"ok":true},1]}"#.to_vec()),
            (503, true, vec![]),
        ]
    }

    #[test]
    fn pipelined_answers_in_one_read() {
        let mut r = HttpIn::new(1024);
        r.feed(PIPELINED);
        let mut got = Vec::new();
        drain(&mut r, &mut got);
        assert_eq!(got, expected());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn pipelined_answers_split_at_every_byte_boundary() {
        for cut in 0..=PIPELINED.len() {
            let mut r = HttpIn::new(1024);
            let mut got = Vec::new();
            r.feed(&PIPELINED[..cut]);
            drain(&mut r, &mut got);
            r.feed(&PIPELINED[cut..]);
            drain(&mut r, &mut got);
            assert_eq!(got, expected(), "cut at {cut}");
        }
        // And one byte at a time, through the compacting buffer.
        let mut r = HttpIn::new(16);
        let mut got = Vec::new();
        for b in PIPELINED {
            r.feed(std::slice::from_ref(b));
            drain(&mut r, &mut got);
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn body_until_close() {
        let mut r = HttpIn::new(64);
        r.feed(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npartial body");
        assert_eq!(r.next_answer().unwrap(), None);
        let a = r.at_eof().unwrap().unwrap();
        assert_eq!((a.status, a.close), (200, true));
        assert_eq!(r.body(&a), b"partial body");
        assert_eq!(r.at_eof().unwrap(), None);
        // HTTP/1.0 closes unless it says keep-alive.
        let mut r = HttpIn::new(64);
        r.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(r.next_answer().unwrap().unwrap().close);
        assert!(!r.next_answer().unwrap().unwrap().close);
    }

    #[test]
    fn broken_answers_are_errors() {
        let err = |bytes: &[u8]| {
            let mut r = HttpIn::new(64);
            r.feed(bytes);
            r.next_answer().unwrap_err()
        };
        assert_eq!(err(b"garbage\r\n\r\n"), HttpError::Malformed);
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::Chunked
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            HttpError::BadLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::BadLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"),
            HttpError::BadLength
        );
        let mut r = HttpIn::new(64);
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        r.feed(&big);
        assert_eq!(r.next_answer().unwrap_err(), HttpError::HeadTooLarge);
        // Cut inside a body with a length.
        let mut r = HttpIn::new(64);
        r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(r.next_answer().unwrap(), None);
        assert_eq!(r.at_eof().unwrap_err(), HttpError::Truncated);
    }

    #[test]
    fn large_body_grows_the_buffer() {
        let body = vec![b'x'; 100_000];
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        let mut r = HttpIn::new(1024);
        r.feed(&bytes);
        let a = r.next_answer().unwrap().unwrap();
        assert_eq!(r.body(&a).len(), 100_000);
    }
}
