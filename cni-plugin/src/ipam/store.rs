//! host-local's directory layout: `<dataDir>/<network>/<ip>` holding
//! `<containerID>\r\n<ifname>`, `last_reserved_ip.<set>`, and `lock`
//! (flock) serializing every plugin process on the node.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::spec::error::{io_error, CniError};

const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ip: IpAddr,
    pub container_id: String,
    /// Empty for records written by host-local before it stored ifnames.
    pub ifname: String,
}

impl Record {
    pub fn matches(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && (self.ifname == ifname || self.ifname.is_empty())
    }
}

/// An open, locked store. The lock is held until the value is dropped,
/// which keeps concurrent ADDs on one node from taking the same address.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, CniError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                io_error(
                    format_args!("cannot create IPAM directory {}", dir.display()),
                    e,
                )
            })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| {
                io_error(
                    format_args!("cannot open IPAM lock {}", lock_path.display()),
                    e,
                )
            })?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_error(
                    format_args!("cannot lock {}", lock_path.display()),
                    err,
                ));
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every address record in the store. Files that are not named like an
    /// IP address (the lock, last_reserved_ip.N, strays) are not records.
    pub fn records(&self) -> Result<Vec<Record>, CniError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| io_error(format_args!("cannot list {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            // A record we cannot read still occupies its address.
            let (container_id, ifname) = read_nofollow(&entry.path())
                .map(|text| parse_record(&text))
                .unwrap_or_default();
            out.push(Record {
                ip,
                container_id,
                ifname,
            });
        }
        Ok(out)
    }

    pub fn taken(&self) -> Result<HashSet<IpAddr>, CniError> {
        Ok(self.records()?.into_iter().map(|r| r.ip).collect())
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r.matches(container_id, ifname))
            .map(|r| r.ip)
            .collect())
    }

    /// Claim `ip`; false when another record already holds it.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, CniError> {
        let path = self.dir.join(ip.to_string());
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(io_error(
                    format_args!("cannot create {}", path.display()),
                    e,
                ))
            }
        };
        let body = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        if let Err(e) = f.write_all(body.as_bytes()) {
            let _ = std::fs::remove_file(&path);
            return Err(io_error(format_args!("cannot write {}", path.display()), e));
        }
        if let Err(e) = self.write_small(&format!("{LAST_RESERVED_PREFIX}{set}"), &ip.to_string()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(true)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        read_nofollow(&self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Remove every record of this attachment; returns what was released.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let mut released = Vec::new();
        for r in self.records()? {
            if r.matches(container_id, ifname) {
                self.remove(r.ip)?;
                released.push(r.ip);
            }
        }
        Ok(released)
    }

    pub fn remove(&self, ip: IpAddr) -> Result<(), CniError> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(
                format_args!("cannot remove {}", path.display()),
                e,
            )),
        }
    }

    fn write_small(&self, name: &str, content: &str) -> Result<(), CniError> {
        let path = self.dir.join(name);
        let result = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()));
        result.map_err(|e| io_error(format_args!("cannot write {}", path.display()), e))
    }
}

/// Never follow a symlink planted in the store: a record is a plain file.
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut s = String::new();
    // Records are tiny; a huge file is not ours, read only its head.
    (&mut f).take(4096).read_to_string(&mut s)?;
    Ok(s)
}

fn parse_record(text: &str) -> (String, String) {
    let text = text.trim();
    match text
        .split_once(LINE_BREAK)
        .or_else(|| text.split_once('\n'))
    {
        Some((id, ifname)) => (id.trim().to_string(), ifname.trim().to_string()),
        None => (text.to_string(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_writes_host_local_format() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cbr0")).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).unwrap());
        assert!(!s.reserve(ip("10.0.0.2"), "other", "eth0", 0).unwrap());
        let body = std::fs::read_to_string(d.path().join("cbr0/10.0.0.2")).unwrap();
        assert_eq!(body, "abc\r\neth0");
        assert_eq!(
            std::fs::read_to_string(d.path().join("cbr0/last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        assert!(d.path().join("cbr0/lock").exists());
        assert_eq!(s.last_reserved(0), Some(ip("10.0.0.2")));
    }

    #[test]
    fn find_and_release_by_attachment_including_legacy_records() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).unwrap();
        s.reserve(ip("10.0.0.3"), "abc", "net1", 0).unwrap();
        std::fs::write(d.path().join("10.0.0.4"), "abc").unwrap(); // pre-ifname host-local
        assert_eq!(s.find("abc", "eth0").unwrap().len(), 2);
        let mut rel = s.release("abc", "eth0").unwrap();
        rel.sort();
        assert_eq!(rel, vec![ip("10.0.0.2"), ip("10.0.0.4")]);
        assert_eq!(s.find("abc", "net1").unwrap(), vec![ip("10.0.0.3")]);
        assert!(s.release("abc", "eth0").unwrap().is_empty());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        let s = Store::open(d.path()).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("10.0.0.9")).unwrap();
        assert!(!s.reserve(ip("10.0.0.9"), "abc", "eth0", 0).unwrap());
        std::os::unix::fs::symlink(&target, d.path().join("last_reserved_ip.0")).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).is_err());
        assert!(
            !d.path().join("10.0.0.2").exists(),
            "a failed reserve leaves no record"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn non_ip_files_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        assert!(s.records().unwrap().is_empty());
    }
}
