//! Network namespaces owned by a test: the kit's guard, with the harness's short names.

use std::sync::atomic::{AtomicUsize, Ordering};

pub use trellis_testkit::netns::Netns;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Creates `<tag>-<pid mod 100000>-<n>` with its loopback up, removed on drop.
pub fn create(tag: &str) -> Result<Netns, String> {
    Netns::with_name(format!(
        "{tag}-{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Run `f` on a thread that has entered `ns` (network namespaces are per
/// thread), e.g. to connect to an address only reachable there.
pub fn in_netns<R: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    ns.enter(f)
}
