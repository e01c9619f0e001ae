//! The one-shot subcommands (`status`, `preflight`, `uninstall-cni --kernel-state`) are
//! synchronous programs with one async step (a netlink read, the firewall tools); they run that
//! step on a current-thread runtime made for it.

use std::future::Future;

/// Runs `work` to completion; the error is the runtime's own (it could not be started).
pub fn block_on<F: Future>(work: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(work))
}
