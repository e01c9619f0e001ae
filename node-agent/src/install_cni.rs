//! `trellis-agent install-cni`: put the CNI plugin binary and the conflist on the host.
//!
//! Runs as the DaemonSet's init container, with the host's CNI bin and conf dirs mounted.
//! The container runtime may exec the plugin or read the conf dir at any moment, so every
//! file is written to a temporary file in the same directory and renamed into place: a
//! reader sees either the old file or the new one, never a half-written one, and a plugin
//! binary that is running keeps its old inode instead of failing with ETXTBSY.
//!
//! The decisions (is this conflist usable, which foreign configs shadow ours) are pure
//! functions so they are tested without touching a file system.
//!
//! Replacing another network (flannel) in place: its conflist stays in the conf dir and, as
//! `10-flannel.conflist`, sorts before ours, so the runtime would keep calling flannel. Only
//! the configs an operator names in [`InstallOptions::replace_conflists`] are moved aside, by
//! a rename to `<name>.trellis-replaced` (an extension no runtime loads), so nothing is lost
//! and `trellis-agent uninstall-cni` (or `mv` by hand) puts them back. Off by default.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File name of the conflist in the conf dir. `10-` leaves room for operators who deliberately
/// chain something before it, and sorts before the `87-podman`/`99-loopback` style defaults.
pub const DEFAULT_CONFLIST_NAME: &str = "10-trellis.conflist";
/// File name of the plugin in the bin dir; it must equal the `type` the conflist names.
pub const DEFAULT_PLUGIN_NAME: &str = "trellis";
/// Where kubelet's runtimes (containerd, CRI-O) look by default.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Extensions libcni loads from a conf dir; anything else there is ignored by runtimes.
const CNI_CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Appended to a foreign config that `install` moved aside; no runtime loads such a name.
pub const REPLACED_SUFFIX: &str = ".trellis-replaced";
const PLUGIN_MODE: u32 = 0o755;
const CONFLIST_MODE: u32 = 0o644;

/// Where the conflist to install comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflistSource {
    /// A file, typically the `cni-conf.json` key of the ConfigMap mounted into the pod.
    Path(PathBuf),
    /// The conflist itself.
    Content(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOptions {
    /// The plugin binary shipped in the image (e.g. `/usr/local/bin/trellis`).
    pub plugin_source: PathBuf,
    /// The host's CNI bin dir as mounted in the container.
    pub bin_dir: PathBuf,
    /// Name of the plugin in `bin_dir`; the conflist must reference it as a plugin `type`.
    pub plugin_name: String,
    pub conflist: ConflistSource,
    /// The host's CNI conf dir as mounted in the container.
    pub conf_dir: PathBuf,
    pub conflist_name: String,
    /// Foreign config file names in `conf_dir` to move aside (e.g. `10-flannel.conflist`).
    /// Empty by default: nothing but trellis's own files is ever touched unless named here.
    pub replace_conflists: Vec<String>,
}

impl InstallOptions {
    /// Options with the conventional names and the standard host dirs.
    pub fn new(plugin_source: impl Into<PathBuf>, conflist: ConflistSource) -> Self {
        Self {
            plugin_source: plugin_source.into(),
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            plugin_name: DEFAULT_PLUGIN_NAME.to_owned(),
            conflist,
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            conflist_name: DEFAULT_CONFLIST_NAME.to_owned(),
            replace_conflists: Vec::new(),
        }
    }

    pub fn plugin_target(&self) -> PathBuf {
        self.bin_dir.join(&self.plugin_name)
    }

    pub fn conflist_target(&self) -> PathBuf {
        self.conf_dir.join(&self.conflist_name)
    }
}

/// What happened to one installed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Created,
    /// Content or mode differed and the file was replaced.
    Updated,
    /// Already identical (content and mode): left untouched, not even rewritten.
    Unchanged,
}

impl fmt::Display for FileAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileAction::Created => "created",
            FileAction::Updated => "updated",
            FileAction::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledFile {
    pub path: PathBuf,
    pub action: FileAction,
}

/// What happened to one foreign config named for replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceAction {
    /// Renamed to its `.trellis-replaced` name.
    MovedAside,
    /// Its owner wrote it again after an earlier run moved it aside (flannel's own init
    /// container does on restart); the content was identical to the copy set aside, so it was
    /// moved over that copy and nothing was lost.
    MovedAsideAgain,
    /// Not there because an earlier run moved it aside.
    AlreadyAside,
    /// Neither there nor set aside: nothing to do.
    Absent,
}

impl fmt::Display for ReplaceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplaceAction::MovedAside => "moved aside",
            ReplaceAction::MovedAsideAgain => {
                "written again by its owner (is it still running?), moved aside again"
            }
            ReplaceAction::AlreadyAside => "already moved aside",
            ReplaceAction::Absent => "not present, nothing to move",
        })
    }
}

/// One foreign config named for replacement and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedConfig {
    pub path: PathBuf,
    /// Where it is (or would be) set aside: `path` + [`REPLACED_SUFFIX`].
    pub aside: PathBuf,
    pub action: ReplaceAction,
}

/// The name a replaced config is kept under.
pub fn replaced_name(name: &str) -> String {
    format!("{name}{REPLACED_SUFFIX}")
}

/// A condition that does not stop the install but will likely break pod networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallWarning {
    /// Runtimes use the first config in sort order, so this file wins over ours and pods get
    /// addresses from whatever it configures (classically podman's or containerd's default
    /// bridge handing out 10.88.x addresses).
    ForeignConfigFirst { path: PathBuf, ours: PathBuf },
}

impl fmt::Display for InstallWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallWarning::ForeignConfigFirst { path, ours } => write!(
                f,
                "{} sorts before {} and container runtimes use the first config in the directory, \
                 so pods will be networked by it instead of trellis (e.g. getting 10.88.x addresses \
                 from a default bridge config); remove or rename it on the host, or let install-cni \
                 move it aside with --replace-conflist (TRELLIS_REPLACE_CONFLISTS)",
                path.display(),
                ours.display()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub plugin: InstalledFile,
    pub conflist: InstalledFile,
    /// One entry per name in [`InstallOptions::replace_conflists`], in that order.
    pub replaced: Vec<ReplacedConfig>,
    pub warnings: Vec<InstallWarning>,
}

impl InstallReport {
    /// False when a run found everything already in place.
    pub fn changed(&self) -> bool {
        let moved = self.replaced.iter().any(|r| {
            matches!(
                r.action,
                ReplaceAction::MovedAside | ReplaceAction::MovedAsideAgain
            )
        });
        moved
            || self.plugin.action != FileAction::Unchanged
            || self.conflist.action != FileAction::Unchanged
    }
}

impl fmt::Display for InstallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plugin {}: {}",
            self.plugin.path.display(),
            self.plugin.action
        )?;
        writeln!(
            f,
            "conflist {}: {}",
            self.conflist.path.display(),
            self.conflist.action
        )?;
        for r in &self.replaced {
            writeln!(
                f,
                "foreign config {} -> {}: {}",
                r.path.display(),
                r.aside.display(),
                r.action
            )?;
        }
        if !self.changed() {
            writeln!(f, "already installed, nothing changed")?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

/// Why a conflist is not one trellis can install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflistError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("top level must be a JSON object")]
    NotAnObject,
    #[error("`name` must be a non-empty string (runtimes refuse a conflist without it)")]
    MissingName,
    #[error("`plugins` must be a non-empty array (is this a single-plugin .conf instead of a conflist?)")]
    MissingPlugins,
    #[error("plugins[{index}] has no string `type`")]
    PluginWithoutType { index: usize },
    #[error("no plugin has `\"type\": \"{expected}\"`, so trellis would never be called")]
    NoTrellisPlugin { expected: String },
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "CNI plugin binary {} not found: the image must ship it (build trellis-cni into it) \
         or pass the right source path",
        path.display()
    )]
    PluginMissing { path: PathBuf },
    #[error("CNI plugin source {} is not a regular file", path.display())]
    PluginNotAFile { path: PathBuf },
    #[error("CNI plugin source {} is empty: a truncated image or copy", path.display())]
    PluginEmpty { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("conflist {origin} is invalid: {reason}")]
    InvalidConflist {
        origin: String,
        reason: ConflistError,
    },
    #[error("invalid file name {name:?}: must be a plain file name without '/'")]
    InvalidFileName { name: String },
    #[error("--replace-conflist {name:?} refused: {reason}")]
    InvalidReplaceName { name: String, reason: &'static str },
    #[error(
        "{} is not a regular file or symlink; --replace-conflist only moves config files",
        path.display()
    )]
    ReplaceNotAFile { path: PathBuf },
    #[error(
        "{} is back and differs from {}, which an earlier run set aside: whatever writes it \
         (flannel's DaemonSet?) is still running. Delete that DaemonSet, compare the two files, \
         delete the one you do not want to keep, and restart this pod",
        path.display(),
        aside.display()
    )]
    ReplaceConflict { path: PathBuf, aside: PathBuf },
    #[error("cannot move {} to {}: {source}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot create directory {} (is the host path mounted?): {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot list {}: {source}", path.display())]
    ListDir { path: PathBuf, source: io::Error },
    #[error("cannot write {} (is the host path mounted read-write?): {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Checks that `content` is a conflist a runtime can load and that it calls `plugin_type`.
pub fn validate_conflist(content: &[u8], plugin_type: &str) -> Result<(), ConflistError> {
    let value: serde_json::Value =
        serde_json::from_slice(content).map_err(|e| ConflistError::Json(e.to_string()))?;
    let object = value.as_object().ok_or(ConflistError::NotAnObject)?;
    match object.get("name").and_then(|n| n.as_str()) {
        Some(name) if !name.is_empty() => {}
        _ => return Err(ConflistError::MissingName),
    }
    let plugins = match object.get("plugins").and_then(|p| p.as_array()) {
        Some(plugins) if !plugins.is_empty() => plugins,
        _ => return Err(ConflistError::MissingPlugins),
    };
    let mut found = false;
    for (index, plugin) in plugins.iter().enumerate() {
        let kind = plugin
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or(ConflistError::PluginWithoutType { index })?;
        found |= kind == plugin_type;
    }
    if found {
        Ok(())
    } else {
        Err(ConflistError::NoTrellisPlugin {
            expected: plugin_type.to_owned(),
        })
    }
}

/// Whether a runtime would consider this file name a network config (libcni's rule).
pub fn is_cni_config_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| CNI_CONFIG_EXTENSIONS.contains(&ext))
}

/// The config file names (among `names`, which are the regular files of the conf dir) that a
/// runtime would pick before `ours`, in the order it would consider them. Runtimes sort names
/// bytewise, as Go's `sort.Strings` does, which is what `str`'s `Ord` does.
pub fn configs_sorting_before<'a>(names: &'a [String], ours: &str) -> Vec<&'a str> {
    let mut before: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| is_cni_config_name(name) && name.cmp(&ours) == Ordering::Less)
        .collect();
    before.sort_unstable();
    before
}

/// Installs the plugin and the conflist. See the module doc for the guarantees.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    check_file_name(&opts.plugin_name)?;
    check_file_name(&opts.conflist_name)?;
    for name in &opts.replace_conflists {
        check_replace_name(name, &opts.conflist_name)?;
    }
    // Validate every input before the first write, so a bad ConfigMap or image never leaves
    // the node with a new conflist pointing at a plugin that was not installed (or the reverse).
    let plugin = read_plugin(&opts.plugin_source)?;
    let (conflist, origin) = match &opts.conflist {
        ConflistSource::Path(path) => (
            fs::read(path).map_err(|source| InstallError::Read {
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        ConflistSource::Content(text) => (text.clone().into_bytes(), "content".to_owned()),
    };
    validate_conflist(&conflist, &opts.plugin_name)
        .map_err(|reason| InstallError::InvalidConflist { origin, reason })?;

    // Decided before any write, so a conflict leaves the node exactly as it was.
    let replaced = opts
        .replace_conflists
        .iter()
        .map(|name| plan_move_aside(&opts.conf_dir, name))
        .collect::<Result<Vec<_>, _>>()?;

    ensure_dir(&opts.bin_dir)?;
    ensure_dir(&opts.conf_dir)?;

    // The plugin first: once the conflist lands, the runtime may call the plugin immediately.
    let plugin_target = opts.plugin_target();
    let plugin_action = write_atomic(&plugin_target, &plugin, PLUGIN_MODE)?;
    let conflist_target = opts.conflist_target();
    let conflist_action = write_atomic(&conflist_target, &conflist, CONFLIST_MODE)?;
    // Only now that ours is in place: moving the foreign config first would leave the node
    // with no network config at all for a moment, and the runtime would report it not ready.
    for r in &replaced {
        move_aside(r)?;
    }

    let names = regular_file_names(&opts.conf_dir).map_err(|source| InstallError::ListDir {
        path: opts.conf_dir.clone(),
        source,
    })?;
    let warnings = configs_sorting_before(&names, &opts.conflist_name)
        .into_iter()
        .map(|name| InstallWarning::ForeignConfigFirst {
            path: opts.conf_dir.join(name),
            ours: conflist_target.clone(),
        })
        .collect();

    Ok(InstallReport {
        plugin: InstalledFile {
            path: plugin_target,
            action: plugin_action,
        },
        conflist: InstalledFile {
            path: conflist_target,
            action: conflist_action,
        },
        replaced,
        warnings,
    })
}

/// Why `name` may not be given to `--replace-conflist`, if it may not. Pure.
pub fn replace_name_problem(name: &str, ours: &str) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        Some("must be a plain file name in the CNI conf dir, without '/' or '..'")
    } else if name == ours {
        Some("that is trellis's own conflist")
    } else if name.ends_with(REPLACED_SUFFIX) {
        Some("that name is already a moved-aside copy")
    } else if !is_cni_config_name(name) {
        Some("not a name a runtime loads (.conf, .conflist or .json), so it needs no moving")
    } else {
        None
    }
}

fn check_replace_name(name: &str, ours: &str) -> Result<(), InstallError> {
    match replace_name_problem(name, ours) {
        None => Ok(()),
        Some(reason) => Err(InstallError::InvalidReplaceName {
            name: name.to_owned(),
            reason,
        }),
    }
}

/// What moving `conf_dir/name` aside will do. Idempotent: once moved, a later run finds it
/// already aside. Refuses to overwrite a different copy already set aside.
fn plan_move_aside(conf_dir: &Path, name: &str) -> Result<ReplacedConfig, InstallError> {
    let path = conf_dir.join(name);
    let aside = conf_dir.join(replaced_name(name));
    let action = match (present(&path)?, present_aside(&aside)?) {
        (false, false) => ReplaceAction::Absent,
        (false, true) => ReplaceAction::AlreadyAside,
        (true, false) => ReplaceAction::MovedAside,
        (true, true) if same_content(&path, &aside) => ReplaceAction::MovedAsideAgain,
        (true, true) => return Err(InstallError::ReplaceConflict { path, aside }),
    };
    Ok(ReplacedConfig {
        path,
        aside,
        action,
    })
}

/// Carries out a [`plan_move_aside`]: one rename, so a runtime sees the config either
/// loaded or gone, never half there.
fn move_aside(r: &ReplacedConfig) -> Result<(), InstallError> {
    match r.action {
        ReplaceAction::MovedAside | ReplaceAction::MovedAsideAgain => {
            rename_durably(&r.path, &r.aside).map_err(|source| InstallError::Rename {
                from: r.path.clone(),
                to: r.aside.clone(),
                source,
            })
        }
        ReplaceAction::AlreadyAside | ReplaceAction::Absent => Ok(()),
    }
}

/// Whether a config to move aside is there. A symlink counts (runtimes follow it, and the
/// rename moves the link, not its target); a directory is refused.
fn present(path: &Path) -> Result<bool, InstallError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(InstallError::ReplaceNotAFile {
            path: path.to_owned(),
        }),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn present_aside(path: &Path) -> Result<bool, InstallError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn same_content(a: &Path, b: &Path) -> bool {
    match (fs::read(a), fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `rename(2)`, atomic within the directory, then the directory synced so that the new name
/// survives a crash. Shared with `uninstall-cni`, which renames the copies back.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(to.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

fn check_file_name(name: &str) -> Result<(), InstallError> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    if plain {
        Ok(())
    } else {
        Err(InstallError::InvalidFileName {
            name: name.to_owned(),
        })
    }
}

fn read_plugin(path: &Path) -> Result<Vec<u8>, InstallError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InstallError::PluginMissing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(InstallError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(InstallError::PluginNotAFile {
            path: path.to_owned(),
        });
    }
    let bytes = fs::read(path).map_err(|source| InstallError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(InstallError::PluginEmpty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn ensure_dir(path: &Path) -> Result<(), InstallError> {
    fs::create_dir_all(path).map_err(|source| InstallError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// Names of the regular files in `dir` (symlinks followed, as libcni does: a link to a config
/// file is a config file). Shared with `uninstall-cni`.
pub fn regular_file_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let is_file = fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
        if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Whether `path` already holds exactly `content` with `mode`, so the write can be skipped.
fn already_installed(path: &Path, content: &[u8], mode: u32) -> Option<bool> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        // A symlink or directory in our place gets replaced by a regular file.
        return Some(false);
    }
    if meta.mode() & 0o7777 != mode || meta.len() != content.len() as u64 {
        return Some(false);
    }
    Some(fs::read(path).is_ok_and(|existing| existing == content))
}

fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<FileAction, InstallError> {
    let action = match already_installed(path, content, mode) {
        Some(true) => return Ok(FileAction::Unchanged),
        Some(false) => FileAction::Updated,
        None => FileAction::Created,
    };
    let write_err = |source| InstallError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(DEFAULT_PLUGIN_NAME);
    // Hidden, and ending in `.tmp`, so that no runtime mistakes a half-written file for a
    // config; the same dir, so that the rename is atomic (one file system).
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    // Explicit mode: the umask of whatever runs the init container must not decide it.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(write_err)?;
    tmp.write_all(content).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    // The rename itself is durable only once the directory entry is on disk.
    sync_dir(dir).map_err(write_err)?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"trellis","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn accepts_the_shipped_conflist_shape() {
        assert_eq!(validate_conflist(GOOD.as_bytes(), "trellis"), Ok(()));
    }

    #[test]
    fn rejects_conflists_a_runtime_would_refuse_or_that_skip_trellis() {
        let cases: [(&str, ConflistError); 7] = [
            ("{", ConflistError::Json(String::new())),
            ("[]", ConflistError::NotAnObject),
            (
                r#"{"plugins":[{"type":"trellis"}]}"#,
                ConflistError::MissingName,
            ),
            (
                r#"{"name":"n","type":"trellis"}"#,
                ConflistError::MissingPlugins,
            ),
            (
                r#"{"name":"n","plugins":[]}"#,
                ConflistError::MissingPlugins,
            ),
            (
                r#"{"name":"n","plugins":[{"type":"trellis"},{"bridge":"x"}]}"#,
                ConflistError::PluginWithoutType { index: 1 },
            ),
            (
                r#"{"name":"n","plugins":[{"type":"flannel"}]}"#,
                ConflistError::NoTrellisPlugin {
                    expected: "trellis".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            let got = validate_conflist(input.as_bytes(), "trellis");
            match (&got, &expected) {
                (Err(ConflistError::Json(_)), ConflistError::Json(_)) => {}
                _ => assert_eq!(got, Err(expected), "input {input}"),
            }
        }
    }

    #[test]
    fn the_plugin_type_checked_is_the_configured_plugin_name() {
        assert!(validate_conflist(GOOD.as_bytes(), "trellis-dev").is_err());
    }

    #[test]
    fn only_cni_extensions_count_as_configs() {
        for name in ["a.conf", "a.conflist", "a.json", ".hidden.conf"] {
            assert!(is_cni_config_name(name), "{name}");
        }
        for name in [
            "a.conf.bak",
            "a.tmp",
            "README",
            "conf",
            ".10-trellis.conflist.x1.tmp",
        ] {
            assert!(!is_cni_config_name(name), "{name}");
        }
    }

    #[test]
    fn lists_configs_that_sort_before_ours_bytewise() {
        let names: Vec<String> = [
            "99-loopback.conf",
            "87-podman-bridge.conflist",
            "10-containerd-net.conflist",
            "00-old.json",
            "01-notes.txt",
            DEFAULT_CONFLIST_NAME,
            "10-Trellis.conf", // uppercase sorts before lowercase bytewise
            "10-trellis.conflist.bak",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            configs_sorting_before(&names, DEFAULT_CONFLIST_NAME),
            vec![
                "00-old.json",
                "10-Trellis.conf",
                "10-containerd-net.conflist"
            ]
        );
    }

    #[test]
    fn replace_names_must_be_plain_foreign_config_names() {
        let ours = DEFAULT_CONFLIST_NAME;
        for good in [
            "10-flannel.conflist",
            "00-old.conf",
            "05-x.json",
            ".hidden.conf",
        ] {
            assert_eq!(replace_name_problem(good, ours), None, "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../10-flannel.conflist",
            "sub/10-flannel.conflist",
            "/etc/cni/net.d/10-flannel.conflist",
            "10-flannel\0.conflist",
            DEFAULT_CONFLIST_NAME,
            "10-flannel.conflist.trellis-replaced",
            "10-flannel.conflist.bak",
        ] {
            assert!(replace_name_problem(bad, ours).is_some(), "{bad:?}");
        }
        assert_eq!(
            replaced_name("10-flannel.conflist"),
            "10-flannel.conflist.trellis-replaced"
        );
        assert!(!is_cni_config_name(&replaced_name("10-flannel.conflist")));
    }
}
