//! Watches the net-conf.json ConfigMap and publishes each new valid config.
//!
//! An invalid config is logged, counted, reported as a Warning Event on our Node and not
//! published: the agent keeps running the last good one (a typo in the ConfigMap must not take
//! the pod network down). A deleted ConfigMap also keeps the running config. Consumers see the
//! latest good config on a `tokio::sync::watch` channel; a config equal to the running one
//! (a label or annotation edit on the ConfigMap) is not published again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use super::backoff::{Backoff, BackoffPolicy};
use super::events::NodeEvents;
use super::watch_error::{classify, WatchFailure};
use crate::config::{ConfigError, NetConfig, ParsedConfig};

/// The ConfigMap key flannel reads.
pub const NET_CONF_KEY: &str = "net-conf.json";

/// Which ConfigMap and key hold net-conf.json (flannel's is `kube-flannel/kube-flannel-cfg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl ConfigSource {
    pub fn new(namespace: &str, name: &str) -> Self {
        ConfigSource {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: NET_CONF_KEY.to_string(),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConfigMap {}/{} key {}",
            self.namespace, self.name, self.key
        )
    }
}

/// Why a ConfigMap's content was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigRejection {
    #[error("no key {key:?} in data (keys present: {present:?})")]
    MissingKey { key: String, present: Vec<String> },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// Valid, but this node cannot run it (a backend its kernel lacks).
    #[error("net-conf.json: {0}")]
    Unsupported(String),
}

/// What one version of the ConfigMap means for the running config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid config different from the running one: publish it.
    New(ParsedConfig),
    /// Same config as running (or same content re-delivered): nothing to do.
    Unchanged,
    /// Invalid, seen for the first time: report it.
    Rejected(ConfigRejection),
    /// The same invalid content again (e.g. re-listed after a reconnect): already reported.
    StillRejected,
}

/// Whether this node can run a valid config: `Err(why)` when not (see [`host_support`]).
pub type HostCheck = fn(&NetConfig) -> Result<(), String>;

/// Decides, per ConfigMap version, whether to publish, report or ignore. Pure, but for the
/// host check it is given.
#[derive(Debug)]
pub struct ConfigTracker {
    current: Option<NetConfig>,
    /// The content last rejected (`None` inside for a missing key), to report it once.
    rejected: Option<Option<String>>,
    host: HostCheck,
}

impl Default for ConfigTracker {
    /// Every valid config is accepted.
    fn default() -> Self {
        ConfigTracker::with_host_check(|_| Ok(()))
    }
}

/// The kernel features a config needs, asked of the kernel: WireGuard's generic netlink
/// family for the wireguard backend (the lookup loads the module where it exists). A switch
/// to a backend the node cannot run is refused like an invalid ConfigMap: the running
/// backend stays, and the refusal is logged and reported as a Warning Event.
pub fn host_support(config: &NetConfig) -> Result<(), String> {
    if config.backend.kind() != crate::config::BackendType::Wireguard {
        return Ok(());
    }
    match crate::dataplane::netlink::wireguard::WgSocket::open() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "the wireguard backend cannot run on this node: {e}"
        )),
    }
}

impl ConfigTracker {
    pub fn with_host_check(host: HostCheck) -> Self {
        ConfigTracker {
            current: None,
            rejected: None,
            host,
        }
    }

    pub fn current(&self) -> Option<&NetConfig> {
        self.current.as_ref()
    }

    pub fn apply(&mut self, data: Option<&BTreeMap<String, String>>, key: &str) -> Verdict {
        let text = data.and_then(|d| d.get(key));
        let parsed = match text {
            None => Err(ConfigRejection::MissingKey {
                key: key.to_string(),
                present: data
                    .map(|d| d.keys().take(10).cloned().collect())
                    .unwrap_or_default(),
            }),
            Some(t) => NetConfig::parse(t)
                .map_err(ConfigRejection::from)
                .and_then(|p| match (self.host)(&p.config) {
                    Ok(()) => Ok(p),
                    Err(why) => Err(ConfigRejection::Unsupported(why)),
                }),
        };
        match parsed {
            Ok(p) => {
                self.rejected = None;
                if self.current.as_ref() == Some(&p.config) {
                    return Verdict::Unchanged;
                }
                self.current = Some(p.config.clone());
                Verdict::New(p)
            }
            Err(why) => {
                let content = text.cloned();
                if self.rejected.as_ref() == Some(&content) {
                    return Verdict::StillRejected;
                }
                self.rejected = Some(content);
                Verdict::Rejected(why)
            }
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ConfigStats {
    /// Configs published (the first one included).
    pub applied: AtomicU64,
    /// Distinct invalid contents rejected.
    pub rejected: AtomicU64,
    /// Failed list/watch calls and watch stream errors (retried with backoff).
    pub errors: AtomicU64,
    /// ConfigMap events seen (listed, changed or deleted), and complete lists.
    pub events: AtomicU64,
    pub lists: AtomicU64,
}

pub struct ConfigWatcher {
    api: Api<ConfigMap>,
    source: ConfigSource,
    events: Option<NodeEvents>,
    backoff: BackoffPolicy,
    tx: watch::Sender<Option<Arc<NetConfig>>>,
    stats: Arc<ConfigStats>,
}

impl ConfigWatcher {
    /// `events`: where to report rejected configs (our Node), if anywhere.
    pub fn new(client: Client, source: ConfigSource, events: Option<NodeEvents>) -> Self {
        ConfigWatcher {
            api: Api::namespaced(client, &source.namespace),
            source,
            events,
            backoff: BackoffPolicy::default(),
            tx: watch::Sender::new(None),
            stats: Arc::default(),
        }
    }

    pub fn with_backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    /// The latest good config; `None` until the first valid one is seen. Wait for the first
    /// with `rx.wait_for(Option::is_some)`.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<NetConfig>>> {
        self.tx.subscribe()
    }

    pub fn stats(&self) -> Arc<ConfigStats> {
        self.stats.clone()
    }

    /// Runs until the task is dropped or aborted.
    pub async fn run(self) {
        // Both the list and the watch carry the name as a field selector: besides fetching
        // one object, it is what lets an RBAC rule with `resourceNames` match a list or watch,
        // so the agent needs no grant on the namespace's other ConfigMaps.
        let fields = format!("metadata.name={}", self.source.name);
        let config = watcher::Config::default().fields(&fields);
        let mut tracker = ConfigTracker::with_host_check(host_support);
        let mut backoff = Backoff::new(self.backoff);
        let mut listed_it = false;
        let mut outage_start: Option<Instant> = None;
        loop {
            let stream = watcher::watcher(self.api.clone(), config.clone());
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(e) => e,
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        let failure = classify(&e);
                        match failure {
                            WatchFailure::Expired | WatchFailure::ExpiredAtStart => {
                                tracing::info!(source = %self.source, "ConfigMap watch expired (410 Gone); relisting")
                            }
                            WatchFailure::Other if backoff.failures() == 0 && forbidden(&e) => {
                                tracing::warn!(
                                    source = %self.source, error = %e,
                                    "ConfigMap watch refused (403): the agent may read only the ConfigMap \
                                     named in the resourceNames of the trellis-config-reader Role \
                                     (deploy/manifests/rbac.yaml); rename it there when --configmap-name \
                                     differs. Retrying, the running config stays"
                                )
                            }
                            WatchFailure::Other if backoff.failures() == 0 => tracing::warn!(
                                source = %self.source, error = %e,
                                "ConfigMap watch failed; retrying, the running config stays"
                            ),
                            WatchFailure::Other => tracing::debug!(
                                source = %self.source, error = %e, "ConfigMap watch still failing"
                            ),
                        }
                        outage_start.get_or_insert_with(Instant::now);
                        tokio::time::sleep(backoff.next_delay()).await;
                        if failure == WatchFailure::ExpiredAtStart {
                            break;
                        }
                        continue;
                    }
                };
                if !matches!(event, Event::Init) {
                    if let Some(since) = outage_start.take() {
                        tracing::info!(
                            source = %self.source,
                            after_ms = since.elapsed().as_millis() as u64,
                            "ConfigMap watch recovered"
                        );
                    }
                    backoff.reset();
                }
                if matches!(event, Event::InitDone) {
                    self.stats.lists.fetch_add(1, Ordering::Relaxed);
                }
                match event {
                    Event::Init => listed_it = false,
                    Event::InitApply(cm) | Event::Apply(cm) => {
                        listed_it = true;
                        self.consider(&mut tracker, &cm).await;
                        self.stats.events.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::InitDone if !listed_it => tracing::warn!(
                        source = %self.source,
                        running = tracker.current().is_some(),
                        "ConfigMap not found; keeping the running config (if any) until it exists"
                    ),
                    Event::InitDone => {}
                    Event::Delete(_) => {
                        tracing::warn!(
                            source = %self.source,
                            "ConfigMap deleted; keeping the running config"
                        );
                        self.stats.events.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn consider(&self, tracker: &mut ConfigTracker, cm: &ConfigMap) {
        let version = cm.metadata.resource_version.as_deref().unwrap_or("?");
        match tracker.apply(cm.data.as_ref(), &self.source.key) {
            Verdict::New(parsed) => {
                for w in &parsed.warnings {
                    tracing::warn!(source = %self.source, "{w}");
                }
                tracing::info!(
                    source = %self.source,
                    version,
                    backend = %parsed.config.backend.kind(),
                    "net-conf.json loaded"
                );
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                self.tx.send_replace(Some(Arc::new(parsed.config)));
            }
            Verdict::Rejected(why) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    source = %self.source,
                    version,
                    running = tracker.current().is_some(),
                    "net-conf.json rejected, keeping the running config: {why}"
                );
                if let Some(events) = &self.events {
                    let what = self.source.to_string();
                    match &why {
                        ConfigRejection::Unsupported(_) => {
                            events.backend_unsupported(&what, &why.to_string()).await
                        }
                        _ => events.invalid_config(&what, &why.to_string()).await,
                    };
                }
            }
            Verdict::Unchanged | Verdict::StillRejected => {}
        }
    }
}

/// Whether the API refused the list or the watch itself (403), as opposed to failing.
fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_is_told_from_other_failures() {
        let status =
            |code| Box::new(kube::core::Status::failure("no", "Forbidden").with_code(code));
        let api = |code| kube::Error::Api(status(code));
        assert!(forbidden(&watcher::Error::InitialListFailed(api(403))));
        assert!(forbidden(&watcher::Error::WatchStartFailed(api(403))));
        assert!(forbidden(&watcher::Error::WatchError(status(403))));
        assert!(!forbidden(&watcher::Error::InitialListFailed(api(500))));
        assert!(!forbidden(&watcher::Error::NoResourceVersion));
    }

    fn data(text: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(NET_CONF_KEY.to_string(), text.to_string())])
    }

    const VXLAN: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
    const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

    #[test]
    fn publishes_new_configs_once() {
        let mut t = ConfigTracker::default();
        assert!(matches!(
            t.apply(Some(&data(VXLAN)), NET_CONF_KEY),
            Verdict::New(_)
        ));
        // Same meaning, different text: not a change.
        let reformatted = VXLAN.replace(' ', "");
        assert_eq!(
            t.apply(Some(&data(&reformatted)), NET_CONF_KEY),
            Verdict::Unchanged
        );
        let Verdict::New(p) = t.apply(Some(&data(HOST_GW)), NET_CONF_KEY) else {
            panic!("host-gw should be new");
        };
        assert_eq!(p.config.backend.kind().as_str(), "host-gw");
        assert_eq!(t.current(), Some(&p.config));
    }

    #[test]
    fn a_backend_the_host_cannot_run_is_refused_and_the_running_one_kept() {
        let mut t = ConfigTracker::with_host_check(|c| match c.backend.kind() {
            crate::config::BackendType::Wireguard => Err("no WireGuard here".into()),
            _ => Ok(()),
        });
        t.apply(Some(&data(VXLAN)), NET_CONF_KEY);
        let running = t.current().cloned();
        let wg = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard"}}"#;
        let Verdict::Rejected(why) = t.apply(Some(&data(wg)), NET_CONF_KEY) else {
            panic!("should be rejected");
        };
        assert_eq!(why.to_string(), "net-conf.json: no WireGuard here");
        assert_eq!(t.current().cloned(), running);
        assert!(matches!(
            t.apply(Some(&data(HOST_GW)), NET_CONF_KEY),
            Verdict::New(_)
        ));
    }

    #[test]
    fn invalid_configs_are_reported_once_and_keep_the_running_one() {
        let mut t = ConfigTracker::default();
        t.apply(Some(&data(VXLAN)), NET_CONF_KEY);
        let running = t.current().cloned();
        let bad = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipsec"}}"#;
        let Verdict::Rejected(why) = t.apply(Some(&data(bad)), NET_CONF_KEY) else {
            panic!("should be rejected");
        };
        assert!(why.to_string().contains("Backend.Type"), "{why}");
        assert_eq!(
            t.apply(Some(&data(bad)), NET_CONF_KEY),
            Verdict::StillRejected
        );
        assert_eq!(t.current().cloned(), running);
        // Another bad content is reported again.
        assert!(matches!(
            t.apply(Some(&data("{")), NET_CONF_KEY),
            Verdict::Rejected(ConfigRejection::Invalid(ConfigError::NotJson(_)))
        ));
        // Back to the running config: nothing to publish, but the next mistake is reported.
        assert_eq!(
            t.apply(Some(&data(VXLAN)), NET_CONF_KEY),
            Verdict::Unchanged
        );
        assert!(matches!(
            t.apply(Some(&data(bad)), NET_CONF_KEY),
            Verdict::Rejected(_)
        ));
    }

    #[test]
    fn missing_key_or_data_is_a_rejection_naming_the_key() {
        let mut t = ConfigTracker::default();
        let other = BTreeMap::from([("cni-conf.json".to_string(), "{}".to_string())]);
        let Verdict::Rejected(why) = t.apply(Some(&other), NET_CONF_KEY) else {
            panic!("should be rejected");
        };
        assert!(why.to_string().contains("net-conf.json"), "{why}");
        assert!(why.to_string().contains("cni-conf.json"), "{why}");
        assert_eq!(t.apply(None, NET_CONF_KEY), Verdict::StillRejected);
        assert!(t.current().is_none());
    }
}
