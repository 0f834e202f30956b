//! Fuzz target: see `ringcast_proto::fuzzing::frame_header` (the body, also run by the unit tests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcast_proto::fuzzing::frame_header(data));
