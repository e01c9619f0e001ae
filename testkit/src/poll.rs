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

/// For each item of `ring` and the next one around it (the last one's next is the first),
/// `reaches(a, b)` becomes true within `timeout`; otherwise panics with "A cannot reach B"
/// (by `name`) and `context`.
pub fn assert_ring_reaches<T>(
    ring: &[T],
    timeout: Duration,
    reaches: impl Fn(&T, &T) -> bool,
    name: impl Fn(&T) -> &str,
    context: &str,
) {
    for (i, a) in ring.iter().enumerate() {
        let b = &ring[(i + 1) % ring.len()];
        assert!(
            eventually(timeout, || reaches(a, b)),
            "{} cannot reach {}{context}",
            name(a),
            name(b)
        );
    }
}
