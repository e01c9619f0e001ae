//! install-cni against real directories (temp dirs standing in for the host's
//! /opt/cni/bin and /etc/cni/net.d). No root needed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use trellis_agent::install_cni::{
    install, ConflistError, ConflistSource, FileAction, InstallError, InstallOptions,
    InstallWarning, DEFAULT_CONFLIST_NAME,
};

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"trellis","bridge":"cni0","hairpinMode":true,"isDefaultGateway":true},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
const PLUGIN: &[u8] = b"\x7fELF pretend plugin v1";

struct Host {
    _root: TempDir,
    image: PathBuf,
    bin_dir: PathBuf,
    conf_dir: PathBuf,
}

impl Host {
    /// An "image" dir holding the plugin and the mounted ConfigMap key, plus empty host dirs.
    fn new() -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let image = root.path().join("image");
        let bin_dir = root.path().join("host/opt/cni/bin");
        let conf_dir = root.path().join("host/etc/cni/net.d");
        for dir in [&image, &bin_dir, &conf_dir] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(image.join("trellis"), PLUGIN).expect("write plugin");
        fs::write(image.join("cni-conf.json"), CONFLIST).expect("write conflist");
        Self {
            _root: root,
            image,
            bin_dir,
            conf_dir,
        }
    }

    fn options(&self) -> InstallOptions {
        let mut opts = InstallOptions::new(
            self.image.join("trellis"),
            ConflistSource::Path(self.image.join("cni-conf.json")),
        );
        opts.bin_dir = self.bin_dir.clone();
        opts.conf_dir = self.conf_dir.clone();
        opts
    }

    fn installed_plugin(&self) -> PathBuf {
        self.bin_dir.join("trellis")
    }

    fn installed_conflist(&self) -> PathBuf {
        self.conf_dir.join(DEFAULT_CONFLIST_NAME)
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn installs_plugin_and_conflist_with_their_modes() {
    let host = Host::new();
    // A restrictive source mode must not leak into the host: runtimes exec the plugin as root
    // but operators' tools read the conflist unprivileged.
    fs::set_permissions(
        host.image.join("trellis"),
        fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    fs::set_permissions(
        host.image.join("cni-conf.json"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    let report = install(&host.options()).expect("install");

    assert_eq!(report.plugin.action, FileAction::Created);
    assert_eq!(report.conflist.action, FileAction::Created);
    assert!(report.changed());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.plugin.path, host.installed_plugin());
    assert_eq!(report.conflist.path, host.installed_conflist());
    assert_eq!(fs::read(host.installed_plugin()).expect("read"), PLUGIN);
    assert_eq!(
        fs::read_to_string(host.installed_conflist()).expect("read"),
        CONFLIST
    );
    assert_eq!(mode(&host.installed_plugin()), 0o755);
    assert_eq!(mode(&host.installed_conflist()), 0o644);
    // No temp file left behind for a runtime to trip over.
    assert_eq!(dir_names(&host.conf_dir), vec![DEFAULT_CONFLIST_NAME]);
    assert_eq!(dir_names(&host.bin_dir), vec!["trellis"]);
}

#[test]
fn second_run_changes_nothing_and_says_so() {
    let host = Host::new();
    install(&host.options()).expect("first install");
    let inode_plugin = fs::metadata(host.installed_plugin()).expect("stat").ino();
    let inode_conf = fs::metadata(host.installed_conflist()).expect("stat").ino();

    let report = install(&host.options()).expect("second install");

    assert_eq!(report.plugin.action, FileAction::Unchanged);
    assert_eq!(report.conflist.action, FileAction::Unchanged);
    assert!(!report.changed());
    assert!(report.to_string().contains("nothing changed"), "{report}");
    // Untouched means not rewritten: a rename would have given new inodes, and the runtime's
    // conf dir watcher would have fired for nothing.
    assert_eq!(
        fs::metadata(host.installed_plugin()).expect("stat").ino(),
        inode_plugin
    );
    assert_eq!(
        fs::metadata(host.installed_conflist()).expect("stat").ino(),
        inode_conf
    );
}

#[test]
fn replaces_by_rename_when_content_or_mode_differs() {
    let host = Host::new();
    install(&host.options()).expect("first install");
    // A process still holding the old plugin open (as a running exec would) keeps its bytes.
    let old_plugin = fs::File::open(host.installed_plugin()).expect("open");
    let old_inode = old_plugin.metadata().expect("stat").ino();

    fs::write(host.image.join("trellis"), b"\x7fELF pretend plugin v2").expect("write");
    fs::set_permissions(host.installed_conflist(), fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let report = install(&host.options()).expect("upgrade");

    assert_eq!(report.plugin.action, FileAction::Updated);
    assert_eq!(report.conflist.action, FileAction::Updated);
    assert_eq!(
        fs::read(host.installed_plugin()).expect("read"),
        b"\x7fELF pretend plugin v2"
    );
    assert_ne!(
        fs::metadata(host.installed_plugin()).expect("stat").ino(),
        old_inode,
        "the plugin must be replaced by rename, not overwritten in place (ETXTBSY)"
    );
    assert_eq!(
        old_plugin.metadata().expect("stat").len(),
        PLUGIN.len() as u64
    );
    assert_eq!(mode(&host.installed_conflist()), 0o644);
}

#[test]
fn refuses_without_the_plugin_binary_and_writes_nothing() {
    let host = Host::new();
    fs::remove_file(host.image.join("trellis")).expect("rm");

    let err = install(&host.options()).expect_err("must refuse");

    match &err {
        InstallError::PluginMissing { path } => assert_eq!(path, &host.image.join("trellis")),
        other => panic!("expected PluginMissing, got {other:?}"),
    }
    assert!(err.to_string().contains("trellis"), "{err}");
    // Above all, no conflist pointing runtimes at a plugin that is not there.
    assert!(dir_names(&host.conf_dir).is_empty());
    assert!(dir_names(&host.bin_dir).is_empty());
}

#[test]
fn refuses_a_plugin_source_that_is_a_directory_or_empty() {
    let host = Host::new();
    let mut opts = host.options();
    opts.plugin_source = host.image.clone();
    assert!(matches!(
        install(&opts),
        Err(InstallError::PluginNotAFile { .. })
    ));

    fs::write(host.image.join("trellis"), b"").expect("truncate");
    assert!(matches!(
        install(&host.options()),
        Err(InstallError::PluginEmpty { .. })
    ));
    assert!(dir_names(&host.conf_dir).is_empty());
}

#[test]
fn rejects_an_invalid_conflist_before_writing_anything() {
    let host = Host::new();
    let mut opts = host.options();
    opts.conflist = ConflistSource::Content(
        r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"bridge"}]}"#.into(),
    );

    let err = install(&opts).expect_err("must reject");

    match &err {
        InstallError::InvalidConflist { reason, .. } => assert_eq!(
            reason,
            &ConflistError::NoTrellisPlugin {
                expected: "trellis".into()
            }
        ),
        other => panic!("expected InvalidConflist, got {other:?}"),
    }
    assert!(dir_names(&host.bin_dir).is_empty());
    assert!(dir_names(&host.conf_dir).is_empty());

    opts.conflist = ConflistSource::Content("not json".into());
    assert!(matches!(
        install(&opts),
        Err(InstallError::InvalidConflist {
            reason: ConflistError::Json(_),
            ..
        })
    ));
}

#[test]
fn reports_an_unreadable_conflist_path() {
    let host = Host::new();
    let mut opts = host.options();
    let missing = host.image.join("no-such-key.json");
    opts.conflist = ConflistSource::Path(missing.clone());
    match install(&opts) {
        Err(InstallError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Read error, got {other:?}"),
    }
}

#[test]
fn installs_conflist_given_as_content() {
    let host = Host::new();
    let mut opts = host.options();
    opts.conflist = ConflistSource::Content(CONFLIST.into());
    install(&opts).expect("install");
    assert_eq!(
        fs::read_to_string(host.installed_conflist()).expect("read"),
        CONFLIST
    );
}

#[test]
fn creates_missing_host_dirs() {
    let host = Host::new();
    let mut opts = host.options();
    opts.bin_dir = host.bin_dir.join("nested/bin");
    opts.conf_dir = host.conf_dir.join("nested/net.d");
    let report = install(&opts).expect("install");
    assert!(report.plugin.path.starts_with(&opts.bin_dir));
    assert!(opts.conf_dir.join(DEFAULT_CONFLIST_NAME).is_file());
}

#[test]
fn warns_about_foreign_configs_that_shadow_ours_naming_them() {
    let host = Host::new();
    let shadowing = ["00-old.json", "10-containerd-net.conflist"];
    for name in shadowing {
        fs::write(host.conf_dir.join(name), "{}").expect("write");
    }
    // Sorting after ours, or not a config at all, or a directory: harmless.
    fs::write(host.conf_dir.join("87-podman-bridge.conflist"), "{}").expect("write");
    fs::write(host.conf_dir.join("01-readme.txt"), "x").expect("write");
    fs::create_dir(host.conf_dir.join("05-dir.conf")).expect("mkdir");
    // A symlink to a config is loaded by runtimes, so it shadows too.
    fs::write(host.image.join("linked.conf"), "{}").expect("write");
    std::os::unix::fs::symlink(
        host.image.join("linked.conf"),
        host.conf_dir.join("01-linked.conf"),
    )
    .expect("symlink");

    let report = install(&host.options()).expect("install still succeeds");

    let named: Vec<PathBuf> = report
        .warnings
        .iter()
        .map(|w| match w {
            InstallWarning::ForeignConfigFirst { path, ours } => {
                assert_eq!(ours, &host.installed_conflist());
                path.clone()
            }
        })
        .collect();
    assert_eq!(
        named,
        vec![
            host.conf_dir.join("00-old.json"),
            host.conf_dir.join("01-linked.conf"),
            host.conf_dir.join("10-containerd-net.conflist"),
        ]
    );
    let text = report.to_string();
    assert!(text.contains("10-containerd-net.conflist"), "{text}");
    assert!(text.contains("10.88"), "{text}");
    // Still installed: the warning is for the operator, the install itself is fine.
    assert!(host.installed_conflist().is_file());
    // And the warning is repeated on an idempotent rerun, where it matters just as much.
    let again = install(&host.options()).expect("rerun");
    assert!(!again.changed());
    assert_eq!(again.warnings.len(), 3);
}

#[test]
fn replaces_a_symlink_in_our_place_instead_of_writing_through_it() {
    let host = Host::new();
    let elsewhere = host.image.join("elsewhere.conflist");
    fs::write(&elsewhere, CONFLIST).expect("write");
    std::os::unix::fs::symlink(&elsewhere, host.installed_conflist()).expect("symlink");

    let report = install(&host.options()).expect("install");

    assert_eq!(report.conflist.action, FileAction::Updated);
    let meta = fs::symlink_metadata(host.installed_conflist()).expect("lstat");
    assert!(
        meta.file_type().is_file(),
        "symlink must become a regular file"
    );
    assert_eq!(fs::read_to_string(&elsewhere).expect("read"), CONFLIST);
}

#[test]
fn rejects_file_names_that_escape_the_target_dir() {
    let host = Host::new();
    let mut opts = host.options();
    opts.conflist_name = "../evil.conflist".into();
    assert!(matches!(
        install(&opts),
        Err(InstallError::InvalidFileName { .. })
    ));
    let mut opts = host.options();
    opts.plugin_name = String::new();
    assert!(matches!(
        install(&opts),
        Err(InstallError::InvalidFileName { .. })
    ));
}

#[test]
fn honours_a_custom_plugin_and_conflist_name() {
    let host = Host::new();
    let mut opts = host.options();
    opts.plugin_name = "trellis-dev".into();
    opts.conflist_name = "05-trellis.conflist".into();
    opts.conflist = ConflistSource::Content(CONFLIST.replace("\"trellis\"", "\"trellis-dev\""));
    let report = install(&opts).expect("install");
    assert_eq!(report.plugin.path, host.bin_dir.join("trellis-dev"));
    assert_eq!(
        report.conflist.path,
        host.conf_dir.join("05-trellis.conflist")
    );
}

#[test]
fn a_write_failure_is_typed_and_names_the_path() {
    let host = Host::new();
    let mut opts = host.options();
    // A file where the bin dir should be: creating the dir fails whatever our privileges.
    let blocker = host.image.join("not-a-dir");
    fs::write(&blocker, "x").expect("write");
    opts.bin_dir = blocker.join("bin");
    match install(&opts) {
        Err(InstallError::CreateDir { path, .. }) => assert_eq!(path, opts.bin_dir),
        other => panic!("expected CreateDir error, got {other:?}"),
    }
}
