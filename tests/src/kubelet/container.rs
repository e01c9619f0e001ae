//! One container of a running pod as the driver tracks it: the current
//! instance, its last termination, the restart count and crash-loop backoff,
//! and its probe counters. The decisions (restart or not, next backoff) are
//! pure functions, unit-tested here.

use std::time::{Duration, Instant};

use super::translate::RestartPolicy;

/// A state as the Pod API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: i64,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: i64,
        finished_at: i64,
    },
}

impl Observed {
    pub fn waiting(reason: &str, message: impl Into<String>) -> Self {
        Self::Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// kubelet's crash-loop backoff: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// kubelet's values (10 s doubling to 5 min).
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before restart number `restarts + 1`.
    pub fn delay(&self, restarts: u32) -> Duration {
        let factor = 1u32.checked_shl(restarts.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// An instance that ran this long resets the crash-loop backoff (kubelet's
/// value).
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How long a terminated instance ran (CRI times are Unix nanoseconds).
fn ran_for(state: &Observed) -> Duration {
    match state {
        Observed::Terminated {
            started_at,
            finished_at,
            ..
        } if finished_at > started_at => {
            Duration::from_nanos(u64::try_from(finished_at - started_at).unwrap_or(0))
        }
        _ => Duration::ZERO,
    }
}

/// Whether an exited container is started again. Init containers must
/// succeed: they are retried on failure unless the policy is Never.
pub fn should_restart(policy: RestartPolicy, exit_code: i32, init: bool) -> bool {
    match policy {
        RestartPolicy::Always if !init => true,
        RestartPolicy::Always | RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProbeCounters {
    pub liveness_failures: u32,
    pub readiness_successes: u32,
    pub readiness_failures: u32,
    pub next_liveness: Option<Instant>,
    pub next_readiness: Option<Instant>,
}

impl ProbeCounters {
    /// Counts a liveness result (`failure`: why it failed); true when the
    /// container must be killed.
    pub fn liveness(&mut self, failure: Option<&String>, failure_threshold: u32) -> bool {
        match failure {
            None => {
                self.liveness_failures = 0;
                false
            }
            Some(_) => {
                self.liveness_failures += 1;
                self.liveness_failures >= failure_threshold
            }
        }
    }

    /// Counts a readiness result; returns the new readiness (it changes
    /// only once a threshold of consecutive results is reached).
    pub fn readiness(
        &mut self,
        ok: bool,
        ready: bool,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> bool {
        if ok {
            self.readiness_failures = 0;
            self.readiness_successes += 1;
            ready || self.readiness_successes >= success_threshold
        } else {
            self.readiness_successes = 0;
            self.readiness_failures += 1;
            ready && self.readiness_failures < failure_threshold
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// The current instance, if one exists in the runtime.
    pub id: Option<String>,
    /// Instances created so far (the next one's CRI attempt number).
    pub attempts: u32,
    pub state: Observed,
    pub last_state: Option<Observed>,
    pub image_ref: String,
    pub ready: bool,
    /// No new instance before this (crash-loop backoff).
    pub retry_at: Option<Instant>,
    /// Set once the container exited for good (no restart coming).
    pub finished: bool,
    /// Restarts since the backoff was last reset (the delay's exponent).
    pub backoff_level: u32,
    pub probes: ProbeCounters,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            id: None,
            attempts: 0,
            state: Observed::waiting("ContainerCreating", ""),
            last_state: None,
            image_ref: String::new(),
            ready: false,
            retry_at: None,
            finished: false,
            backoff_level: 0,
            probes: ProbeCounters::default(),
        }
    }

    /// kubelet counts restarts, not instances.
    pub fn restart_count(&self) -> i32 {
        i32::try_from(self.attempts.saturating_sub(1)).unwrap_or(i32::MAX)
    }

    /// The instance exited: keep its state as the last one and schedule the
    /// next instance after the backoff (or mark it finished).
    pub fn exited(&mut self, terminated: Observed, restart: bool, backoff: &Backoff, now: Instant) {
        self.id = None;
        self.ready = false;
        self.probes = ProbeCounters::default();
        if restart {
            // kubelet forgets the backoff once an instance ran long enough.
            if ran_for(&terminated) >= BACKOFF_RESET {
                self.backoff_level = 0;
            }
            let delay = backoff.delay(self.backoff_level);
            self.backoff_level += 1;
            self.retry_at = Some(now + delay);
            let message = format!(
                "back-off {delay:?} restarting failed container {}",
                self.name
            );
            self.state = Observed::waiting("CrashLoopBackOff", message);
            self.last_state = Some(terminated);
        } else {
            self.finished = true;
            self.state = terminated;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let delays: Vec<_> = (0..5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(Backoff::default().delay(1000), Duration::from_secs(300));
    }

    #[test]
    fn backoff_grows_per_crash_and_resets_after_a_long_run() {
        let b = Backoff::default();
        let crash = |ran: Duration| Observed::Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: String::new(),
            started_at: 1,
            finished_at: 1 + i64::try_from(ran.as_nanos()).expect("fits"),
        };
        let mut rec = ContainerRecord::new("c", "img");
        let now = Instant::now();
        rec.exited(crash(Duration::from_secs(1)), true, &b, now);
        rec.exited(crash(Duration::from_secs(1)), true, &b, now);
        assert_eq!(rec.retry_at, Some(now + Duration::from_secs(20)));
        rec.exited(crash(BACKOFF_RESET), true, &b, now);
        assert_eq!(
            rec.retry_at,
            Some(now + Duration::from_secs(10)),
            "reset after 10 min of running"
        );
    }

    #[test]
    fn restart_policy_table() {
        use RestartPolicy::*;
        assert!(should_restart(Always, 0, false));
        assert!(
            !should_restart(Always, 0, true),
            "a succeeded init container is done"
        );
        assert!(should_restart(Always, 1, true));
        assert!(should_restart(OnFailure, 2, false) && !should_restart(OnFailure, 0, false));
        assert!(!should_restart(Never, 1, false) && !should_restart(Never, 1, true));
    }

    #[test]
    fn probe_thresholds_count_consecutive_results() {
        let mut p = ProbeCounters::default();
        let fail = "refused".to_string();
        assert!(!p.liveness(Some(&fail), 3) && !p.liveness(Some(&fail), 3));
        assert!(!p.liveness(None, 3), "a success resets the count");
        assert!(!p.liveness(Some(&fail), 2) && p.liveness(Some(&fail), 2));
        let mut r = ProbeCounters::default();
        assert!(!r.readiness(true, false, 2, 3), "one success of two");
        assert!(r.readiness(true, false, 2, 3));
        assert!(r.readiness(false, true, 2, 3) && r.readiness(false, true, 2, 3));
        assert!(!r.readiness(false, true, 2, 3), "third failure");
    }

    #[test]
    fn an_exit_becomes_last_state_with_a_crash_loop_wait() {
        let mut rec = ContainerRecord::new("c", "img");
        rec.attempts = 1;
        rec.id = Some("id".into());
        let term = Observed::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            message: String::new(),
            started_at: 1,
            finished_at: 2,
        };
        let now = Instant::now();
        rec.exited(term.clone(), true, &Backoff::default(), now);
        assert_eq!(rec.last_state, Some(term));
        assert!(
            matches!(&rec.state, Observed::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
        assert_eq!(rec.retry_at, Some(now + Duration::from_secs(10)));
        assert_eq!(
            (rec.id.as_deref(), rec.finished, rec.restart_count()),
            (None, false, 0)
        );
    }
}
