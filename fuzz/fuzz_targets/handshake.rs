//! Fuzz target: see `ringcast::proto::fuzzing::handshake` (the body, also run by the unit tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast::proto::fuzzing::handshake(data));
