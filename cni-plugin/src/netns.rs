//! Network namespaces: validate a netns path, and open a netlink handle
//! whose socket lives inside another namespace.
//!
//! A netlink socket belongs to the namespace it was created in, for its
//! whole life. So we switch this thread in, create the socket, and switch
//! straight back: everything else (files, the IPAM store) keeps running in
//! the host namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::spec::error::{invalid_env, CniError, ErrorCode};

/// statfs magic of nsfs, the filesystem of /proc/*/ns/* and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// ioctl(NS_GET_NSTYPE): which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open a namespace path and make sure it really is a network namespace.
    pub fn open(path: &Path) -> Result<NetNs, CniError> {
        let file = File::open(path).map_err(|e| {
            invalid_env(format!("cannot open netns {}: {e}", path.display()))
                .with_details("CNI_NETNS must name a network namespace, e.g. /var/run/netns/NAME")
        })?;
        let st = nix::sys::statfs::fstatfs(file.as_fd())
            .map_err(|e| invalid_env(format!("cannot stat netns {}: {e}", path.display())))?;
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(invalid_env(format!(
                "{} is not a network namespace (not an nsfs file)",
                path.display()
            )));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype != libc::CLONE_NEWNET {
            return Err(invalid_env(format!(
                "{} is a namespace, but not a network namespace",
                path.display()
            )));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A netlink handle operating inside this namespace. Must be called
    /// from within a Tokio runtime (the connection task is spawned on it).
    pub fn netlink(&self) -> Result<rtnetlink::Handle, CniError> {
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| CniError::new(ErrorCode::Io, format!("cannot open own netns: {e}")))?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                format!("cannot enter netns {}: {e}", self.path.display()),
            )
        })?;
        let conn = rtnetlink::new_connection();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing would apply host changes inside the pod: stop here.
            eprintln!("trellis: fatal: cannot return to the host netns: {e}");
            std::process::abort();
        }
        let (connection, handle, _) = conn.map_err(|e| {
            CniError::new(
                ErrorCode::Netlink,
                format!("cannot open netlink socket in {}: {e}", self.path.display()),
            )
        })?;
        tokio::spawn(connection);
        Ok(handle)
    }
}

/// A netlink handle in the namespace this process runs in.
pub fn host_netlink() -> Result<rtnetlink::Handle, CniError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| {
        CniError::new(
            ErrorCode::Netlink,
            format!("cannot open netlink socket: {e}"),
        )
    })?;
    tokio::spawn(connection);
    Ok(handle)
}
