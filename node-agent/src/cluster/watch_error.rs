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

/// Whether the watch request itself was refused as a bad request (400 or 422): what an
/// apiserver with the WatchList feature gate off (Kubernetes 1.33's default) answers a streaming
/// list (`sendInitialEvents`). For a watcher that streams its lists this means "page instead";
/// for any other it is an ordinary failure.
pub(crate) fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if matches!(s.code, 400 | 422))
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

    #[test]
    fn a_bad_request_at_start_refuses_streaming() {
        let start = |code| watcher::Error::WatchStartFailed(kube::Error::Api(status(code)));
        assert!(refuses_streaming(&start(422)));
        assert!(refuses_streaming(&start(400)));
        assert!(!refuses_streaming(&start(500)));
        assert!(!refuses_streaming(&start(410)));
        // A 422 event inside a running watch is no refusal of the request.
        assert!(!refuses_streaming(&watcher::Error::WatchError(status(422))));
    }
}
