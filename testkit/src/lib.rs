//! Test helpers shared by the plugin's, the agent's and the end-to-end tests (dev-only: no
//! production crate depends on this one, and it depends on none of them).
//!
//! - [`netns::Netns`]: a throwaway network namespace, deleted on drop.
//! - [`require_root`] / [`skip_unless_root`] / [`is_root`]: privileged tests.
//! - [`cmd`]: running a command and failing with its output.
//! - [`failure`]: [`failure::Failure`], [`ensure!`] and [`failure::TestResult`] for tests
//!   returning `Result`.
//! - [`poll`]: [`poll::eventually`], waiting for a condition without fixed sleeps.
//! - [`ping::PingLoop`]: a 20 ms `ping -D` with receive timestamps; [`ping::summary`].
//! - [`metrics`]: the Prometheus text format the agent serves; [`agent::Samplers`] read an
//!   agent's `/readyz` and `/metrics` throughout a scenario.
//! - [`ipam`]: the host-local IPAM store the plugin writes.
//! - [`kernel`]: reading back the kernel entries trellis owns; [`lines::Recorder`] records
//!   what `ip monitor` and the like print while a scenario runs.

pub mod agent;
pub mod cmd;
pub mod failure;
pub mod ipam;
pub mod kernel;
pub mod lines;
pub mod metrics;
pub mod netns;
pub mod ping;
pub mod poll;

pub use cmd::{output, run};
pub use netns::Netns;
pub use poll::{eventually, poll_until};

/// Whether the test runs with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a privileged test can run here: without root it says loudly that it skips
/// (`message` names what it needs) and returns false.
pub fn skip_unless_root(message: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("\n!!!!!!!! SKIPPED: {message} !!!!!!!!\n");
    false
}

/// Fails the test unless it runs as root: privileged tests do not skip silently.
pub fn require_root() {
    assert!(
        is_root(),
        "privileged test: run as root (hack/test.sh does)"
    );
}
