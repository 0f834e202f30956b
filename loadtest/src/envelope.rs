//! ringcast's mux-mode envelopes as a subscriber receives them: which topic, which offset
//! (on a topic with history), and where the payload starts. Parsed in place, no allocation,
//! no serde: this runs once per delivered message on the receive path.
//!
//! - Text: `{"type":"message","topic":"T","offset":N,"data":"PAYLOAD"...}`. The keys before
//!   `data` are read in any order (unknown ones skipped); the payload starts right after the
//!   opening quote of `data` (the generator's stamps are hex, never escaped) and nothing after
//!   it is read, so an `offset` placed after `data` is not seen (ringcast puts it before, as
//!   docs/protocol.md shows; reading past a 16 KiB payload on every message would cost more
//!   than the rest of the receive path).
//! - Binary v1 (`/ws`): `[topic length: 1 byte][topic][payload]`.
//! - Binary v2 (`/ws?envelope=2`): `[topic length][topic][offset: u64 big-endian][payload]`,
//!   offset 0 meaning "no history on this topic".

/// Whether a URL is ringcast's mux mode (`/ws` alone or with a query), whose messages
/// arrive in envelopes.
pub fn is_mux_url(url: &str) -> bool {
    let path = url.split_once("://").map_or(url, |(_, r)| r);
    let path = path.find('/').map_or("", |i| &path[i..]);
    path == "/ws" || path.starts_with("/ws?")
}

/// Whether a mux URL opts into binary envelopes v2 (`envelope=2` in its query).
pub fn is_v2_url(url: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv == "envelope=2"))
}

/// One delivered message, unwrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The topic as it appears on the wire: raw bytes (binary), or the contents of the JSON
    /// string (text), still escaped when `topic_escaped`.
    pub topic: &'a [u8],
    /// The text topic contains a backslash escape (see [`unescape`]).
    pub topic_escaped: bool,
    /// The publication's offset, when the envelope carries one (topic with history).
    pub offset: Option<u64>,
    /// The message payload (text: from the opening quote of `data` to the end of the frame).
    pub payload: &'a [u8],
}

/// Parses a delivered message: `text` is the frame's opcode, `v2` whether the connection
/// opted into binary envelope v2. `None` for anything that is not a message envelope
/// (acks, errors, pongs) or is malformed (an offset that is not an unsigned 64-bit integer).
pub fn parse(text: bool, v2: bool, msg: &[u8]) -> Option<Envelope<'_>> {
    if text {
        parse_text(msg)
    } else {
        parse_binary(v2, msg)
    }
}

/// A binary envelope, v1 or v2.
pub fn parse_binary(v2: bool, msg: &[u8]) -> Option<Envelope<'_>> {
    let n = usize::from(*msg.first()?);
    let topic = msg.get(1..1 + n)?;
    let (offset, payload) = if v2 {
        let raw: [u8; 8] = msg.get(1 + n..9 + n)?.try_into().ok()?;
        let off = u64::from_be_bytes(raw);
        ((off != 0).then_some(off), msg.get(9 + n..)?)
    } else {
        (None, msg.get(1 + n..)?)
    };
    Some(Envelope {
        topic,
        topic_escaped: false,
        offset,
        payload,
    })
}

/// A text envelope.
pub fn parse_text(msg: &[u8]) -> Option<Envelope<'_>> {
    let mut p = Cursor { b: msg, i: 0 };
    p.ws();
    p.eat(b'{')?;
    let mut is_message = false;
    let mut topic: Option<(&[u8], bool)> = None;
    let mut offset = None;
    loop {
        p.ws();
        let (key, _) = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        match key {
            b"type" => is_message = p.string()?.0 == b"message",
            b"topic" => topic = Some(p.string()?),
            b"offset" => offset = Some(p.uint()?),
            b"data" => {
                p.eat(b'"')?;
                let (topic, topic_escaped) = topic.filter(|_| is_message)?;
                return Some(Envelope {
                    topic,
                    topic_escaped,
                    offset,
                    payload: msg.get(p.i..)?,
                });
            }
            _ => p.skip_value()?,
        }
        p.ws();
        // A `}` before `data`: an object without a payload (not a message envelope).
        p.eat(b',')?;
    }
}

/// Decodes a JSON-escaped topic (the contents of the string) into `out`; its length, or
/// `None` for an escape a topic cannot hold (topics are printable ASCII, at most 255 bytes).
pub fn unescape(s: &[u8], out: &mut [u8; 256]) -> Option<usize> {
    let mut n = 0;
    let mut i = 0;
    while i < s.len() {
        let c = if s[i] == b'\\' {
            i += 1;
            match *s.get(i)? {
                b'u' => {
                    let hex = std::str::from_utf8(s.get(i + 1..i + 5)?).ok()?;
                    i += 4;
                    u8::try_from(u16::from_str_radix(hex, 16).ok()?)
                        .ok()
                        .filter(u8::is_ascii)?
                }
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 0x08,
                b'f' => 0x0c,
                c @ (b'"' | b'\\' | b'/') => c,
                _ => return None,
            }
        } else {
            s[i]
        };
        *out.get_mut(n)? = c;
        n += 1;
        i += 1;
    }
    Some(n)
}

/// A read position in a JSON text.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// A JSON string: its contents (escapes left as they are) and whether it has any.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Some((s, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
    }

    /// An unsigned integer that fits in 64 bits (no sign, fraction or exponent).
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(d) = self.b.get(self.i).filter(|c| c.is_ascii_digit()) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        if self.i == start || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }

    /// Any JSON value: a string, an object or array (strings inside may hold brackets), or
    /// a scalar (number, true, false, null) up to the next delimiter.
    fn skip_value(&mut self) -> Option<()> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while !matches!(
                    self.b.get(self.i),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn mux_and_v2_urls_are_recognised() {
        assert!(is_mux_url("ws://127.0.0.1:8080/ws?subscribe={topic}"));
        assert!(is_mux_url("ws://h/ws"));
        assert!(!is_mux_url("ws://h/ws/{topic}"));
        assert!(!is_mux_url("ws://h/wsx?subscribe=a"));
        assert!(is_v2_url("ws://h/ws?subscribe={topic}&envelope=2"));
        assert!(is_v2_url("ws://h/ws?envelope=2&subscribe=a"));
        assert!(!is_v2_url("ws://h/ws?subscribe=a&envelope=1"));
        assert!(!is_v2_url("ws://h/ws?subscribe=envelope=2x"));
        assert!(!is_v2_url("ws://h/ws"));
    }

    fn text(s: &str) -> Option<Envelope<'_>> {
        parse(true, false, s.as_bytes())
    }

    #[test]
    fn text_with_and_without_offset() {
        let e =
            text(r#"{"type":"message","topic":"prices","offset":43,"data":"EUR 1.0842"}"#).unwrap();
        assert_eq!(e.topic, b"prices");
        assert!(!e.topic_escaped);
        assert_eq!(e.offset, Some(43));
        assert_eq!(e.payload, br#"EUR 1.0842"}"#);
        let e = text(r#"{"type":"message","topic":"prices","data":"x"}"#).unwrap();
        assert_eq!((e.offset, e.payload), (None, &br#"x"}"#[..]));
        // The largest offset there is.
        let e = text(r#"{"type":"message","topic":"t","offset":18446744073709551615,"data":""}"#);
        assert_eq!(e.unwrap().offset, Some(u64::MAX));
    }

    #[test]
    fn text_keys_in_another_order_and_unknown_keys() {
        let e = text(
            r#"{ "offset" : 7 , "x":{"a":["}",1]},"n":null,"topic":"t","type":"message","data":"p"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.topic, e.offset, e.payload),
            (&b"t"[..], Some(7), &br#"p"}"#[..])
        );
    }

    #[test]
    fn text_escaped_topic() {
        // The topic `a","offset":9,"data":"b` (printable ASCII): its quotes are escaped, so
        // the key-like text inside it is not taken for keys.
        let m =
            r#"{"type":"message","topic":"a\",\"offset\":9,\"data\":\"b","offset":2,"data":"P"}"#;
        let e = text(m).unwrap();
        assert_eq!(e.offset, Some(2));
        assert_eq!(e.payload, br#"P"}"#);
        assert!(e.topic_escaped);
        let mut out = [0u8; 256];
        let n = unescape(e.topic, &mut out).unwrap();
        assert_eq!(&out[..n], br#"a","offset":9,"data":"b"#);
        let n = unescape(br"x\u0041\\\/", &mut out).unwrap();
        assert_eq!(&out[..n], br"xA\/");
        assert_eq!(unescape(br"\u00e9", &mut out), None, "not ASCII");
        assert_eq!(unescape(br"\q", &mut out), None);
        assert_eq!(unescape(&[b'a'; 257], &mut out), None, "too long");
    }

    #[test]
    fn text_that_is_not_an_envelope_or_is_malformed() {
        for m in [
            r#"{"type":"ack","op":"subscribe","topic":"t","epoch":"k3X9aQ2b","offset":42}"#,
            r#"{"type":"ack","topic":"t","data":"x"}"#,
            r#"{"type":"pong"}"#,
            r#"{"type":"message","data":"x"}"#, // no topic
            r#"{"topic":"t","data":"x"}"#,      // no type
            r#"{"type":"message","topic":"t","offset":-1,"data":"x"}"#,
            r#"{"type":"message","topic":"t","offset":1.5,"data":"x"}"#,
            r#"{"type":"message","topic":"t","offset":1e3,"data":"x"}"#,
            r#"{"type":"message","topic":"t","offset":"4","data":"x"}"#,
            r#"{"type":"message","topic":"t","offset":18446744073709551616,"data":"x"}"#,
            r#"{"type":"message","topic":"t","offset":,"data":"x"}"#,
            r#"{"type":"message","topic":"t","data":5}"#,
            r#"{"type":"message","topic":"t""#,
            r#"{"type":"message","topic":"t"#,
            "",
            "[]",
            "not json",
        ] {
            assert_eq!(text(m), None, "{m}");
        }
    }

    #[test]
    fn binary_v1_and_v2() {
        let mut v1 = vec![6u8];
        v1.extend_from_slice(b"room.1PAYLOAD");
        let e = parse(false, false, &v1).unwrap();
        assert_eq!(
            (e.topic, e.offset, e.payload),
            (&b"room.1"[..], None, &b"PAYLOAD"[..])
        );

        let mut v2 = vec![6u8];
        v2.extend_from_slice(b"room.1");
        v2.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        v2.extend_from_slice(b"PAYLOAD");
        let e = parse(false, true, &v2).unwrap();
        assert_eq!(e.topic, b"room.1");
        assert_eq!(e.offset, Some(0x0102_0304_0506_0708));
        assert_eq!(e.payload, b"PAYLOAD");
        // Offset 0: a topic without history; an empty payload is still a message.
        let mut z = vec![1u8, b't'];
        z.extend_from_slice(&[0; 8]);
        let e = parse(false, true, &z).unwrap();
        assert_eq!((e.offset, e.payload), (None, &b""[..]));
        // The same bytes read as v1 would take the offset for payload.
        assert_eq!(parse(false, false, &v2).unwrap().payload.len(), 15);
    }

    #[test]
    fn binary_malformed() {
        assert_eq!(parse(false, false, &[]), None);
        assert_eq!(parse(false, false, &[3, b'a']), None, "topic cut short");
        assert_eq!(parse(false, true, &[]), None);
        assert_eq!(
            parse(false, true, &[1, b't', 0, 0, 0]),
            None,
            "offset cut short"
        );
        assert_eq!(parse(false, true, &[2, b't']), None);
    }
}
