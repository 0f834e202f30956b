//! Hostile-client regression tests (the limits are listed in docs/DESIGN.md, "Bounds against a
//! hostile client"): see each test's doc.

#[allow(unused_imports)]
use crate::both;
#[allow(unused_imports)]
use crate::util::*;
