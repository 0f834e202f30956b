//! Topic patterns and the rights a verified token grants.
//!
//! A pattern is an exact topic (`news.eu`), a prefix ending in `*` (`news.*`), or `*`
//! alone (everything). `{sub}` in a pattern stands for the token's `sub` and is replaced
//! once, when the token is verified, so that matching later is a plain byte compare or
//! prefix check with no allocation.
//!
//! Patterns that would grant more than their author meant are refused, which refuses the
//! token (`bad_claims`): an empty pattern, a `*` anywhere but at the end (so `**` too),
//! bytes outside printable ASCII without space, more than 255 topic bytes (+1 for `*`).
//!
//! A pattern with `{sub}` whose `sub` cannot be part of a topic (empty, a byte outside
//! printable ASCII, or a `*`) is dropped: it grants nothing and is not an error. Without
//! that rule an empty `sub` would turn `user.{sub}*` into `user.*`, the whole namespace,
//! and a `sub` of `*` would turn `user.{sub}` into a wildcard.

/// The longest topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;
/// The most patterns one list (`topics.sub` or `topics.pub`) may hold.
pub const MAX_PATTERNS_PER_LIST: usize = 64;

const SUB_PLACEHOLDER: &str = "{sub}";

/// Why a pattern was refused (all of them map to `TokenError::BadClaims`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern is the empty string.
    Empty,
    /// Longer than [`MAX_TOPIC_BYTES`] + 1 (before or after `{sub}` substitution).
    TooLong,
    /// A byte outside `!`..=`~` (printable ASCII, no space).
    BadByte,
    /// A `*` that is not the last byte (this includes `**`).
    MisplacedStar,
    /// More than [`MAX_PATTERNS_PER_LIST`] patterns in one list.
    TooMany,
}

/// One topic pattern, `{sub}` already substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The exact topic, or the prefix without its `*`.
    text: Box<str>,
    /// Whether `text` is a prefix (the pattern ended in `*`).
    prefix: bool,
}

fn is_topic_byte(b: u8) -> bool {
    (b'!'..=b'~').contains(&b)
}

impl Pattern {
    /// `*`: every topic.
    pub fn everything() -> Pattern {
        Pattern {
            text: Box::from(""),
            prefix: true,
        }
    }

    /// Parses one pattern from a token, replacing each `{sub}` by `sub` (one pass: a `sub`
    /// that itself contains `{sub}` is not expanded again). `Ok(None)`: the pattern uses
    /// `{sub}` and `sub` cannot be part of a topic, so it grants nothing (module doc).
    pub fn parse(template: &str, sub: &str) -> Result<Option<Pattern>, PatternError> {
        let bytes = template.as_bytes();
        if bytes.is_empty() {
            return Err(PatternError::Empty);
        }
        if bytes.len() > MAX_TOPIC_BYTES + 1 {
            return Err(PatternError::TooLong);
        }
        if !bytes.iter().copied().all(is_topic_byte) {
            return Err(PatternError::BadByte);
        }
        let prefix = bytes[bytes.len() - 1] == b'*';
        let body = if prefix {
            &template[..template.len() - 1]
        } else {
            template
        };
        if body.contains('*') {
            return Err(PatternError::MisplacedStar);
        }
        let text: Box<str> = if body.contains(SUB_PLACEHOLDER) {
            if sub.is_empty() || !sub.bytes().all(|b| is_topic_byte(b) && b != b'*') {
                return Ok(None);
            }
            let replaced = body.replace(SUB_PLACEHOLDER, sub);
            if replaced.len() > MAX_TOPIC_BYTES {
                return Err(PatternError::TooLong);
            }
            replaced.into_boxed_str()
        } else {
            if body.len() > MAX_TOPIC_BYTES {
                return Err(PatternError::TooLong);
            }
            Box::from(body)
        };
        Ok(Some(Pattern { text, prefix }))
    }

    /// Parses a whole list (`topics.sub` or `topics.pub`), dropping the patterns that
    /// grant nothing. More than [`MAX_PATTERNS_PER_LIST`] entries (counted before dropping)
    /// is an error.
    pub fn parse_list<S: AsRef<str>>(
        templates: &[S],
        sub: &str,
    ) -> Result<Vec<Pattern>, PatternError> {
        if templates.len() > MAX_PATTERNS_PER_LIST {
            return Err(PatternError::TooMany);
        }
        let mut out = Vec::with_capacity(templates.len());
        for t in templates {
            if let Some(p) = Pattern::parse(t.as_ref(), sub)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Whether `topic` is granted by this pattern: equality, or a byte prefix check.
    #[inline]
    pub fn matches(&self, topic: &str) -> bool {
        if self.prefix {
            topic.as_bytes().starts_with(self.text.as_bytes())
        } else {
            topic == &*self.text
        }
    }

    /// The exact topic, or the prefix without its `*`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this pattern ended in `*`.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// What a session may do: the topics it may subscribe to and publish on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rights {
    /// Patterns for subscribing.
    pub subscribe: Vec<Pattern>,
    /// Patterns for publishing.
    pub publish: Vec<Pattern>,
}

impl Rights {
    /// Subscribe to and publish on every topic (what a server without auth grants).
    pub fn all() -> Rights {
        Rights {
            subscribe: vec![Pattern::everything()],
            publish: vec![Pattern::everything()],
        }
    }

    /// Nothing at all (a token without a `topics` claim).
    pub fn none() -> Rights {
        Rights::default()
    }

    /// Whether some subscribe pattern grants `topic`.
    #[inline]
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }

    /// Whether some publish pattern grants `topic`.
    #[inline]
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, sub: &str) -> Result<Option<Pattern>, PatternError> {
        Pattern::parse(t, sub)
    }

    fn one(t: &str) -> Pattern {
        match Pattern::parse(t, "alice") {
            Ok(Some(p)) => p,
            other => panic!("{t}: {other:?}"),
        }
    }

    #[test]
    fn exact_prefix_and_star_match() {
        let exact = one("news.eu");
        assert!(exact.matches("news.eu"));
        assert!(!exact.matches("news.eu2"));
        assert!(!exact.matches("news.e"));
        assert!(!exact.matches(""));

        let prefix = one("news.*");
        assert!(prefix.matches("news."));
        assert!(prefix.matches("news.eu.sport"));
        assert!(!prefix.matches("news"));
        assert!(!prefix.matches("newsx"));
        assert!(!prefix.matches("other.news."));

        let star = one("*");
        assert!(star.matches("anything"));
        assert!(star.matches("a"));
        assert_eq!(star, Pattern::everything());
        assert_eq!(prefix.to_string(), "news.*");
    }

    #[test]
    fn refuses_patterns_that_grant_by_accident() {
        assert_eq!(p("", "a"), Err(PatternError::Empty));
        assert_eq!(p("**", "a"), Err(PatternError::MisplacedStar));
        assert_eq!(p("a*b", "a"), Err(PatternError::MisplacedStar));
        assert_eq!(p("*a", "a"), Err(PatternError::MisplacedStar));
        assert_eq!(p("a.**", "a"), Err(PatternError::MisplacedStar));
        assert_eq!(p("a b", "a"), Err(PatternError::BadByte));
        assert_eq!(p("a\u{7f}", "a"), Err(PatternError::BadByte));
        assert_eq!(p("caf\u{e9}", "a"), Err(PatternError::BadByte));
        assert_eq!(p("a\n", "a"), Err(PatternError::BadByte));
    }

    #[test]
    fn length_limit_is_255_topic_bytes_plus_star() {
        let t255 = "a".repeat(255);
        assert!(p(&t255, "x").is_ok_and(|p| p.is_some()));
        assert_eq!(p(&"a".repeat(256), "x"), Err(PatternError::TooLong));
        assert!(p(&format!("{t255}*"), "x").is_ok_and(|p| p.is_some()));
        assert_eq!(
            p(&format!("{}*", "a".repeat(256)), "x"),
            Err(PatternError::TooLong)
        );
        assert_eq!(p(&"a".repeat(300), "x"), Err(PatternError::TooLong));
        // After substitution too.
        assert!(
            p("user.{sub}", &"u".repeat(250))
                .is_ok_and(|p| p.is_some_and(|p| p.text().len() == 255))
        );
        assert_eq!(
            p("user.{sub}", &"u".repeat(251)),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn sub_is_substituted_once() {
        let pat = one("user.{sub}.*");
        assert_eq!(pat.text(), "user.alice.");
        assert!(pat.is_prefix());
        assert!(pat.matches("user.alice.inbox"));
        assert!(!pat.matches("user.bob.inbox"));

        let twice = one("{sub}.{sub}");
        assert_eq!(twice.text(), "alice.alice");

        // A sub that contains the placeholder is not expanded again.
        let Ok(Some(nested)) = p("u.{sub}", "{sub}") else {
            panic!()
        };
        assert_eq!(nested.text(), "u.{sub}");
        assert!(!nested.is_prefix());
    }

    #[test]
    fn sub_that_cannot_be_in_a_topic_drops_the_pattern() {
        // Empty sub: `user.{sub}*` must not become `user.*`.
        assert_eq!(p("user.{sub}*", ""), Ok(None));
        assert_eq!(p("user.{sub}", ""), Ok(None));
        // A star in sub must not become a wildcard.
        assert_eq!(p("user.{sub}", "*"), Ok(None));
        assert_eq!(p("user.{sub}", "a*"), Ok(None));
        assert_eq!(p("user.{sub}", "a b"), Ok(None));
        // Patterns without {sub} are unaffected by an empty sub.
        assert!(p("news.*", "").is_ok_and(|p| p.is_some()));
        // A bad template is still refused, whatever the sub.
        assert_eq!(p("user.{sub}**", ""), Err(PatternError::MisplacedStar));

        let list = Pattern::parse_list(&["user.{sub}*", "news"], "");
        let Ok(list) = list else { panic!() };
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].text(), "news");
    }

    #[test]
    fn list_is_bounded() {
        let many: Vec<String> = (0..=MAX_PATTERNS_PER_LIST)
            .map(|i| format!("t{i}"))
            .collect();
        assert_eq!(Pattern::parse_list(&many, "a"), Err(PatternError::TooMany));
        assert_eq!(
            Pattern::parse_list(&many[..MAX_PATTERNS_PER_LIST], "a").map(|v| v.len()),
            Ok(64)
        );
    }

    #[test]
    fn rights_check_each_list() {
        let r = Rights {
            subscribe: vec![one("news.*"), one("user.{sub}")],
            publish: vec![one("chat.room1")],
        };
        assert!(r.may_subscribe("news.eu"));
        assert!(r.may_subscribe("user.alice"));
        assert!(!r.may_subscribe("user.bob"));
        assert!(!r.may_subscribe("chat.room1"));
        assert!(r.may_publish("chat.room1"));
        assert!(!r.may_publish("news.eu"));
        assert!(Rights::all().may_subscribe("x") && Rights::all().may_publish("x"));
        assert!(!Rights::none().may_subscribe("x") && !Rights::none().may_publish("x"));
    }
}
