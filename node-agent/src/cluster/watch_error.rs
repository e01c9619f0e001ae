//! What a `kube::runtime::watcher` error means for the watchers here.

use kube::runtime::watcher;

/// How a watcher should react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFailure {
    /// The version we resume from is gone (410) and kube's watcher relists by itself.
    Expired,
    /// 410 as the HTTP status of the watch request: kube's watcher would retry the same
    /// expired version forever (it only relists on a 410 *event*, which is what
    /// kube-apiserver sends). Start a new watcher stream, which relists.
    ExpiredAtStart,
    /// Anything else: retry with backoff.
    Other,
}

pub(crate) fn classify(e: &watcher::Error) -> WatchFailure {
    match e {
        watcher::Error::WatchError(s) if s.code == 410 => WatchFailure::Expired,
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410 => {
            WatchFailure::ExpiredAtStart
        }
        _ => WatchFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status::failure("too old resource version", "Expired").with_code(code))
    }

    #[test]
    fn classifies_the_three_cases() {
        assert_eq!(
            classify(&watcher::Error::WatchError(status(410))),
            WatchFailure::Expired
        );
        assert_eq!(
            classify(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
                410
            )))),
            WatchFailure::ExpiredAtStart
        );
        assert_eq!(
            classify(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
                500
            )))),
            WatchFailure::Other
        );
        assert_eq!(
            classify(&watcher::Error::WatchError(status(500))),
            WatchFailure::Other
        );
        assert_eq!(
            classify(&watcher::Error::NoResourceVersion),
            WatchFailure::Other
        );
    }
}
