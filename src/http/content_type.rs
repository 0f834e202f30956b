//! Which `Content-Type`s publish a text message. Text is what a browser's `WebSocket`
//! delivers as a string (and what a mux envelope carries as JSON text); everything else is
//! binary. JSON is text: `application/json` published as binary would reach a browser as a
//! `Blob` and its `typeof e.data === "string"` check would drop it.
//!
//! Textual: `text/*`, `application/json`, `application/*+json`, `application/xml`,
//! `application/*+xml`, `application/javascript`, `application/ecmascript`,
//! `application/x-ndjson`, with no charset or a UTF-8 one (`charset=utf-8`, any case,
//! quoted or not). A textual type with another charset (`text/plain; charset=latin1`) is
//! refused by the caller: the server does not transcode, and a WebSocket text message must
//! be UTF-8.

/// What a publish's `Content-Type` makes of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// A text message (the body must be UTF-8).
    Text,
    /// A JSON type (`application/json`, `application/*+json`): a text message, carried in
    /// mux envelopes as a JSON value when the body is a JSON object or array.
    Json,
    /// A binary message (anything that is not a textual type, or no `Content-Type`).
    Binary,
    /// A textual type with a charset other than UTF-8.
    UnsupportedCharset,
}

/// Classifies a `Content-Type` header value (`None`: no header, binary).
pub fn body_type(value: Option<&[u8]>) -> BodyType {
    let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
        return BodyType::Binary;
    };
    let mut parts = v.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !is_textual(&essence) {
        return BodyType::Binary;
    }
    let json = essence == "application/json" || essence.ends_with("+json");
    for p in parts {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let cs = value.trim().trim_matches('"');
            if !cs.eq_ignore_ascii_case("utf-8") && !cs.eq_ignore_ascii_case("utf8") {
                return BodyType::UnsupportedCharset;
            }
        }
    }
    if json { BodyType::Json } else { BodyType::Text }
}

fn is_textual(essence: &str) -> bool {
    if essence.starts_with("text/") && essence.len() > 5 {
        return true;
    }
    let Some(sub) = essence.strip_prefix("application/") else {
        return false;
    };
    matches!(
        sub,
        "json" | "xml" | "javascript" | "ecmascript" | "x-ndjson"
    ) || sub.ends_with("+json")
        || sub.ends_with("+xml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_types_are_text() {
        for ct in [
            "text/plain",
            "TEXT/HTML; charset=UTF-8",
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=\"utf-8\"",
            "application/vnd.api+json",
            "application/xml",
            "application/atom+xml",
            "application/javascript",
            "application/x-ndjson",
        ] {
            let json =
                ct.to_ascii_lowercase().starts_with("application/json") || ct.contains("+json");
            let want = if json { BodyType::Json } else { BodyType::Text };
            assert_eq!(body_type(Some(ct.as_bytes())), want, "{ct}");
        }
    }

    #[test]
    fn everything_else_is_binary() {
        for ct in [
            "application/octet-stream",
            "application/jsonx",
            "image/png",
            "application/",
            "text/",
            "",
        ] {
            assert_eq!(body_type(Some(ct.as_bytes())), BodyType::Binary, "{ct}");
        }
        assert_eq!(body_type(None), BodyType::Binary);
        assert_eq!(body_type(Some(b"\xff")), BodyType::Binary);
    }

    #[test]
    fn other_charsets_are_refused() {
        for ct in [
            "text/plain; charset=latin1",
            "application/json; charset=utf-16",
        ] {
            assert_eq!(
                body_type(Some(ct.as_bytes())),
                BodyType::UnsupportedCharset,
                "{ct}"
            );
        }
    }
}
