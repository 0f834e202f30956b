//! Fuzz target: see `ringcast_proto::fuzzing::server_connection` (the body, also run by the unit tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_proto::fuzzing::server_connection(data));
