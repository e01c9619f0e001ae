//! Waiting for a condition in tests that drive real processes: no fixed sleeps.

use std::time::{Duration, Instant};

/// Polls `f` every `every` until it is true or `timeout` has passed; returns whether it became
/// true. `f` runs at least once, and once more after the deadline.
pub fn poll_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`] every 50 ms.
pub fn eventually(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_until(timeout, Duration::from_millis(50), f)
}
