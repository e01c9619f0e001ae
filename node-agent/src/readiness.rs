//! What `/readyz` means, and the per-peer failures that do not change it.
//!
//! Ready means: this node's own devices, addresses, subnet.env and firewall are programmed
//! (in the last pass), its annotations were advertised, and the Node watch is live. A peer
//! entry the kernel refuses (a route via an address the kernel will not use, say) is that
//! peer's problem: it is counted, logged when it starts, changes or ends, retried with
//! backoff, and shown by `trellis-agent status`, but one bad Node must not keep every
//! restarting agent of the cluster not ready.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::dataplane::netlink::OpError;

/// Now, in ms since the Unix epoch, as the watch stats and the heartbeat keep time; never 0,
/// which those use for "none".
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| (d.as_millis() as u64).max(1))
}

/// How long the Node watch may fail before the node reports not ready: long enough to ride
/// out an apiserver restart, short enough that a node cut off from the API says so.
pub const WATCH_DOWN_LIMIT: Duration = Duration::from_secs(60);

/// Errors older than this mean the watch's retries stopped failing. A failing watch reports
/// at least every 40 s or so: the watcher backs off 10 s at most, and a connection attempt to
/// an unreachable server gives up after 30 s. (A request accepted and never answered reports
/// nothing: the watcher restarts it after its timeout, but readiness does not see it.)
const WATCH_ERRORS_STALE: Duration = Duration::from_secs(90);

/// How long the Node watch has been failing at `now`, if it is failing: from its first error
/// since data last arrived, while errors keep coming (all times in ms since the Unix epoch,
/// 0 meaning none).
pub fn watch_down_for(outage_since_ms: u64, last_error_ms: u64, now_ms: u64) -> Option<Duration> {
    if outage_since_ms == 0 || last_error_ms == 0 {
        return None;
    }
    let since_error = Duration::from_millis(now_ms.saturating_sub(last_error_ms));
    if since_error > WATCH_ERRORS_STALE {
        return None;
    }
    Some(Duration::from_millis(
        now_ms.saturating_sub(outage_since_ms),
    ))
}

/// A stable label for a peer entry's failure (`reason="..."` of `trellis_peer_errors_total`).
pub fn errno_label(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EINVAL) => "einval",
        Some(libc::ENETUNREACH) => "enetunreach",
        Some(libc::EHOSTUNREACH) => "ehostunreach",
        Some(libc::EEXIST) => "eexist",
        Some(libc::ENODEV) => "enodev",
        Some(libc::ENOENT) => "enoent",
        Some(libc::EPERM) => "eperm",
        Some(libc::ENOBUFS) => "enobufs",
        Some(_) => "other_errno",
        None => "not_kernel",
    }
}

/// Peer entries that failed in the last pass, to log each once when it starts, changes or
/// ends (a refused entry is retried every few seconds; saying so each time would bury the
/// log).
#[derive(Debug, Default)]
pub struct PeerFailures {
    last: BTreeMap<String, String>,
}

impl PeerFailures {
    /// Remembers this pass's failures; returns those that are new or failed differently,
    /// and the entries that failed before and no longer do.
    pub fn update<'a>(
        &mut self,
        now: impl Iterator<Item = &'a OpError>,
    ) -> (Vec<&'a OpError>, Vec<String>) {
        let mut next = BTreeMap::new();
        let mut fresh = Vec::new();
        for e in now {
            let entry = e.op.to_string();
            if self.last.get(&entry) != Some(&e.message) {
                fresh.push(e);
            }
            next.insert(entry, e.message.clone());
        }
        let cleared = self
            .last
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        self.last = next;
        (fresh, cleared)
    }

    /// The entries failing now, each with why, for `status`.
    pub fn current(&self) -> impl Iterator<Item = (&String, &String)> {
        self.last.iter()
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::desired::Route;
    use crate::dataplane::diff::Op;

    fn failed(dst: &str, message: &str) -> OpError {
        OpError {
            op: Op::AddRoute(Route {
                dst: dst.parse().expect("cidr"),
                gateway: Some("172.31.250.255".parse().expect("ip")),
                dev: "eth0".into(),
                onlink: false,
            }),
            errno: Some(22),
            message: message.into(),
        }
    }

    #[test]
    fn a_failure_is_news_when_it_starts_changes_or_ends() {
        let mut log = PeerFailures::default();
        let a = [failed("10.244.9.0/24", "Invalid argument")];
        let (fresh, cleared) = log.update(a.iter());
        assert_eq!(fresh.len(), 1);
        assert!(cleared.is_empty());
        let (fresh, cleared) = log.update(a.iter());
        assert!(fresh.is_empty() && cleared.is_empty(), "same failure again");
        let b = [failed("10.244.9.0/24", "Network is unreachable")];
        let (fresh, _) = log.update(b.iter());
        assert_eq!(fresh.len(), 1, "a new reason is news");
        assert_eq!(log.len(), 1);
        let (fresh, cleared) = log.update([].iter());
        assert!(fresh.is_empty());
        assert_eq!(cleared.len(), 1);
        assert!(log.is_empty());
    }

    #[test]
    fn the_watch_is_down_only_while_its_errors_keep_coming() {
        let s = 1_000_000;
        assert_eq!(watch_down_for(0, 0, s), None, "never failed");
        assert_eq!(
            watch_down_for(s, s + 55_000, s + 61_000),
            Some(Duration::from_secs(61))
        );
        assert_eq!(
            watch_down_for(s, s + 5_000, s + 100_000),
            None,
            "no error for 95 s: a retry got through"
        );
        assert!(
            watch_down_for(s, s + 5_000, s + 61_000).is_some(),
            "errors 40 s apart (connect timeouts) still mean down"
        );
        // A clock step backwards does not underflow.
        assert_eq!(watch_down_for(s, s, s - 5), Some(Duration::ZERO));
    }

    #[test]
    fn errno_labels_are_stable() {
        assert_eq!(errno_label(Some(22)), "einval");
        assert_eq!(errno_label(Some(101)), "enetunreach");
        assert_eq!(errno_label(Some(9999)), "other_errno");
        assert_eq!(errno_label(None), "not_kernel");
    }
}
