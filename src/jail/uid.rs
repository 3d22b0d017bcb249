//! A transient uid/gid per worker, with no supplementary groups: the
//! worker owns nothing on the host and shares an identity with no other
//! process. Dropping root this way also drops every capability.

use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

pub fn drop_to(uid: u32, gid: u32) -> Result<String, String> {
    if uid == 0 || gid == 0 {
        return Err("refusing uid/gid 0".into());
    }
    setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(g, g, g).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(u, u, u).map_err(|e| format!("setresuid: {e}"))?;
    // Paranoia: a setuid that silently kept root would be fatal to the jail.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err("could regain root after dropping it".into());
    }
    // Changing credentials clears the parent-death signal: set it again, so
    // the worker still dies with its node, and make sure the node is still
    // there (else it died in between and nobody would send the signal).
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    if nix::unistd::getppid() != parent || parent.as_raw() == 1 {
        return Err("the node is gone".into());
    }
    Ok(format!("uid={uid} gid={gid} groups=none"))
}

/// Where nodes record which transient ids are taken, host-wide.
const CLAIMS: &str = "/run/webtask/uids";

/// A transient id held by this node for one worker, host-wide: several
/// nodes on one host (a rolling restart overlaps two) may share a range
/// but never an id. The claim is an exclusive `flock` on a file named for
/// the id, so it ends when the worker's lease drops or the node dies,
/// however it dies; the empty files stay for the next claimant.
#[derive(Debug)]
pub struct Claim {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Claims the first id `base + offset` of `offsets` nobody else holds;
/// returns its offset with the claim, `Ok(None)` when all are held.
pub fn claim_first(base: u32, offsets: impl Iterator<Item = u32>) -> std::io::Result<Option<(u32, Claim)>> {
    for offset in offsets {
        if let Some(claim) = claim(base + offset)? {
            return Ok(Some((offset, claim)));
        }
    }
    Ok(None)
}

/// Claims `uid`; `Ok(None)` when another node holds it.
pub fn claim(uid: u32) -> std::io::Result<Option<Claim>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(CLAIMS)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(format!("{CLAIMS}/{uid}"))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Claim { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}
