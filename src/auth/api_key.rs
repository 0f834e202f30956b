//! API keys (for the HTTP publish routes): compared in constant time against every
//! configured key.
//!
//! Both sides are hashed with SHA-256 first and the 32-byte digests compared with
//! `subtle`, so neither where the keys differ nor how long they are shows in the timing;
//! every configured key is compared (no early exit on a match), so neither does which
//! key matched. The configured keys are kept only as digests.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::SetupError;

/// The configured API keys, as SHA-256 digests.
#[derive(Clone, Default)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .finish()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl ApiKeys {
    /// An empty key is refused: it would match a request that presents no key.
    pub(crate) fn new(keys: &[Vec<u8>]) -> Result<ApiKeys, SetupError> {
        if keys.iter().any(Vec::is_empty) {
            return Err(SetupError::BadSetting {
                setting: "api_keys",
                reason: "an API key is empty".into(),
            });
        }
        Ok(ApiKeys {
            digests: keys.iter().map(|k| digest(k)).collect(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` equals one of the configured keys. An empty `presented` never
    /// matches (no configured key is empty).
    pub(crate) fn check(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        let mut any = Choice::from(0u8);
        for k in &self.digests {
            any |= k.ct_eq(&d);
        }
        bool::from(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_matches_and_every_near_miss_fails() {
        let key = b"k3y-0123456789abcdef".to_vec();
        let Ok(keys) = ApiKeys::new(&[b"other-key".to_vec(), key.clone()]) else {
            panic!()
        };
        assert!(keys.check(&key));
        assert!(keys.check(b"other-key"));
        for i in 0..key.len() {
            let mut off = key.clone();
            off[i] ^= 1;
            assert!(!keys.check(&off), "one byte off at {i}");
        }
        assert!(!keys.check(&key[..key.len() - 1]), "shorter");
        let mut longer = key.clone();
        longer.push(b'x');
        assert!(!keys.check(&longer), "longer");
        assert!(!keys.check(b""), "empty");
    }

    #[test]
    fn no_keys_match_nothing_and_empty_keys_are_refused() {
        let Ok(none) = ApiKeys::new(&[]) else {
            panic!()
        };
        assert!(none.is_empty());
        assert!(!none.check(b""));
        assert!(!none.check(b"anything"));
        assert!(ApiKeys::new(&[b"ok".to_vec(), Vec::new()]).is_err());
    }
}
