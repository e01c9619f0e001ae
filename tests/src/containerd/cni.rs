//! The CNI side of a private containerd: a bin dir of symlinks (containerd
//! 1.6 takes a single `bin_dir`), a conf dir holding one conflist, and
//! finding the trellis plugin binary to put in it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Env var naming a prebuilt trellis plugin binary (hack/test.sh sets it);
/// without it, `locate_trellis_binary` builds the plugin with cargo.
pub const TRELLIS_BIN_ENV: &str = "TRELLIS_BIN";

#[derive(Debug, thiserror::Error)]
pub enum CniSetupError {
    #[error("CNI setup I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "plugin {0} not found (reference plugins: apt-get install containernetworking-plugins)"
    )]
    PluginMissing(PathBuf),
    #[error("{TRELLIS_BIN_ENV}={0} is not an executable file")]
    BadTrellisBin(PathBuf),
    #[error("cannot run cargo to build the trellis plugin: {0}")]
    CargoSpawn(#[source] io::Error),
    #[error("`cargo build -p trellis-cni --bin trellis` failed (status {status}); fix the build or set {TRELLIS_BIN_ENV}")]
    CargoFailed { status: std::process::ExitStatus },
    #[error("cargo built trellis-cni but reported no `trellis` executable")]
    NoExecutable,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CniSetupError + '_ {
    move |source| CniSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `dir/<name>` -> `target` for each plugin, checking the targets exist so a
/// missing plugin is reported here and not as a vague CNI failure later.
pub fn link_plugins(dir: &Path, plugins: &[(&str, &Path)]) -> Result<(), CniSetupError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for (name, target) in plugins {
        if !target.is_file() {
            return Err(CniSetupError::PluginMissing(target.to_path_buf()));
        }
        let link = dir.join(name);
        std::os::unix::fs::symlink(target, &link).map_err(io_err(&link))?;
    }
    Ok(())
}

/// Links the reference plugins `names` (from /usr/lib/cni) into `dir`.
pub fn link_reference_plugins(dir: &Path, names: &[&str]) -> Result<(), CniSetupError> {
    let targets: Vec<PathBuf> = names.iter().map(|n| reference_plugin(n)).collect();
    let links: Vec<(&str, &Path)> = names
        .iter()
        .copied()
        .zip(targets.iter().map(PathBuf::as_path))
        .collect();
    link_plugins(dir, &links)
}

/// The reference plugin `name` in /usr/lib/cni.
pub fn reference_plugin(name: &str) -> PathBuf {
    Path::new(REFERENCE_PLUGIN_DIR).join(name)
}

/// Writes the conflist atomically (temp file + rename): containerd watches
/// the conf dir and must never load a half-written file.
pub fn write_conflist(
    conf_dir: &Path,
    file_name: &str,
    conflist: &Value,
) -> Result<PathBuf, CniSetupError> {
    std::fs::create_dir_all(conf_dir).map_err(io_err(conf_dir))?;
    let path = conf_dir.join(file_name);
    let tmp = conf_dir.join(format!(".{file_name}.tmp"));
    let text = serde_json::to_vec_pretty(conflist).map_err(|e| CniSetupError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// The trellis plugin binary: `$TRELLIS_BIN` if set (it must then exist),
/// otherwise whatever `cargo build -p trellis-cni --bin trellis` produces in
/// the current target dir. Cargo cannot hand a binary of another package to
/// this crate's tests (`CARGO_BIN_EXE_*` is per package), hence the build.
pub fn locate_trellis_binary() -> Result<PathBuf, CniSetupError> {
    if let Some(path) = std::env::var_os(TRELLIS_BIN_ENV) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(CniSetupError::BadTrellisBin(path))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")));
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "trellis-cni",
            "--bin",
            "trellis",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(CniSetupError::CargoSpawn)?;
    if !out.status.success() {
        return Err(CniSetupError::CargoFailed { status: out.status });
    }
    executable_from_cargo_messages(&String::from_utf8_lossy(&out.stdout), "trellis")
        .ok_or(CniSetupError::NoExecutable)
}

/// The `executable` of the compiler-artifact message for binary `name`.
fn executable_from_cargo_messages(stdout: &str, name: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name)
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_binary_among_cargo_messages() {
        let out = r#"{"reason":"compiler-artifact","target":{"name":"trellis_cni","kind":["lib"]},"executable":null}
not json at all
{"reason":"compiler-artifact","target":{"name":"trellis","kind":["bin"]},"executable":"/t/debug/trellis"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_cargo_messages(out, "trellis"),
            Some(PathBuf::from("/t/debug/trellis"))
        );
        assert_eq!(executable_from_cargo_messages(out, "other"), None);
    }

    #[test]
    fn missing_plugin_is_reported_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err =
            link_plugins(&dir.path().join("bin"), &[("nope", &missing)]).expect_err("must fail");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn conflist_is_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let value = serde_json::json!({"cniVersion": "1.0.0", "name": "cbr0", "plugins": []});
        let path = write_conflist(dir.path(), "10-x.conflist", &value).expect("write");
        let back: Value =
            serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
        assert_eq!(back, value);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readdir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert_eq!(
            names,
            vec!["10-x.conflist".to_string()],
            "no temp file left"
        );
    }
}
