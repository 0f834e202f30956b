//! The body of a batch publish (`POST /publish`): a JSON array or NDJSON of items
//! `{"topic": "...", "data": "text"}` (a text message) or `{"topic": "...", "b64": "..."}`
//! (a binary message, standard base64, padding optional).
//!
//! Pure: bytes in, ready-to-publish messages out through a callback, in order, one call per
//! item. An item that is refused (see [`ItemError`]) is refused alone, with its index, and
//! the others go on. The body as a whole is refused ([`BodyError`]) only when it is not a
//! JSON array at all (syntax, or another JSON value) or holds more than
//! `--max-publish-batch-items` items; then nothing is published: the array is checked
//! whole (one pass that splits it into borrowed item slices) before its first item is
//! handed out, and NDJSON lines are counted first.
//!
//! Fast on purpose (the target is over a million small messages per second on one core):
//! items are deserialized into a struct borrowing the body (`&str` where the JSON string
//! has no escapes; only an escaped string is copied), base64 is decoded into one scratch
//! buffer reused for every item, and no `serde_json::Value` is built.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::proto::frame::OpCode;
use crate::pubsub::mux::ErrorCode;
use crate::pubsub::{TopicError, validate_topic};

/// Standard base64, with or without padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How the items are laid out, from the `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json` (or no Content-Type): one JSON array of items.
    Json,
    /// `application/x-ndjson` (also `application/jsonl`, `application/json-seq` is not):
    /// one item per line; blank lines are skipped.
    Ndjson,
}

impl Format {
    /// The format a `Content-Type` names (parameters such as `charset` ignored); `None` for
    /// any other type (answered `415`).
    pub fn from_content_type(ct: Option<&[u8]>) -> Option<Format> {
        let Some(ct) = ct else {
            return Some(Format::Json);
        };
        let essence = ct.split(|&b| b == b';').next().unwrap_or(ct).trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json") {
            Some(Format::Json)
        } else if essence.eq_ignore_ascii_case(b"application/x-ndjson")
            || essence.eq_ignore_ascii_case(b"application/jsonl")
        {
            Some(Format::Ndjson)
        } else {
            None
        }
    }
}

/// Bounds applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items in one body (`--max-publish-batch-items`).
    pub max_items: usize,
    /// Largest message, decoded (`--max-message-size`).
    pub max_message_size: usize,
}

/// Why a whole body is refused (nothing of it is published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not a JSON array (malformed JSON, or another JSON value). → 400
    NotArray(String),
    /// More items than `max`. → 413
    TooManyItems {
        /// `--max-publish-batch-items`.
        max: usize,
    },
}

impl BodyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::NotArray(_) => 400,
            BodyError::TooManyItems { .. } => 413,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::NotArray(e) => write!(f, "the body is not a JSON array of items: {e}"),
            BodyError::TooManyItems { max } => write!(
                f,
                "the batch has more than {max} items (--max-publish-batch-items)"
            ),
        }
    }
}

/// Why one item is refused; the others of its batch are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemError {
    /// An NDJSON line that is not JSON. `bad_json`
    BadJson(String),
    /// Not an object, a field of the wrong type, no `topic`, or not exactly one of `data`
    /// and `b64`. `bad_message`
    BadMessage(String),
    /// The topic name is refused. `bad_topic`
    BadTopic(TopicError),
    /// `b64` is not base64. `bad_base64`
    BadBase64,
    /// The message (decoded) is over `--max-message-size`. `too_large`
    TooLarge {
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The backend may not publish to this topic (the authorization hook said no).
    /// `forbidden`
    Forbidden,
}

impl ItemError {
    /// Every code, in the order metrics label them (see [`ItemError::index`]).
    pub const CODES: [&'static str; 6] = [
        ErrorCode::BadJson.as_str(),
        ErrorCode::BadMessage.as_str(),
        ErrorCode::BadTopic.as_str(),
        "bad_base64",
        "too_large",
        "forbidden",
    ];

    /// Index in [`ItemError::CODES`].
    pub fn index(&self) -> usize {
        match self {
            ItemError::BadJson(_) => 0,
            ItemError::BadMessage(_) => 1,
            ItemError::BadTopic(_) => 2,
            ItemError::BadBase64 => 3,
            ItemError::TooLarge { .. } => 4,
            ItemError::Forbidden => 5,
        }
    }

    /// The machine-readable code in the item's result. A refused topic gets the code the
    /// pub/sub layer gives it everywhere else ([`crate::pubsub::Error::wire`]).
    pub fn code(&self) -> &'static str {
        match self {
            ItemError::BadTopic(e) => crate::pubsub::Error::BadTopic(*e).wire().mux_code.as_str(),
            other => Self::CODES[other.index()],
        }
    }
}

impl fmt::Display for ItemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemError::BadJson(e) => write!(f, "not JSON: {e}"),
            ItemError::BadMessage(e) => f.write_str(e),
            ItemError::BadTopic(e) => e.fmt(f),
            ItemError::BadBase64 => f.write_str("b64 is not standard base64"),
            ItemError::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes is over the message size limit of {max} bytes"
            ),
            ItemError::Forbidden => f.write_str("not allowed to publish to this topic"),
        }
    }
}

/// One message ready to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'m> {
    /// The topic, validated.
    pub topic: &'m str,
    /// Text (`data`) or binary (`b64`).
    pub opcode: OpCode,
    /// The payload (for `b64`, decoded).
    pub payload: &'m [u8],
}

/// Parses `body` and calls `each(index, item)` for every item, in order. `scratch` holds
/// decoded base64 (reused across items and calls; cleared here). Returns the number of
/// items, or why the whole body is refused (then `each` was not called).
pub fn parse<F>(
    body: &[u8],
    format: Format,
    limits: &Limits,
    scratch: &mut Vec<u8>,
    mut each: F,
) -> Result<usize, BodyError>
where
    F: FnMut(usize, Result<Message<'_>, ItemError>),
{
    match format {
        Format::Json => {
            let items = split_array(body, limits.max_items)?;
            for (i, raw) in items.iter().enumerate() {
                let item = serde_json::from_str::<RawItem<'_>>(raw.get())
                    .map_err(|e| ItemError::BadMessage(e.to_string()));
                deliver(i, item, limits, scratch, &mut each);
            }
            Ok(items.len())
        }
        Format::Ndjson => {
            let mut n = 0;
            for _ in lines(body) {
                n += 1;
                if n > limits.max_items {
                    return Err(BodyError::TooManyItems {
                        max: limits.max_items,
                    });
                }
            }
            for (i, line) in lines(body).enumerate() {
                let item = serde_json::from_slice::<RawItem<'_>>(line).map_err(|e| {
                    if e.is_data() {
                        ItemError::BadMessage(e.to_string())
                    } else {
                        ItemError::BadJson(e.to_string())
                    }
                });
                deliver(i, item, limits, scratch, &mut each);
            }
            Ok(n)
        }
    }
}

/// The non-blank lines of an NDJSON body (a trailing CR is part of the line ending).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.trim_ascii().is_empty())
}

/// Checks one item and hands it to `each`.
fn deliver<F>(
    index: usize,
    item: Result<RawItem<'_>, ItemError>,
    limits: &Limits,
    scratch: &mut Vec<u8>,
    each: &mut F,
) where
    F: FnMut(usize, Result<Message<'_>, ItemError>),
{
    let item = match item {
        Ok(item) => item,
        Err(e) => return each(index, Err(e)),
    };
    let Some(topic) = item.topic else {
        return each(index, Err(ItemError::BadMessage("no topic".to_owned())));
    };
    let (opcode, payload) = match (&item.data, &item.b64) {
        (Some(data), None) => {
            let payload = data.0.as_bytes();
            if payload.len() > limits.max_message_size {
                return each(
                    index,
                    Err(ItemError::TooLarge {
                        len: payload.len(),
                        max: limits.max_message_size,
                    }),
                );
            }
            (OpCode::Text, payload)
        }
        (None, Some(b64)) => {
            let encoded = b64.0.as_bytes();
            // Refused before decoding when even the shortest decoding would be too large.
            let at_least = (encoded.len() / 4 * 3).saturating_sub(2);
            if at_least > limits.max_message_size {
                return each(
                    index,
                    Err(ItemError::TooLarge {
                        len: at_least,
                        max: limits.max_message_size,
                    }),
                );
            }
            scratch.clear();
            if B64.decode_vec(encoded, scratch).is_err() {
                return each(index, Err(ItemError::BadBase64));
            }
            if scratch.len() > limits.max_message_size {
                return each(
                    index,
                    Err(ItemError::TooLarge {
                        len: scratch.len(),
                        max: limits.max_message_size,
                    }),
                );
            }
            (OpCode::Binary, &scratch[..])
        }
        _ => {
            return each(
                index,
                Err(ItemError::BadMessage(
                    "give exactly one of data (text) and b64 (binary)".to_owned(),
                )),
            );
        }
    };
    if let Err(e) = validate_topic(&topic.0) {
        return each(index, Err(ItemError::BadTopic(e)));
    }
    each(
        index,
        Ok(Message {
            topic: &topic.0,
            opcode,
            payload,
        }),
    );
}

/// An item as sent. Unknown fields are ignored (room for later ones, such as an `id`).
#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow)]
    topic: Option<Str<'a>>,
    #[serde(borrow)]
    data: Option<Str<'a>>,
    #[serde(borrow)]
    b64: Option<Str<'a>>,
}

/// A JSON string borrowed from the body when it has no escapes (serde's own `Cow<str>`
/// impl always copies, and `&str` cannot hold an escaped string).
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Str)
    }
}

/// Splits a JSON array into its items' raw text, checking the whole body's syntax, and
/// stopping at `max + 1` items (so a 4 MiB body of `{}` does not build a million slices
/// before it is refused).
fn split_array(body: &[u8], max: usize) -> Result<Vec<&RawValue>, BodyError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = de
        .deserialize_seq(Bounded {
            max,
            too_many: &too_many,
        })
        .and_then(|items| de.end().map(|()| items));
    match items {
        Ok(items) => Ok(items),
        Err(_) if too_many.get() => Err(BodyError::TooManyItems { max }),
        Err(e) => Err(BodyError::NotArray(e.to_string())),
    }
}

struct Bounded<'c> {
    max: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.too_many.set(true);
                return Err(de::Error::custom("too many items"));
            }
            items.push(raw);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item as `Ok((topic, opcode, payload))` or `Err(code)`.
    type Got = Vec<Result<(String, OpCode, Vec<u8>), &'static str>>;

    fn run(body: &str, format: Format, limits: Limits) -> Result<Got, BodyError> {
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        let n = parse(body.as_bytes(), format, &limits, &mut scratch, |i, item| {
            assert_eq!(i, got.len(), "in order, one call per item");
            got.push(
                item.map(|m| (m.topic.to_owned(), m.opcode, m.payload.to_vec()))
                    .map_err(|e| e.code()),
            );
        })?;
        assert_eq!(n, got.len());
        Ok(got)
    }

    const L: Limits = Limits {
        max_items: 100,
        max_message_size: 8,
    };

    fn text(t: &str, d: &str) -> Result<(String, OpCode, Vec<u8>), &'static str> {
        Ok((t.to_owned(), OpCode::Text, d.as_bytes().to_vec()))
    }

    #[test]
    fn json_array_items_in_order_each_refused_alone() {
        let body = r#"[
            {"topic": "a", "data": "one"},
            {"topic": "a b", "data": "x"},
            {"topic": "b", "b64": "AP8H"},
            {"topic": "b", "b64": "AP8"},
            7,
            {"data": "no topic"},
            {"topic": "c"},
            {"topic": "c", "data": "x", "b64": "eA=="},
            {"topic": "c", "data": "123456789"},
            {"topic": "c", "b64": "!!!!"},
            {"topic": 5, "data": "x"},
            {"topic": "c\u0041", "data": "tab\there", "id": 3},
            {"topic": "c", "data": "12345678"}
        ]"#;
        let got = run(body, Format::Json, L).unwrap();
        assert_eq!(
            got,
            vec![
                text("a", "one"),
                Err("bad_topic"),
                Ok(("b".into(), OpCode::Binary, vec![0, 0xff, 7])),
                // Unpadded base64 is accepted.
                Ok(("b".into(), OpCode::Binary, vec![0, 0xff])),
                Err("bad_message"),
                Err("bad_message"),
                Err("bad_message"),
                Err("bad_message"),
                Err("too_large"),
                Err("bad_base64"),
                Err("bad_message"),
                // Escapes in topic and data are decoded; unknown fields ignored.
                text("cA", "tab\there"),
                // Exactly the limit is fine.
                text("c", "12345678"),
            ]
        );
    }

    #[test]
    fn whole_body_refusals() {
        for body in [
            "",
            "{}",
            r#"{"topic":"a","data":"x"}"#,
            "[1,",
            "[1] x",
            "nul",
        ] {
            let e = run(body, Format::Json, L).unwrap_err();
            assert_eq!(e.status(), 400, "{body:?}: {e}");
        }
        assert_eq!(run("[]", Format::Json, L).unwrap(), vec![]);
        let many = format!("[{}{{}}]", "{},".repeat(100));
        assert_eq!(
            run(&many, Format::Json, L).unwrap_err(),
            BodyError::TooManyItems { max: 100 }
        );
        let exactly = format!("[{}{{}}]", "{},".repeat(99));
        assert_eq!(run(&exactly, Format::Json, L).unwrap().len(), 100);
        // Not UTF-8 inside a string: the array is refused whole.
        let mut bad = br#"[{"topic":"a","data":""#.to_vec();
        bad.extend_from_slice(&[0xff, b'"', b'}', b']']);
        let e = parse(&bad, Format::Json, &L, &mut Vec::new(), |_, _| {
            panic!("nothing handed out")
        })
        .unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn ndjson_lines() {
        let body = "{\"topic\":\"a\",\"data\":\"1\"}\r\n\n  \n{\"topic\":\"a\",\"data\":\n{\"topic\":\"b\",\"data\":\"2\"}\n[]\n{\"topic\":\"b\",\"data\":\"\\ud800\"}\n{\"topic\":\"c\",\"data\":\"3\"}";
        let got = run(body, Format::Ndjson, L).unwrap();
        assert_eq!(got[0], text("a", "1"));
        assert_eq!(got[1], Err("bad_json"), "a broken line is refused alone");
        assert_eq!(got[2], text("b", "2"));
        assert_eq!(got[3], Err("bad_message"), "an array is not an item");
        assert!(
            got[4].is_err(),
            "a lone surrogate is not text: {:?}",
            got[4]
        );
        assert_eq!(got[5], text("c", "3"));
        assert_eq!(got.len(), 6);
        let many = "{}\n".repeat(101);
        assert_eq!(
            run(&many, Format::Ndjson, L).unwrap_err(),
            BodyError::TooManyItems { max: 100 }
        );
    }

    #[test]
    fn unescaped_strings_are_borrowed() {
        let body = br#"[{"topic":"t","data":"plain"}]"#;
        let mut seen = false;
        parse(body, Format::Json, &L, &mut Vec::new(), |_, m| {
            let m = m.unwrap();
            let range = body.as_ptr_range();
            assert!(range.contains(&m.payload.as_ptr()), "points into the body");
            assert!(range.contains(&m.topic.as_ptr()));
            seen = true;
        })
        .unwrap();
        assert!(seen);
    }

    #[test]
    fn content_types() {
        let f = Format::from_content_type;
        assert_eq!(f(None), Some(Format::Json));
        assert_eq!(
            f(Some(b"Application/JSON; charset=utf-8")),
            Some(Format::Json)
        );
        assert_eq!(f(Some(b"application/x-ndjson")), Some(Format::Ndjson));
        assert_eq!(f(Some(b"text/plain")), None);
        assert_eq!(f(Some(b"application/x-www-form-urlencoded")), None);
    }

    #[test]
    fn codes_line_up() {
        let all = [
            ItemError::BadJson(String::new()),
            ItemError::BadMessage(String::new()),
            ItemError::BadTopic(TopicError::Empty),
            ItemError::BadBase64,
            ItemError::TooLarge { len: 9, max: 8 },
            ItemError::Forbidden,
        ];
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(e.code(), ItemError::CODES[i]);
        }
    }

    proptest::proptest! {
        /// Whatever the bytes: no panic, one call per item when the body is taken, none
        /// when it is refused whole.
        #[test]
        fn any_body(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            jsonish in r#"[\[\]{},:" \n\\a-z0-9=+/]{0,300}"#,
            ndjson in proptest::prelude::any::<bool>(),
        ) {
            let format = if ndjson { Format::Ndjson } else { Format::Json };
            let limits = Limits { max_items: 5, max_message_size: 16 };
            for body in [&bytes[..], jsonish.as_bytes()] {
                let mut calls = 0;
                let r = parse(body, format, &limits, &mut Vec::new(), |i, _| {
                    assert_eq!(i, calls);
                    calls += 1;
                });
                match r {
                    Ok(n) => proptest::prop_assert_eq!(n, calls),
                    Err(_) => proptest::prop_assert_eq!(calls, 0),
                }
            }
        }
    }
}
