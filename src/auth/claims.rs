//! The claims of a token whose signature already verified: parsed straight from the
//! decoded JSON into borrowed strings, checked against `now`, the audience and the issuer,
//! and turned into a [`Session`].
//!
//! Shape errors in well-formed JSON (a non-numeric `exp`, a `topics` that is not
//! `{"sub": [..], "pub": [..]}`, an unknown key inside `topics`, a duplicate claim) are
//! `bad_claims`; JSON that does not parse is `malformed`. Unknown top-level claims are
//! ignored (identity providers add their own).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::error::TokenError;
use super::rights::{Pattern, Rights};
use super::verifier::Session;

/// What the claim checks need from the settings.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    pub audience: Option<String>,
    pub issuer: Option<String>,
    /// Seconds of grace on both `exp` and `nbf`.
    pub leeway: u64,
}

/// An RFC 7519 NumericDate: a JSON number of seconds. Fractions are allowed; `exp` is
/// rounded down and `nbf` up, so rounding never widens the validity window.
#[derive(Debug, Clone, Copy)]
struct NumericDate(f64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v >= 0.0 {
            Ok(NumericDate(v))
        } else {
            Err(de::Error::custom(
                "NumericDate must be a non-negative number",
            ))
        }
    }
}

impl NumericDate {
    fn floor(self) -> u64 {
        // `as` saturates for values above u64::MAX, which is what an `exp` far away means.
        self.0.floor() as u64
    }
    fn ceil(self) -> u64 {
        self.0.ceil() as u64
    }
}

/// `aud`: one string or an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// ringcast's own claim: `{"sub": [patterns], "pub": [patterns]}`, both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics<'a> {
    #[serde(borrow, default)]
    sub: Vec<Cow<'a, str>>,
    #[serde(borrow, default, rename = "pub")]
    publish: Vec<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    /// Parsed so that a non-number is refused; not otherwise used.
    #[serde(default)]
    #[allow(dead_code)]
    iat: Option<NumericDate>,
    /// Parsed so that a non-string is refused; not otherwise used.
    #[serde(borrow, default)]
    #[allow(dead_code)]
    jti: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    aud: Option<Audience<'a>>,
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topics: Option<Topics<'a>>,
}

/// Parses the decoded claims JSON and checks it (signature already verified).
pub(crate) fn check(json: &[u8], rules: &ClaimRules, now: u64) -> Result<Session, TokenError> {
    let raw: RawClaims<'_> = serde_json::from_slice(json).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => TokenError::BadClaims,
        _ => TokenError::Malformed,
    })?;

    let exp = raw.exp.ok_or(TokenError::BadClaims)?.floor();
    if now >= exp.saturating_add(rules.leeway) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = raw.nbf
        && now.saturating_add(rules.leeway) < nbf.ceil()
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(wanted) = &rules.audience
        && !raw.aud.as_ref().is_some_and(|a| a.contains(wanted))
    {
        return Err(TokenError::WrongAudience);
    }
    if let Some(wanted) = &rules.issuer
        && raw.iss.as_deref() != Some(wanted.as_str())
    {
        return Err(TokenError::WrongIssuer);
    }

    let sub = raw.sub.as_deref().unwrap_or("");
    let rights = match &raw.topics {
        None => Rights::none(),
        Some(t) => Rights {
            subscribe: Pattern::parse_list(&t.sub, sub).map_err(|_| TokenError::BadClaims)?,
            publish: Pattern::parse_list(&t.publish, sub).map_err(|_| TokenError::BadClaims)?,
        },
    };
    Ok(Session {
        user: Arc::from(sub),
        expires: exp,
        rights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            audience: None,
            issuer: None,
            leeway: 5,
        }
    }

    fn run(json: &str) -> Result<Session, TokenError> {
        check(json.as_bytes(), &rules(), NOW)
    }

    #[test]
    fn full_claims_parse() {
        let s = run(&format!(
            r#"{{"sub":"alice","exp":{},"nbf":{NOW},"iat":{NOW},"jti":"j1","aud":["x","y"],
               "iss":"me","extra":{{"a":[1,2]}},
               "topics":{{"sub":["news.*","user.{{sub}}"],"pub":["chat.1"]}}}}"#,
            NOW + 60
        ));
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!(&*s.user, "alice");
        assert_eq!(s.expires, NOW + 60);
        assert!(s.rights.may_subscribe("news.eu"));
        assert!(s.rights.may_subscribe("user.alice"));
        assert!(!s.rights.may_subscribe("user.bob"));
        assert!(s.rights.may_publish("chat.1"));
        assert!(!s.rights.may_publish("news.eu"));
    }

    #[test]
    fn escaped_strings_still_work() {
        // Escapes force an owned Cow; the result must be the same.
        let s = run(&format!(
            r#"{{"sub":"al\u0069ce","exp":{},"topics":{{"sub":["u.\u007bsub}}"]}}}}"#,
            NOW + 60
        ));
        let Ok(s) = s else { panic!("{s:?}") };
        assert_eq!(&*s.user, "alice");
        assert!(s.rights.may_subscribe("u.alice"));
    }

    #[test]
    fn exp_is_required_and_numeric() {
        assert_eq!(run(r#"{"sub":"a"}"#).err(), Some(TokenError::BadClaims));
        assert_eq!(
            run(r#"{"sub":"a","exp":"soon"}"#).err(),
            Some(TokenError::BadClaims)
        );
        assert_eq!(
            run(r#"{"sub":"a","exp":-1}"#).err(),
            Some(TokenError::BadClaims)
        );
        assert_eq!(
            run(r#"{"sub":"a","exp":null}"#).err(),
            Some(TokenError::BadClaims)
        );
    }

    #[test]
    fn leeway_edges() {
        // Accepted while now < exp + leeway (leeway 5).
        let at = |exp: u64| run(&format!(r#"{{"exp":{exp}}}"#)).err();
        assert_eq!(at(NOW - 4), None);
        assert_eq!(at(NOW - 5), Some(TokenError::Expired));
        assert_eq!(at(NOW - 1000), Some(TokenError::Expired));
        // Fractional exp rounds down.
        assert_eq!(
            run(&format!(r#"{{"exp":{}.9}}"#, NOW - 5)).err(),
            Some(TokenError::Expired)
        );

        // nbf: accepted when now + leeway >= nbf.
        let nbf = |nbf: u64| run(&format!(r#"{{"exp":{},"nbf":{nbf}}}"#, NOW + 100)).err();
        assert_eq!(nbf(NOW + 5), None);
        assert_eq!(nbf(NOW + 6), Some(TokenError::NotYetValid));
        assert_eq!(
            run(&format!(r#"{{"exp":{},"nbf":{}.1}}"#, NOW + 100, NOW + 5)).err(),
            Some(TokenError::NotYetValid)
        );

        let strict = ClaimRules {
            leeway: 0,
            ..rules()
        };
        assert_eq!(
            check(format!(r#"{{"exp":{NOW}}}"#).as_bytes(), &strict, NOW).err(),
            Some(TokenError::Expired)
        );
        assert!(check(format!(r#"{{"exp":{}}}"#, NOW + 1).as_bytes(), &strict, NOW).is_ok());
        // exp far away saturates instead of overflowing.
        assert!(run(r#"{"exp":1e300}"#).is_ok());
        assert!(
            check(
                format!(r#"{{"exp":{}}}"#, u64::MAX).as_bytes(),
                &rules(),
                u64::MAX - 1
            )
            .is_ok()
        );
    }

    #[test]
    fn audience_and_issuer() {
        let r = ClaimRules {
            audience: Some("ringcast".into()),
            issuer: Some("idp".into()),
            leeway: 0,
        };
        let c = |json: String| check(json.as_bytes(), &r, NOW).err();
        let exp = NOW + 10;
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":"ringcast","iss":"idp"}}"#)),
            None
        );
        assert_eq!(
            c(format!(
                r#"{{"exp":{exp},"aud":["a","ringcast"],"iss":"idp"}}"#
            )),
            None
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":"other","iss":"idp"}}"#)),
            Some(TokenError::WrongAudience)
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":[],"iss":"idp"}}"#)),
            Some(TokenError::WrongAudience)
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"iss":"idp"}}"#)),
            Some(TokenError::WrongAudience)
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":"ringcast","iss":"evil"}}"#)),
            Some(TokenError::WrongIssuer)
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":"ringcast"}}"#)),
            Some(TokenError::WrongIssuer)
        );
        assert_eq!(
            c(format!(r#"{{"exp":{exp},"aud":5,"iss":"idp"}}"#)),
            Some(TokenError::BadClaims)
        );
        // Not configured: not checked.
        assert!(
            run(&format!(
                r#"{{"exp":{exp},"aud":"whatever","iss":"anyone"}}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn sub_rules() {
        let exp = NOW + 10;
        let s = run(&format!(
            r#"{{"exp":{exp},"topics":{{"sub":["user.{{sub}}*","news"]}}}}"#
        ));
        let Ok(s) = s else { panic!() };
        assert_eq!(&*s.user, "");
        // The {sub} pattern is dropped, not widened to user.*
        assert!(!s.rights.may_subscribe("user.bob"));
        assert!(!s.rights.may_subscribe("user."));
        assert!(s.rights.may_subscribe("news"));
        assert_eq!(
            run(&format!(r#"{{"exp":{exp},"sub":7}}"#)).err(),
            Some(TokenError::BadClaims)
        );
    }

    #[test]
    fn topics_of_the_wrong_shape_refuse_the_token() {
        let exp = NOW + 10;
        for topics in [
            r#""news.*""#,
            r#"["news.*"]"#,
            r#"{"sub":"news.*"}"#,
            r#"{"sub":[1]}"#,
            r#"{"sub":[null]}"#,
            r#"{"sub":[["a"]]}"#,
            r#"{"admin":["*"]}"#,
            r#"{"sub":["a"],"sub":["b"]}"#,
            r#"{"sub":[""]}"#,
            r#"{"sub":["**"]}"#,
            r#"{"pub":["a*b"]}"#,
            r#"{"pub":["a b"]}"#,
            r#"7"#,
        ] {
            let got = run(&format!(r#"{{"exp":{exp},"topics":{topics}}}"#)).err();
            assert_eq!(got, Some(TokenError::BadClaims), "topics {topics}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"t{i}\"")).collect();
        let got = run(&format!(
            r#"{{"exp":{exp},"topics":{{"sub":[{}]}}}}"#,
            many.join(",")
        ))
        .err();
        assert_eq!(got, Some(TokenError::BadClaims));
        // Absent topics or absent lists: no rights.
        let Ok(s) = run(&format!(r#"{{"exp":{exp}}}"#)) else {
            panic!()
        };
        assert_eq!(s.rights, Rights::none());
        let Ok(s) = run(&format!(r#"{{"exp":{exp},"topics":{{}}}}"#)) else {
            panic!()
        };
        assert_eq!(s.rights, Rights::none());
    }

    #[test]
    fn bad_json_is_malformed_and_wrong_type_is_bad_claims() {
        assert_eq!(run(r#"{"exp":"#).err(), Some(TokenError::Malformed));
        assert_eq!(run("not json").err(), Some(TokenError::Malformed));
        assert_eq!(run("").err(), Some(TokenError::Malformed));
        assert_eq!(run("[1,2]").err(), Some(TokenError::BadClaims));
        assert_eq!(run(r#""str""#).err(), Some(TokenError::BadClaims));
    }
}
