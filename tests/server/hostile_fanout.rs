//! Hostile-client regression tests (issue 15): see each test's doc.

#[allow(unused_imports)]
use crate::both;
#[allow(unused_imports)]
use crate::util::*;
