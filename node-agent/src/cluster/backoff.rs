//! Exponential backoff with jitter for API retries.
//!
//! kube's own `ExponentialBackoff` cannot be built without depending on `backon`, and its
//! `StreamBackoff` resets on any `Ok` item, which the watcher yields (`Init`) before every
//! list attempt: a failing list would then be retried at the minimum delay forever. The
//! watchers here reset only on real data.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How long to wait between failed API calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    /// Upper bound: with thousands of agents retrying, this is what a recovering apiserver sees.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            policy,
            next: policy.initial,
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.policy.initial;
        self.failures = 0;
    }

    /// The delay before the next attempt: the current step plus up to half of it at random,
    /// so agents that lost the API together do not come back in lockstep.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.policy.max);
        self.next = (base * 2).min(self.policy.max);
        self.failures = self.failures.saturating_add(1);
        let half_ms = (base.as_millis() / 2) as u64;
        let jitter = if half_ms == 0 {
            0
        } else {
            random_u64() % (half_ms + 1)
        };
        (base + Duration::from_millis(jitter)).min(self.policy.max.max(self.policy.initial))
    }
}

/// A random number without a dependency: std seeds each `RandomState` from the OS.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_bounded_jitter_and_resets() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let mut b = Backoff::new(policy);
        let mut bases = Vec::new();
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= policy.max, "{d:?}");
            bases.push(d);
        }
        // 100, 200, 400, 800, then capped: the lower bound of each step doubles.
        assert!(bases[1] >= Duration::from_millis(200));
        assert!(bases[3] >= Duration::from_millis(800));
        assert_eq!(bases[7], policy.max);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert_eq!(b.failures(), 0);
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(150));
    }

    #[test]
    fn jitter_varies() {
        let mut b = Backoff::new(BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        });
        let seen: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                b.reset();
                b.next_delay()
            })
            .collect();
        assert!(seen.len() > 1, "jitter never varied: {seen:?}");
    }
}
