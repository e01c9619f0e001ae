//! The WireGuard private key file: flannel's `/run/flannel/wgkey` (`WIREGUARD_KEY_FILE`
//! overrides it), read when present, else made once with a fresh key (mode 0400), so a node
//! keeps its public key across agent restarts and its peers need no update.
//!
//! The file is made beside its final name and linked into place, which fails when another
//! process made it meanwhile (that key is used then): two agents never end up with two keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::wg_key::{WgKeyPair, WgSecret};

/// flannel's path, shared with it so a node taken over keeps its WireGuard identity.
pub const DEFAULT_PATH: &str = "/run/flannel/wgkey";

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the WireGuard key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the WireGuard key file {path} holds no key ({why}); remove it and a new key is made \
         (peers learn the new public key from this Node's annotation)"
    )]
    Bad { path: PathBuf, why: String },
    #[error("cannot write the WireGuard key file {path}: {source} (is its directory a writable hostPath?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a WireGuard key: the OS random source failed: {0}")]
    Random(String),
}

/// What [`load_or_create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the file.
    Existing,
    /// Made now and written to the file.
    Created,
}

/// The key in `path`, made first if there is none. A file readable by others than its owner
/// is used all the same (refusing it would change the node's identity), and reported.
pub fn load_or_create(path: &Path) -> Result<(WgKeyPair, Origin, Option<String>), KeyFileError> {
    match read(path)? {
        Some((key, warning)) => Ok((key, Origin::Existing, warning)),
        None => create(path).map(|k| (k, Origin::Created, None)),
    }
}

fn read(path: &Path) -> Result<Option<(WgKeyPair, Option<String>)>, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // A key is 44 characters; do not read a huge file someone put there.
    if meta.len() > 1024 {
        return Err(KeyFileError::Bad {
            path: path.to_path_buf(),
            why: format!("{} bytes", meta.len()),
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    // Not the decoder's words: they quote a character of what may be a secret.
    let key = WgSecret::parse(&text).map_err(|_| KeyFileError::Bad {
        path: path.to_path_buf(),
        why: "not 32 bytes in base64".to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "the WireGuard key file {} has mode {mode:o}: others than its owner can read the \
             node's private key (chmod 400 it)",
            path.display()
        )
    });
    Ok(Some((WgKeyPair::new(key), warning)))
}

fn create(path: &Path) -> Result<WgKeyPair, KeyFileError> {
    let write_err = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let key = WgSecret::generate().map_err(|e| KeyFileError::Random(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    // Left by a run that died mid-write (in a container the agent is always PID 1).
    let _ = fs::remove_file(&tmp);
    let written = write_new(&tmp, &key);
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(WgKeyPair::new(key)),
        // Made by someone else since we looked: theirs is the node's key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read(path)? {
            Some((k, _)) => Ok(k),
            None => Err(write_err(e)),
        },
        Err(e) => Err(write_err(e)),
    }
}

/// Writes a new file readable by its owner only (flannel's 0400), synced.
fn write_new(tmp: &Path, key: &WgSecret) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(tmp)?;
    f.write_all(key.to_base64().as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_read_back_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flannel/wgkey");
        let (made, origin, _) = load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Created);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let (again, origin, warning) = load_or_create(&path).unwrap();
        assert_eq!((again, origin, warning), (made, Origin::Existing, None));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_file_written_by_flannel_is_used_and_a_broken_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wgkey");
        // flannel writes the key without a newline; `wg genkey > f` adds one.
        fs::write(&path, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
        let (k, origin, warning) = load_or_create(&path).unwrap();
        assert_eq!(origin, Origin::Existing);
        assert_eq!(
            k.public.to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert!(warning.unwrap().contains("chmod 400"), "0644 is reported");
        fs::write(&path, "not a key").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("holds no key") && e.contains("remove it"), "{e}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "not a key",
            "left alone"
        );
    }
}
