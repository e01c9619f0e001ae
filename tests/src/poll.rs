//! Waiting for a condition in tests that drive real processes: no fixed sleeps (the kit's).

pub use trellis_testkit::poll::{eventually, poll_until};
