//! Fuzz target: see `ringcast::auth::fuzzing::token` (the body, also run by the unit tests):
//! the bytes as a token for an HMAC verifier, as the claims of a correctly signed token,
//! and as a topic pattern.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::auth::fuzzing::token(data));
