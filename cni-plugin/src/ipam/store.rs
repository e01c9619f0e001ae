//! host-local's directory layout: `<dataDir>/<network>/<ip>` holding
//! `<containerID>\r\n<ifname>`, `last_reserved_ip.<set>`, and `lock`
//! (flock) serializing every plugin process on the node.
//!
//! File safety. The plugin runs as root in the host's mount namespace, and
//! the store may be reachable by less trusted writers (a hostPath mounted
//! into some pod, a careless chmod). So everything below the network
//! directory is reached through that directory's descriptor (openat,
//! unlinkat) with O_NOFOLLOW: a symlink planted at any name, or the network
//! directory itself swapped for a symlink, can never redirect a create,
//! write or truncate outside the store; the plugin refuses with an error
//! naming the file instead. The configured dataDir path itself is the
//! operator's choice and is used as given.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::spec::error::{io_error, CniError, ErrorCode};

/// How long a plugin run waits for the store lock unless the config says otherwise
/// (`ipamLockTimeoutMs`): far above the milliseconds a run holds it, even with dozens of
/// runs queued on a loaded node, and far below kubelet's 2-minute runtime request timeout,
/// so a stuck holder turns into a retryable error instead of a hung pod sandbox.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The longest sleep between two attempts at a held lock.
const MAX_LOCK_POLL: Duration = Duration::from_millis(16);

const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";

/// host-local's modes. Records hold only container IDs and addresses, which
/// node monitoring and operators may read; only root may write, so no other
/// user can plant or remove a record. (umask can only narrow these.)
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// Never follow a trailing symlink; never block on a planted FIFO; never
/// leak the descriptor into the reaper child.
fn base_flags() -> OFlag {
    OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

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
    fd: OwnedFd,
    _lock: File,
}

fn refuse(path: &Path, why: &str) -> CniError {
    CniError::new(
        ErrorCode::Io,
        format!("refusing to use {}: {why}", path.display()),
    )
    .with_details(
        "the IPAM store must hold only files the plugin made; someone else wrote here: inspect and remove it, and check who can write to the dataDir",
    )
}

impl Store {
    /// Open and lock the store, waiting at most `lock_wait` for another run to release it.
    pub fn open(dir: &Path, lock_wait: Duration) -> Result<Store, CniError> {
        let (parent, name) = match (dir.parent(), dir.file_name()) {
            (Some(p), Some(n)) => (
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                n,
            ),
            _ => {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("IPAM directory {} has no parent", dir.display()),
                ))
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(parent)
            .map_err(|e| {
                io_error(
                    format_args!("cannot create IPAM directory {}", parent.display()),
                    e,
                )
            })?;
        let parent_fd = nix::fcntl::open(
            parent,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error(format_args!("cannot open {}", parent.display()), e.into()))?;
        match mkdirat(&parent_fd, name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(io_error(
                    format_args!("cannot create IPAM directory {}", dir.display()),
                    e.into(),
                ))
            }
        }
        let fd = match openat(
            &parent_fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | base_flags(),
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let is_link = fstatat(&parent_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| file_type(&st) == SFlag::S_IFLNK);
                return Err(refuse(
                    dir,
                    if is_link {
                        "it is a symbolic link"
                    } else {
                        "it is not a directory"
                    },
                ));
            }
            Err(e) => {
                return Err(io_error(
                    format_args!("cannot open IPAM directory {}", dir.display()),
                    e.into(),
                ))
            }
        };
        let st = fstat(&fd)
            .map_err(|e| io_error(format_args!("cannot stat {}", dir.display()), e.into()))?;
        // Whoever else may write here could plant records or swap names
        // between our checks and uses.
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if st.st_uid != euid {
            return Err(refuse(
                dir,
                &format!(
                    "it is owned by uid {}, not by the plugin's uid {euid}",
                    st.st_uid
                ),
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(refuse(
                dir,
                &format!(
                    "its mode {:o} lets others than its owner write there",
                    st.st_mode & 0o7777
                ),
            ));
        }
        let lock_path = dir.join("lock");
        let lock = open_file(&fd, &lock_path, "lock", OFlag::O_WRONLY | OFlag::O_CREAT)?;
        require_plain_file(&lock, &lock_path, false)?;
        lock_within(&lock, &lock_path, lock_wait)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            fd,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every address record in the store. Files that are not named like an
    /// IP address (the lock, last_reserved_ip.N, strays) are not records.
    ///
    /// An empty record is what a plugin killed between creating the file and
    /// writing its owner leaves behind (host-local can leave the same). Every
    /// writer holds the lock we hold now, so no live process is about to fill
    /// it: it is removed here, or the address would leak for good.
    pub fn records(&self) -> Result<Vec<Record>, CniError> {
        let mut listing = openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(Dir::from_fd)
        .map_err(|e| io_error(format_args!("cannot list {}", self.dir.display()), e.into()))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| {
                io_error(format_args!("cannot list {}", self.dir.display()), e.into())
            })?;
            if let Some(ip) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|n| n.parse::<IpAddr>().ok())
            {
                names.push(ip);
            }
        }
        let mut out = Vec::new();
        for ip in names {
            match self.read_small(&ip.to_string()) {
                Ok(text) if text.trim().is_empty() => {
                    self.remove(ip)?;
                }
                Ok(text) => {
                    let (container_id, ifname) = parse_record(&text);
                    out.push(Record {
                        ip,
                        container_id,
                        ifname,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // A record we cannot read (a planted symlink, a directory)
                // still occupies its address.
                Err(_) => out.push(Record {
                    ip,
                    container_id: String::new(),
                    ifname: String::new(),
                }),
            }
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

    /// Claim `ip`; false when another record (or anything else) already
    /// holds the name. O_EXCL never follows a symlink either.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, CniError> {
        let name = ip.to_string();
        let path = self.dir.join(&name);
        let mut f = match openat(
            &self.fd,
            name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | base_flags(),
            Mode::from_bits_truncate(FILE_MODE),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::EEXIST) => return Ok(false),
            Err(e) => {
                return Err(io_error(
                    format_args!("cannot create {}", path.display()),
                    e.into(),
                ))
            }
        };
        let body = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        if let Err(e) = f.write_all(body.as_bytes()) {
            let _ = self.remove(ip);
            return Err(io_error(format_args!("cannot write {}", path.display()), e));
        }
        if let Err(e) = self.write_small(&format!("{LAST_RESERVED_PREFIX}{set}"), &name) {
            let _ = self.remove(ip);
            return Err(e);
        }
        Ok(true)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        self.read_small(&format!("{LAST_RESERVED_PREFIX}{set}"))
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

    /// unlinkat removes the name itself, never what a symlink points to.
    pub fn remove(&self, ip: IpAddr) -> Result<(), CniError> {
        let name = ip.to_string();
        match unlinkat(&self.fd, name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_error(
                format_args!("cannot remove {}", self.dir.join(&name).display()),
                e.into(),
            )),
        }
    }

    /// Replace a small file's content. Not O_TRUNC: a planted hard link to a
    /// file elsewhere must be refused before anything is cut. A kill between
    /// the truncate and the (single, tiny) write leaves an empty file, which
    /// readers take as "no hint".
    fn write_small(&self, name: &str, content: &str) -> Result<(), CniError> {
        let path = self.dir.join(name);
        let mut f = open_file(&self.fd, &path, name, OFlag::O_WRONLY | OFlag::O_CREAT)?;
        require_plain_file(&f, &path, true)?;
        f.set_len(0)
            .and_then(|()| f.write_all(content.as_bytes()))
            .map_err(|e| io_error(format_args!("cannot write {}", path.display()), e))
    }

    fn read_small(&self, name: &str) -> std::io::Result<String> {
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | base_flags(),
            Mode::empty(),
        )?;
        let f = File::from(fd);
        let st = fstat(&f)?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut s = String::new();
        // Records are tiny; a huge file is not ours, read only its head.
        f.take(4096).read_to_string(&mut s)?;
        Ok(s)
    }
}

/// Take the lock, polling while another process holds it, until `wait` has passed. A
/// blocking flock would wait forever behind a holder that never lets go (issue 10: an ADD
/// spinning with the lock held stalled every ADD, DEL and GC of the network), and kubelet's
/// runtime must get an answer it can retry instead. Holders keep the lock for milliseconds,
/// so short sleeps that double up to [`MAX_LOCK_POLL`] cost a waiter little.
fn lock_within(lock: &File, path: &Path, wait: Duration) -> Result<(), CniError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if try_lock(lock)
            .map_err(|e| io_error(format_args!("cannot lock {}", path.display()), e))?
        {
            return Ok(());
        }
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "gave up after {wait:?} waiting for the IPAM lock {}",
                    path.display()
                ),
            )
            .with_details(
                "another plugin run on this node (trellis or host-local: ADD, DEL or GC) holds it; if none is running, find the holder with `fuser -v` on the lock file. The wait is the config's ipamLockTimeoutMs",
            ));
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_LOCK_POLL);
    }
}

/// One non-blocking attempt: Ok(false) while someone else holds the lock.
fn try_lock(lock: &File) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn open_file(dir: &OwnedFd, path: &Path, name: &str, flags: OFlag) -> Result<File, CniError> {
    match openat(
        dir,
        name,
        flags | base_flags(),
        Mode::from_bits_truncate(FILE_MODE),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::ELOOP) => Err(refuse(path, "it is a symbolic link")),
        Err(e) => Err(io_error(
            format_args!("cannot open {}", path.display()),
            e.into(),
        )),
    }
}

/// A regular file, and for files we rewrite, not a hard link to anything.
fn require_plain_file(f: &File, path: &Path, single_link: bool) -> Result<(), CniError> {
    let st = fstat(f.as_fd())
        .map_err(|e| io_error(format_args!("cannot stat {}", path.display()), e.into()))?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(refuse(path, "it is not a regular file"));
    }
    if single_link && st.st_nlink != 1 {
        return Err(refuse(
            path,
            &format!(
                "it has {} hard links, so writing it would change a file elsewhere",
                st.st_nlink
            ),
        ));
    }
    Ok(())
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

    const WAIT: Duration = DEFAULT_LOCK_WAIT;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_writes_host_local_format() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("cbr0"), WAIT).unwrap();
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
        let s = Store::open(d.path(), WAIT).unwrap();
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

    /// A file outside the store holding "keep", for a link planted in the store to point at.
    fn victim() -> (tempfile::TempDir, std::path::PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        (outside, target)
    }

    #[test]
    fn symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let (_outside, target) = victim();
        let s = Store::open(d.path(), WAIT).unwrap();
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
    fn symlinked_network_dir_is_refused_and_nothing_is_written_through_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("cbr0")).unwrap();
        let err = Store::open(&d.path().join("cbr0"), WAIT)
            .err()
            .expect("refused");
        assert_eq!(err.code, 5);
        assert!(err.msg.contains("symbolic link"), "{}", err.msg);
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn symlinked_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (_outside, target) = victim();
        std::os::unix::fs::symlink(&target, d.path().join("lock")).unwrap();
        let err = Store::open(d.path(), WAIT).err().expect("refused");
        assert!(
            err.msg.contains("lock") && err.msg.contains("symbolic link"),
            "{}",
            err.msg
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn hard_linked_last_reserved_is_refused_before_truncation() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), WAIT).unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "precious").unwrap();
        std::fs::hard_link(&target, d.path().join("last_reserved_ip.0")).unwrap();
        let err = s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).unwrap_err();
        assert!(err.msg.contains("hard links"), "{}", err.msg);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(!d.path().join("10.0.0.2").exists());
    }

    #[test]
    fn writable_by_others_network_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let net = d.path().join("cbr0");
        std::fs::create_dir(&net).unwrap();
        std::fs::set_permissions(&net, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Store::open(&net, WAIT).err().expect("refused");
        assert!(err.msg.contains("777"), "{}", err.msg);
    }

    #[test]
    fn created_files_and_dirs_are_not_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let net = d.path().join("data/cbr0");
        let s = Store::open(&net, WAIT).unwrap();
        s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).unwrap();
        for (p, want) in [
            (d.path().join("data"), 0o755),
            (net.clone(), 0o755),
            (net.join("lock"), 0o644),
            (net.join("10.0.0.2"), 0o644),
            (net.join("last_reserved_ip.0"), 0o644),
        ] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            // umask may only take bits away.
            assert_eq!(mode & !want, 0, "{}: {mode:o}", p.display());
            assert_eq!(mode & 0o022, 0, "{}: {mode:o}", p.display());
        }
    }

    #[test]
    fn empty_record_left_by_a_killed_plugin_is_swept() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), WAIT).unwrap();
        std::fs::write(d.path().join("10.0.0.7"), "").unwrap();
        s.reserve(ip("10.0.0.2"), "abc", "eth0", 0).unwrap();
        assert_eq!(s.taken().unwrap(), [ip("10.0.0.2")].into());
        assert!(!d.path().join("10.0.0.7").exists());
    }

    #[test]
    fn non_ip_files_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), WAIT).unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        assert!(s.records().unwrap().is_empty());
    }

    #[test]
    fn a_held_lock_is_answered_with_code_11_naming_the_lock_file() {
        let d = tempfile::tempdir().unwrap();
        let holder = Store::open(d.path(), WAIT).unwrap();
        let lock = d.path().join("lock").display().to_string();
        // Zero: one attempt; 30 ms: the polling path.
        for wait in [Duration::ZERO, Duration::from_millis(30)] {
            let err = Store::open(d.path(), wait).err().expect("the lock is held");
            assert_eq!(err.code, 11, "{err}");
            assert!(err.msg.contains(&lock), "{}", err.msg);
        }
        drop(holder);
        assert!(Store::open(d.path(), Duration::ZERO).is_ok());
    }

    #[test]
    fn a_waiting_open_gets_the_lock_once_the_holder_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let holder = Store::open(d.path(), WAIT).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(holder);
        });
        let waiter = Store::open(d.path(), Duration::from_secs(60));
        release.join().unwrap();
        assert!(waiter.is_ok(), "{:?}", waiter.err());
    }
}
