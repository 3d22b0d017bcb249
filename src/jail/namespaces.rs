//! Namespaces: the worker gets its own mount, network, IPC, UTS and PID
//! namespaces. Its filesystem becomes an empty read-only tmpfs (the binary
//! is already mapped, the snapshot arrives as a descriptor, so nothing on
//! the host's filesystem is needed after exec); its network has only a
//! loopback device that is down; its hostname is `webtask`.
//!
//! The PID namespace is made here, while the process is privileged, but a
//! process only enters it through a fork: see [`super::pidns`].

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, sethostname};

/// Where the empty root is built before pivoting into it; exists on any
/// Linux host and is only touched inside the new mount namespace.
const STAGING: &str = "/tmp";

pub fn enter() -> Result<String, String> {
    let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID;
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    sethostname("webtask").map_err(|e| format!("sethostname: {e}"))?;
    empty_root().map_err(|e| format!("empty root: {e}"))?;
    Ok("mount (empty read-only root), net (lo only), ipc, uts, pid".into())
}

fn empty_root() -> nix::Result<()> {
    let none: Option<&str> = None;
    // Nothing we mount from here on propagates back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    mount(Some("tmpfs"), STAGING, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("size=4k,mode=0555"))?;
    let old = format!("{STAGING}/.old");
    // The tmpfs is read-only for everyone but root; create the pivot point.
    nix::unistd::mkdir(old.as_str(), nix::sys::stat::Mode::from_bits_truncate(0o000))?;
    pivot_root(STAGING, old.as_str())?;
    chdir("/")?;
    umount2("/.old", MntFlags::MNT_DETACH)?;
    std::fs::remove_dir("/.old").map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(none, "/", none, ro, none)?;
    Ok(())
}
