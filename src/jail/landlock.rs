//! Landlock: the worker may open, create, write or execute nothing at all
//! (after exec it needs no file: the snapshot arrives as a descriptor), may
//! neither bind nor connect TCP/UDP ports where the kernel's ABI covers
//! networks (≥ 4), and may not signal or reach abstract sockets outside its
//! own domain (ABI ≥ 6). Whatever the running kernel lacks is reported.

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, RulesetStatus, Scope,
    ABI,
};

/// The newest ABI this build knows; older kernels get what they support.
const ABI_WANTED: ABI = ABI::V10;

pub fn restrict() -> Result<String, String> {
    let err = |e: landlock::RulesetError| e.to_string();
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .map_err(err)?
        .handle_access(AccessNet::from_all(ABI_WANTED))
        .map_err(err)?
        .scope(Scope::from_all(ABI_WANTED))
        .map_err(err)?
        .create()
        .map_err(err)?
        // No rules: every handled access is denied.
        .restrict_self()
        .map_err(err)?;
    let abi = match status.landlock {
        landlock::LandlockStatus::Available { effective_abi, .. } => format!("{effective_abi:?}"),
        other => format!("{other:?}"),
    };
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(format!("ABI {abi}: no file access, no TCP/UDP bind or connect, scoped signals")),
        RulesetStatus::PartiallyEnforced => {
            Ok(format!("ABI {abi}: everything this kernel's ABI can deny is denied (newer ABIs add more)"))
        }
        RulesetStatus::NotEnforced => Err(format!("not enforced ({abi})")),
    }
}

/// The Landlock ABI the running kernel offers, for `webtask doctor`.
pub fn kernel_abi() -> Option<i32> {
    // SAFETY: the documented version query of landlock_create_ruleset(2).
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    (v > 0).then_some(v as i32)
}
