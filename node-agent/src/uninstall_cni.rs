//! `trellis-agent uninstall-cni`: the opposite of `install-cni`, for a node leaving trellis.
//!
//! `kubectl delete -k deploy` removes the DaemonSet but not what its init container put on
//! the host: the conflist keeps sorting first, so the runtime keeps calling the plugin, and
//! after a reboot (`/run/flannel/subnet.env` gone with the tmpfs) every pod ADD fails. This
//! removes, on one node, only what trellis made:
//!
//! - the conflist, if it is still the one install-cni writes (it calls the `trellis` plugin;
//!   install-cni always writes a regular file, never a link);
//! - the plugin binary, unless a config left in the conf dir still calls it;
//! - and puts back the foreign configs install-cni moved aside (`*.trellis-replaced`),
//!   unless their owner has written a new one since.
//!
//! With [`remove_node_state`] also the network state the agent programmed, found the way the
//! agent finds it (the same reader and diff against an empty desired state, the same
//! firewall cleanup): `flannel.<VNI>`, `flannel-v6.<VNI>` and `flannel.ipip` devices, routes
//! with protocol 116, their neighbour and FDB entries, the `FLANNEL-*` iptables chains or the
//! `inet trellis` nftables table, the NetworkPolicy table `inet trellis-netpol`, and
//! `subnet.env`. The `cni0` bridge and pods' veths stay: pods still running use them.
//!
//! Every step is idempotent: a second run finds nothing to do and says so.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::dataplane::desired::KernelState;
use crate::dataplane::diff::{diff, Op};
use crate::dataplane::netlink::{apply, Dataplane, NetlinkError, OpError};
use crate::firewall::iptables::{IptablesDriver, Variant};
use crate::firewall::nftables::NftablesDriver;
use crate::firewall::tool::{Exec, FirewallError};
use crate::install_cni::{
    is_cni_config_name, regular_file_names, rename_durably, validate_conflist, DEFAULT_BIN_DIR,
    DEFAULT_CONFLIST_NAME, DEFAULT_CONF_DIR, DEFAULT_PLUGIN_NAME, REPLACED_SUFFIX,
};

/// Where the agent writes the lease for the plugin (flannel's path).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

#[derive(clap::Args, Debug, Clone)]
pub struct UninstallArgs {
    #[arg(long, default_value = DEFAULT_BIN_DIR)]
    pub bin_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_PLUGIN_NAME)]
    pub plugin_name: String,
    #[arg(long, default_value = DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_CONFLIST_NAME)]
    pub conflist_name: String,
    /// Leave the configs install-cni moved aside (`*.trellis-replaced`) where they are.
    #[arg(long)]
    pub keep_replaced: bool,
    /// Also remove trellis's devices, routes, neighbour/FDB entries, firewall rules and
    /// subnet.env from this node (needs NET_ADMIN and NET_RAW in the host network namespace).
    /// Cross-node pod traffic through this node stops at once.
    #[arg(long)]
    pub kernel_state: bool,
    #[arg(long, default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallOptions {
    pub bin_dir: PathBuf,
    pub plugin_name: String,
    pub conf_dir: PathBuf,
    pub conflist_name: String,
    /// Rename `*.trellis-replaced` back to their names.
    pub restore_replaced: bool,
}

impl UninstallOptions {
    /// The standard host dirs and names, restoring replaced configs.
    pub fn new() -> Self {
        Self {
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            plugin_name: DEFAULT_PLUGIN_NAME.to_owned(),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            conflist_name: DEFAULT_CONFLIST_NAME.to_owned(),
            restore_replaced: true,
        }
    }
}

impl Default for UninstallOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What became of one file trellis may own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing there (never installed, or already removed).
    Absent,
    /// There, but not something trellis wrote: left alone, with the reason.
    NotOurs(String),
    /// The plugin, kept because this config still calls it.
    StillUsedBy(PathBuf),
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::Removed => f.write_str("removed"),
            Removal::Absent => f.write_str("not present"),
            Removal::NotOurs(why) => write!(f, "left alone: {why}"),
            Removal::StillUsedBy(p) => write!(f, "kept: {} still calls it", p.display()),
        }
    }
}

/// A config install-cni had moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub aside: PathBuf,
    pub path: PathBuf,
    /// False when a file of the original name exists again (its owner rewrote it): both are
    /// left for the operator to compare.
    pub restored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallReport {
    pub conflist: (PathBuf, Removal),
    pub restored: Vec<Restored>,
    pub plugin: (PathBuf, Removal),
}

impl UninstallReport {
    /// False when a run found nothing of trellis's to remove or restore.
    pub fn changed(&self) -> bool {
        self.conflist.1 == Removal::Removed
            || self.plugin.1 == Removal::Removed
            || self.restored.iter().any(|r| r.restored)
    }
}

impl fmt::Display for UninstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conflist {}: {}",
            self.conflist.0.display(),
            self.conflist.1
        )?;
        for r in &self.restored {
            if r.restored {
                writeln!(
                    f,
                    "restored {} from {}",
                    r.path.display(),
                    r.aside.display()
                )?;
            } else {
                writeln!(
                    f,
                    "warning: {} exists again, so {} was left beside it: compare them and \
                     delete the one you do not want",
                    r.path.display(),
                    r.aside.display()
                )?;
            }
        }
        writeln!(f, "plugin {}: {}", self.plugin.0.display(), self.plugin.1)?;
        if !self.changed() {
            writeln!(f, "nothing of trellis's left in the CNI dirs")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("invalid file name {name:?}: must be a plain file name without '/'")]
    InvalidFileName { name: String },
    #[error("cannot read {} (is the host path mounted?): {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot list {} (is the host path mounted?): {source}", path.display())]
    ListDir { path: PathBuf, source: io::Error },
    #[error("cannot remove {} (is the host path mounted read-write?): {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("cannot rename {} back to {}: {source}", from.display(), to.display())]
    Restore {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot read trellis's kernel state: {0}")]
    Netlink(#[from] NetlinkError),
}

/// Whether `content` is a conflist install-cni would have written: one calling `plugin`. Pure.
pub fn conflist_is_ours(content: &[u8], plugin: &str) -> bool {
    validate_conflist(content, plugin).is_ok()
}

/// Whether a network config (a `.conflist` or a single-plugin `.conf`) calls `plugin`. Pure.
pub fn config_calls_plugin(content: &[u8], plugin: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(content) else {
        return false;
    };
    let calls = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()) == Some(plugin);
    calls(&value)
        || value
            .get("plugins")
            .and_then(|p| p.as_array())
            .is_some_and(|plugins| plugins.iter().any(calls))
}

/// Removes trellis's conflist and plugin and restores replaced configs. See the module doc.
pub fn uninstall(opts: &UninstallOptions) -> Result<UninstallReport, UninstallError> {
    check_file_name(&opts.plugin_name)?;
    check_file_name(&opts.conflist_name)?;
    // The conflist first: from then on the runtime stops calling trellis for new pods.
    let conflist_path = opts.conf_dir.join(&opts.conflist_name);
    let conflist = remove_conflist(&conflist_path, &opts.plugin_name)?;
    let restored = if opts.restore_replaced {
        restore_replaced(&opts.conf_dir)?
    } else {
        Vec::new()
    };
    let plugin_path = opts.bin_dir.join(&opts.plugin_name);
    let plugin = remove_plugin(&plugin_path, &opts.conf_dir, &opts.plugin_name)?;
    Ok(UninstallReport {
        conflist: (conflist_path, conflist),
        restored,
        plugin: (plugin_path, plugin),
    })
}

fn check_file_name(name: &str) -> Result<(), UninstallError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(UninstallError::InvalidFileName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn remove_conflist(path: &Path, plugin: &str) -> Result<Removal, UninstallError> {
    let Some(meta) = symlink_metadata(path)? else {
        return Ok(Removal::Absent);
    };
    if !meta.is_file() {
        return Ok(Removal::NotOurs(
            "not a regular file (install-cni writes regular files)".into(),
        ));
    }
    let content = read(path)?;
    if !conflist_is_ours(&content, plugin) {
        return Ok(Removal::NotOurs(format!(
            "it does not call the `{plugin}` plugin, so install-cni did not write it"
        )));
    }
    remove(path)
}

fn remove_plugin(path: &Path, conf_dir: &Path, plugin: &str) -> Result<Removal, UninstallError> {
    let Some(meta) = symlink_metadata(path)? else {
        return Ok(Removal::Absent);
    };
    if !meta.is_file() {
        return Ok(Removal::NotOurs(
            "not a regular file (install-cni writes regular files)".into(),
        ));
    }
    // A config trellis did not write (another name, an operator's own chain) calling the
    // plugin would fail every ADD with "plugin not found" once the binary is gone.
    if let Some(user) = config_calling(conf_dir, plugin)? {
        return Ok(Removal::StillUsedBy(user));
    }
    remove(path)
}

/// The first config in `conf_dir` (in the runtime's order) that calls `plugin`.
fn config_calling(conf_dir: &Path, plugin: &str) -> Result<Option<PathBuf>, UninstallError> {
    let mut names = match symlink_metadata(conf_dir)? {
        Some(_) => regular_file_names(conf_dir).map_err(|source| UninstallError::ListDir {
            path: conf_dir.to_owned(),
            source,
        })?,
        None => return Ok(None),
    };
    names.sort_unstable();
    for name in names.iter().filter(|n| is_cni_config_name(n)) {
        let path = conf_dir.join(name);
        // An unreadable config cannot call anything the runtime could load either.
        if fs::read(&path).is_ok_and(|c| config_calls_plugin(&c, plugin)) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Renames every `X.trellis-replaced` in `conf_dir` back to `X` unless `X` exists again.
fn restore_replaced(conf_dir: &Path) -> Result<Vec<Restored>, UninstallError> {
    let list_err = |source| UninstallError::ListDir {
        path: conf_dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut originals = Vec::new();
    for entry in entries {
        let name = entry.map_err(list_err)?.file_name();
        let original = name.to_str().and_then(|n| n.strip_suffix(REPLACED_SUFFIX));
        if let Some(original) = original.filter(|o| !o.is_empty()) {
            originals.push(original.to_owned());
        }
    }
    originals.sort_unstable();
    originals
        .iter()
        .map(|original| restore_one(conf_dir, original))
        .collect()
}

fn restore_one(conf_dir: &Path, original: &str) -> Result<Restored, UninstallError> {
    let path = conf_dir.join(original);
    let aside = conf_dir.join(format!("{original}{REPLACED_SUFFIX}"));
    // Never over a file its owner wrote since: that one may be newer than our copy.
    let restored = symlink_metadata(&path)?.is_none();
    if restored {
        rename_durably(&aside, &path).map_err(|source| UninstallError::Restore {
            from: aside.clone(),
            to: path.clone(),
            source,
        })?;
    }
    Ok(Restored {
        aside,
        path,
        restored,
    })
}

fn symlink_metadata(path: &Path) -> Result<Option<fs::Metadata>, UninstallError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UninstallError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, UninstallError> {
    fs::read(path).map_err(|source| UninstallError::Read {
        path: path.to_owned(),
        source,
    })
}

fn remove(path: &Path) -> Result<Removal, UninstallError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(Removal::Removed),
        // Gone between the look and the removal: the outcome the caller wanted.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Absent),
        Err(source) => Err(UninstallError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// What [`remove_node_state`] did.
#[derive(Debug)]
pub struct NodeStateReport {
    /// Kernel objects of trellis's that were deleted.
    pub removed: Vec<Op>,
    /// Deletions the kernel refused.
    pub errors: Vec<OpError>,
    /// Per firewall back end: `Ok(true)` cleaned, `Ok(false)` its tool is not installed (so
    /// trellis cannot have used it from this image), `Err` what failed.
    pub firewall: Vec<(&'static str, Result<bool, FirewallError>)>,
    pub subnet_file: (PathBuf, Removal),
}

impl NodeStateReport {
    pub fn succeeded(&self) -> bool {
        self.errors.is_empty() && self.firewall.iter().all(|(_, r)| r.is_ok())
    }
}

impl fmt::Display for NodeStateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.removed.is_empty() && self.errors.is_empty() {
            writeln!(f, "kernel: no trellis devices, routes or entries")?;
        }
        for op in &self.removed {
            writeln!(f, "kernel: {op}")?;
        }
        for e in &self.errors {
            writeln!(f, "error: kernel: {e}")?;
        }
        for (name, result) in &self.firewall {
            match result {
                Ok(true) => writeln!(f, "firewall {name}: nothing of trellis's left")?,
                Ok(false) => writeln!(f, "firewall {name}: tool not installed, skipped")?,
                Err(e) => writeln!(f, "error: firewall {name}: {e}")?,
            }
        }
        writeln!(
            f,
            "{}: {}",
            self.subnet_file.0.display(),
            self.subnet_file.1
        )
    }
}

/// Removes the network state trellis programmed in the calling thread's network namespace
/// (the firewall through `exec`, which may point elsewhere, as tests do). Must run inside a
/// Tokio runtime. Idempotent.
pub async fn remove_node_state(
    exec: Exec,
    subnet_file: &Path,
) -> Result<NodeStateReport, UninstallError> {
    let dp = Dataplane::new()?;
    let actual = dp.read_actual().await?;
    // The agent's own reconcile with nothing desired: exactly what it would delete as stale.
    let ops = diff(&KernelState::default(), &actual);
    let applied = apply(dp.handle(), &ops).await;
    let removed = ops
        .into_iter()
        .filter(|op| !applied.errors.iter().any(|e| &e.op == op))
        .collect();
    let firewall = vec![
        ("iptables", clean_iptables(exec.clone()).await),
        ("nftables", clean_nftables(exec.clone()).await),
        (
            "nftables NetworkPolicy",
            crate::netpol::kernel::remove_table(&exec).await,
        ),
    ];
    let subnet_file = (subnet_file.to_owned(), remove_subnet_file(subnet_file)?);
    Ok(NodeStateReport {
        removed,
        errors: applied.errors,
        firewall,
        subnet_file,
    })
}

async fn clean_iptables(exec: Exec) -> Result<bool, FirewallError> {
    match IptablesDriver::detect(exec, Variant::Path).await {
        Ok(x) => x.cleanup().await.map(|()| true),
        Err(e) if e.is_tool_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

async fn clean_nftables(exec: Exec) -> Result<bool, FirewallError> {
    match NftablesDriver::detect(exec).await {
        Ok(x) => x.cleanup().await.map(|()| true),
        Err(e) if e.is_tool_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_subnet_file(path: &Path) -> Result<Removal, UninstallError> {
    match symlink_metadata(path)? {
        None => Ok(Removal::Absent),
        Some(meta) if !meta.is_file() => Ok(Removal::NotOurs(
            "not a regular file (the agent writes a regular file)".into(),
        )),
        Some(_) => remove(path),
    }
}

/// `trellis-agent uninstall-cni`.
pub fn main(args: UninstallArgs) -> ExitCode {
    let opts = UninstallOptions {
        bin_dir: args.bin_dir,
        plugin_name: args.plugin_name,
        conf_dir: args.conf_dir,
        conflist_name: args.conflist_name,
        restore_replaced: !args.keep_replaced,
    };
    match uninstall(&opts) {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("uninstall-cni: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !args.kernel_state {
        return ExitCode::SUCCESS;
    }
    match crate::oneshot::block_on(remove_node_state(Exec::new(), &args.subnet_file)) {
        Err(e) => {
            eprintln!("uninstall-cni: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
        Ok(Ok(report)) => {
            print!("{report}");
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("uninstall-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflist_is_ours_when_it_calls_the_plugin() {
        let ours = br#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"trellis"},{"type":"portmap"}]}"#;
        let flannel = br#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#;
        assert!(conflist_is_ours(ours, "trellis"));
        assert!(!conflist_is_ours(ours, "trellis-dev"));
        assert!(!conflist_is_ours(flannel, "trellis"));
        assert!(!conflist_is_ours(b"not json", "trellis"));
    }

    #[test]
    fn a_config_calls_the_plugin_in_a_chain_or_alone() {
        assert!(config_calls_plugin(
            br#"{"plugins":[{"type":"bridge"},{"type":"trellis"}]}"#,
            "trellis"
        ));
        assert!(config_calls_plugin(
            br#"{"name":"x","type":"trellis"}"#,
            "trellis"
        ));
        assert!(!config_calls_plugin(
            br#"{"plugins":[{"type":"flannel"}]}"#,
            "trellis"
        ));
        assert!(!config_calls_plugin(b"{", "trellis"));
        assert!(!config_calls_plugin(b"[]", "trellis"));
    }
}
