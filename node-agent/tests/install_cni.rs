//! install-cni and uninstall-cni against real directories (temp dirs standing in for the
//! host's /opt/cni/bin and /etc/cni/net.d). No root needed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use trellis_agent::install_cni::{
    install, ConflistError, ConflistSource, FileAction, InstallError, InstallOptions,
    InstallWarning, ReplaceAction, DEFAULT_CONFLIST_NAME,
};
use trellis_agent::uninstall_cni::{uninstall, Removal, UninstallOptions};

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"trellis","bridge":"cni0","hairpinMode":true,"isDefaultGateway":true},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
const PLUGIN: &[u8] = b"\x7fELF pretend plugin v1";
/// flannel's own conflist, as its install-cni writes it.
const FLANNEL: &str = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
const FLANNEL_CONFLIST: &str = "10-flannel.conflist";
const FLANNEL_ASIDE: &str = "10-flannel.conflist.trellis-replaced";

struct Host {
    _root: TempDir,
    image: PathBuf,
    bin_dir: PathBuf,
    conf_dir: PathBuf,
}

impl Host {
    /// A symbolic link at `link` to a new file `name` in the image dir holding `content`;
    /// returns that file's path.
    fn link_to_new_file(&self, link: PathBuf, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let target = self.image.join(name);
        fs::write(&target, content).expect("write");
        std::os::unix::fs::symlink(&target, link).expect("symlink");
        target
    }

    /// What the file `name` in the CNI config dir holds.
    fn conf(&self, name: &str) -> String {
        fs::read_to_string(self.conf_dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

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

    /// A node flannel ran on: its conflist and a few of the reference plugins in place.
    fn with_flannel() -> Self {
        let host = Self::new();
        fs::write(host.conf_dir.join(FLANNEL_CONFLIST), FLANNEL).expect("write flannel");
        for plugin in ["flannel", "portmap", "bridge"] {
            fs::write(host.bin_dir.join(plugin), plugin).expect("write plugin");
        }
        host
    }

    /// Options that replace flannel's conflist.
    fn replacing_flannel(&self) -> InstallOptions {
        let mut opts = self.options();
        opts.replace_conflists = vec![FLANNEL_CONFLIST.into()];
        opts
    }

    fn uninstall_options(&self) -> UninstallOptions {
        let mut opts = UninstallOptions::new();
        opts.bin_dir = self.bin_dir.clone();
        opts.conf_dir = self.conf_dir.clone();
        opts
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

/// The report, as shown to the operator, says each of `words`.
fn assert_says(report: &impl std::fmt::Display, words: &[&str]) {
    let text = report.to_string();
    for w in words {
        assert!(text.contains(w), "want {w:?} in:\n{text}");
    }
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
    assert_says(&report, &["10-containerd-net.conflist", "10.88"]);
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
    let elsewhere =
        host.link_to_new_file(host.installed_conflist(), "elsewhere.conflist", CONFLIST);

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

// ----- Replacing flannel: --replace-conflist ------------------------------------------------

#[test]
fn replace_moves_only_the_named_config_aside_by_rename() {
    let host = Host::with_flannel();
    // Foreign configs nobody named: left exactly where they are, shadowing or not.
    fs::write(host.conf_dir.join("00-other.conf"), "{}").expect("write");
    fs::write(host.conf_dir.join("87-podman-bridge.conflist"), "{}").expect("write");
    let inode = fs::metadata(host.conf_dir.join(FLANNEL_CONFLIST))
        .expect("stat")
        .ino();

    let report = install(&host.replacing_flannel()).expect("install");

    assert_eq!(report.replaced.len(), 1);
    assert_eq!(
        report.replaced[0].path,
        host.conf_dir.join(FLANNEL_CONFLIST)
    );
    assert_eq!(report.replaced[0].aside, host.conf_dir.join(FLANNEL_ASIDE));
    assert_eq!(report.replaced[0].action, ReplaceAction::MovedAside);
    assert_eq!(
        dir_names(&host.conf_dir),
        vec![
            "00-other.conf",
            FLANNEL_ASIDE,
            DEFAULT_CONFLIST_NAME,
            "87-podman-bridge.conflist"
        ]
    );
    // The same file, renamed: nothing copied, nothing lost, restorable with one `mv`.
    let aside = host.conf_dir.join(FLANNEL_ASIDE);
    assert_eq!(fs::metadata(&aside).expect("stat").ino(), inode);
    assert_eq!(fs::read_to_string(&aside).expect("read"), FLANNEL);
    // Only the config nobody named is still warned about.
    let warned: Vec<&PathBuf> = report
        .warnings
        .iter()
        .map(|InstallWarning::ForeignConfigFirst { path, .. }| path)
        .collect();
    assert_eq!(warned, vec![&host.conf_dir.join("00-other.conf")]);
    assert_says(&report, &[FLANNEL_ASIDE, "moved aside"]);
}

#[test]
fn replace_is_idempotent_on_a_second_run() {
    let host = Host::with_flannel();
    install(&host.replacing_flannel()).expect("first install");
    let before = dir_names(&host.conf_dir);

    let report = install(&host.replacing_flannel()).expect("second install");

    assert_eq!(report.replaced[0].action, ReplaceAction::AlreadyAside);
    assert!(!report.changed(), "{report}");
    assert!(report.to_string().contains("nothing changed"), "{report}");
    assert_eq!(dir_names(&host.conf_dir), before);
    assert_eq!(host.conf(FLANNEL_ASIDE), FLANNEL);
}

#[test]
fn replace_of_a_config_that_is_not_there_changes_nothing() {
    let host = Host::new();
    let report = install(&host.replacing_flannel()).expect("install");
    assert_eq!(report.replaced[0].action, ReplaceAction::Absent);
    assert_eq!(dir_names(&host.conf_dir), vec![DEFAULT_CONFLIST_NAME]);
}

#[test]
fn replace_again_after_its_owner_rewrote_it_identically_and_refuses_a_different_one() {
    let host = Host::with_flannel();
    install(&host.replacing_flannel()).expect("install");
    // flannel's init container, still running somewhere, writes its conflist again.
    fs::write(host.conf_dir.join(FLANNEL_CONFLIST), FLANNEL).expect("rewrite");
    let report = install(&host.replacing_flannel()).expect("rerun");
    assert_eq!(report.replaced[0].action, ReplaceAction::MovedAsideAgain);
    assert!(report.changed());
    assert_eq!(
        dir_names(&host.conf_dir),
        vec![FLANNEL_ASIDE, DEFAULT_CONFLIST_NAME]
    );

    // A different one: keeping either would lose the other, so nothing moves.
    let other = FLANNEL.replace("0.3.1", "1.0.0");
    fs::write(host.conf_dir.join(FLANNEL_CONFLIST), &other).expect("rewrite");
    let err = install(&host.replacing_flannel()).expect_err("must refuse");
    match &err {
        InstallError::ReplaceConflict { path, aside } => {
            assert_eq!(path, &host.conf_dir.join(FLANNEL_CONFLIST));
            assert_eq!(aside, &host.conf_dir.join(FLANNEL_ASIDE));
        }
        other => panic!("expected ReplaceConflict, got {other:?}"),
    }
    assert!(err.to_string().contains("DaemonSet"), "{err}");
    assert_eq!(host.conf(FLANNEL_CONFLIST), other);
    assert_eq!(host.conf(FLANNEL_ASIDE), FLANNEL);
}

#[test]
fn replace_refuses_paths_our_own_conflist_and_non_configs_before_writing() {
    let host = Host::with_flannel();
    let outside = host.image.join("victim.conf");
    fs::write(&outside, "{}").expect("write");
    for name in [
        "../image/victim.conf",
        "sub/10-flannel.conflist",
        "..",
        outside.to_str().expect("utf-8 path"),
        DEFAULT_CONFLIST_NAME,
        FLANNEL_ASIDE,
        "10-flannel.conflist.bak",
    ] {
        let mut opts = host.options();
        opts.replace_conflists = vec![FLANNEL_CONFLIST.into(), name.into()];
        match install(&opts) {
            Err(InstallError::InvalidReplaceName { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name:?}: expected InvalidReplaceName, got {other:?}"),
        }
    }
    // Refused before the first write: not even the valid name was acted on.
    assert_eq!(dir_names(&host.conf_dir), vec![FLANNEL_CONFLIST]);
    assert!(outside.is_file());
    assert!(!host.installed_plugin().exists());
}

#[test]
fn replace_moves_a_symlinked_config_as_a_link_and_refuses_a_directory() {
    let host = Host::new();
    let target = host.image.join("flannel-real.conflist");
    fs::write(&target, FLANNEL).expect("write");
    std::os::unix::fs::symlink(&target, host.conf_dir.join(FLANNEL_CONFLIST)).expect("symlink");
    install(&host.replacing_flannel()).expect("install");
    let aside = host.conf_dir.join(FLANNEL_ASIDE);
    assert!(fs::symlink_metadata(&aside)
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&target).expect("read"), FLANNEL);

    let host = Host::new();
    fs::create_dir(host.conf_dir.join(FLANNEL_CONFLIST)).expect("mkdir");
    assert!(matches!(
        install(&host.replacing_flannel()),
        Err(InstallError::ReplaceNotAFile { .. })
    ));
}

#[test]
fn without_replace_foreign_configs_are_left_alone() {
    let host = Host::with_flannel();
    let report = install(&host.options()).expect("install");
    assert!(report.replaced.is_empty());
    assert_eq!(
        dir_names(&host.conf_dir),
        vec![FLANNEL_CONFLIST, DEFAULT_CONFLIST_NAME]
    );
    assert_eq!(host.conf(FLANNEL_CONFLIST), FLANNEL);
    // Still said loudly, now with the way out.
    assert_says(&report, &[FLANNEL_CONFLIST, "--replace-conflist"]);
}

// ----- uninstall-cni ------------------------------------------------------------------------

#[test]
fn uninstall_removes_what_install_wrote_and_puts_flannel_back() {
    let host = Host::with_flannel();
    fs::write(host.conf_dir.join("99-loopback.conf"), "{}").expect("write");
    install(&host.replacing_flannel()).expect("install");

    let report = uninstall(&host.uninstall_options()).expect("uninstall");

    assert_eq!(
        report.conflist,
        (host.installed_conflist(), Removal::Removed)
    );
    assert_eq!(report.plugin, (host.installed_plugin(), Removal::Removed));
    assert_eq!(report.restored.len(), 1);
    assert!(report.restored[0].restored);
    assert!(report.changed());
    // The node as flannel left it: its conflist back (same bytes), other plugins untouched.
    assert_eq!(
        dir_names(&host.conf_dir),
        vec![FLANNEL_CONFLIST, "99-loopback.conf"]
    );
    assert_eq!(host.conf(FLANNEL_CONFLIST), FLANNEL);
    assert_eq!(
        dir_names(&host.bin_dir),
        vec!["bridge", "flannel", "portmap"]
    );
    assert_says(&report, &["restored", FLANNEL_CONFLIST]);
}

#[test]
fn uninstall_twice_finds_nothing_the_second_time() {
    let host = Host::with_flannel();
    install(&host.replacing_flannel()).expect("install");
    uninstall(&host.uninstall_options()).expect("first");
    let names = dir_names(&host.conf_dir);

    let report = uninstall(&host.uninstall_options()).expect("second");

    assert!(!report.changed(), "{report}");
    assert_eq!(report.conflist.1, Removal::Absent);
    assert_eq!(report.plugin.1, Removal::Absent);
    assert!(report.restored.is_empty());
    assert!(
        report.to_string().contains("nothing of trellis's"),
        "{report}"
    );
    assert_eq!(dir_names(&host.conf_dir), names);
}

#[test]
fn uninstall_leaves_a_conflist_of_our_name_that_is_not_ours() {
    let host = Host::new();
    install(&host.options()).expect("install");
    // Someone put another network's config under our name.
    fs::write(host.installed_conflist(), FLANNEL).expect("overwrite");

    let report = uninstall(&host.uninstall_options()).expect("uninstall");

    assert!(matches!(report.conflist.1, Removal::NotOurs(_)), "{report}");
    assert_eq!(
        fs::read_to_string(host.installed_conflist()).expect("read"),
        FLANNEL
    );
    // The plugin nothing calls any more is still ours to remove.
    assert_eq!(report.plugin.1, Removal::Removed);
}

#[test]
fn uninstall_keeps_the_plugin_while_another_config_calls_it() {
    let host = Host::new();
    install(&host.options()).expect("install");
    let custom = host.conf_dir.join("20-custom.conflist");
    fs::write(&custom, CONFLIST.replace("cbr0", "custom")).expect("write");

    let report = uninstall(&host.uninstall_options()).expect("uninstall");

    assert_eq!(report.conflist.1, Removal::Removed);
    assert_eq!(report.plugin.1, Removal::StillUsedBy(custom.clone()));
    assert!(host.installed_plugin().is_file());
    assert!(custom.is_file());
}

#[test]
fn uninstall_never_restores_over_a_config_its_owner_wrote_again() {
    let host = Host::with_flannel();
    install(&host.replacing_flannel()).expect("install");
    let newer = FLANNEL.replace("0.3.1", "1.0.0");
    fs::write(host.conf_dir.join(FLANNEL_CONFLIST), &newer).expect("rewrite");

    let report = uninstall(&host.uninstall_options()).expect("uninstall");

    assert_eq!(report.restored.len(), 1);
    assert!(!report.restored[0].restored);
    assert_eq!(host.conf(FLANNEL_CONFLIST), newer);
    assert_eq!(host.conf(FLANNEL_ASIDE), FLANNEL);
    assert!(report.to_string().contains("compare them"), "{report}");
}

#[test]
fn uninstall_can_keep_the_replaced_configs_aside() {
    let host = Host::with_flannel();
    install(&host.replacing_flannel()).expect("install");
    let mut opts = host.uninstall_options();
    opts.restore_replaced = false;

    let report = uninstall(&opts).expect("uninstall");

    assert!(report.restored.is_empty());
    assert_eq!(dir_names(&host.conf_dir), vec![FLANNEL_ASIDE]);
}

#[test]
fn uninstall_leaves_links_in_our_places_and_tolerates_missing_dirs() {
    let host = Host::new();
    host.link_to_new_file(host.installed_plugin(), "elsewhere", PLUGIN);
    std::os::unix::fs::symlink(host.image.join("cni-conf.json"), host.installed_conflist())
        .expect("symlink");

    let report = uninstall(&host.uninstall_options()).expect("uninstall");

    // install-cni writes regular files only, so a link there is someone else's.
    assert!(matches!(report.conflist.1, Removal::NotOurs(_)), "{report}");
    assert!(matches!(report.plugin.1, Removal::NotOurs(_)), "{report}");
    assert!(fs::symlink_metadata(host.installed_plugin()).is_ok());

    let mut opts = host.uninstall_options();
    opts.conf_dir = host.image.join("no/such/net.d");
    opts.bin_dir = host.image.join("no/such/bin");
    let report = uninstall(&opts).expect("nothing there is nothing to do");
    assert!(!report.changed());
}
