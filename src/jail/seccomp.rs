//! seccomp: an allowlist of the system calls a worker needs once it runs
//! (memory, threads, futexes, timers, epoll, I/O on descriptors it already
//! has). Everything else fails with EPERM: no execve, no fork (clone only
//! with CLONE_THREAD; clone3 answers ENOSYS so libc falls back to clone),
//! no sockets but AF_UNIX, no ptrace, no signals to anyone but itself, no
//! opening files. Synchronised to every thread of the process.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    apply_filter_all_threads, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const ALLOWED: &[libc::c_long] = &[
    // memory
    libc::SYS_mmap, libc::SYS_munmap, libc::SYS_mprotect, libc::SYS_mremap, libc::SYS_madvise, libc::SYS_brk,
    libc::SYS_pkey_alloc, libc::SYS_pkey_free, libc::SYS_pkey_mprotect, libc::SYS_membarrier, libc::SYS_msync,
    // threads and synchronisation
    libc::SYS_futex, libc::SYS_set_robust_list, libc::SYS_get_robust_list, libc::SYS_rseq, libc::SYS_set_tid_address,
    libc::SYS_exit, libc::SYS_exit_group, libc::SYS_sched_yield, libc::SYS_sched_getaffinity,
    libc::SYS_sched_getscheduler, libc::SYS_sched_getparam, libc::SYS_gettid, libc::SYS_getpid, libc::SYS_getppid,
    libc::SYS_getuid, libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getegid, libc::SYS_arch_prctl,
    // signals (delivery to itself only, see below)
    libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_sigaltstack,
    // time
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep, libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // event loop and descriptors it already holds
    libc::SYS_epoll_create1, libc::SYS_epoll_ctl, libc::SYS_epoll_wait, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2, libc::SYS_poll, libc::SYS_ppoll, libc::SYS_read, libc::SYS_write, libc::SYS_readv,
    libc::SYS_writev, libc::SYS_pread64, libc::SYS_close, libc::SYS_lseek,
    libc::SYS_fstat, libc::SYS_newfstatat, libc::SYS_statx, libc::SYS_dup, libc::SYS_dup3, libc::SYS_pipe2,
    libc::SYS_recvfrom, libc::SYS_recvmsg, libc::SYS_sendto, libc::SYS_sendmsg, libc::SYS_shutdown,
    libc::SYS_getsockopt, libc::SYS_getsockname, libc::SYS_getpeername,
    // information
    libc::SYS_getrandom, libc::SYS_uname, libc::SYS_getrusage, libc::SYS_sysinfo, libc::SYS_prlimit64,
    libc::SYS_getrlimit, libc::SYS_getcwd,
];

/// The two filters a worker installs, for the pid it has when it does.
struct Filters {
    pid: u32,
    clone3: BpfProgram,
    main: BpfProgram,
}

/// Filters compiled ahead of time by the zygote, for a worker that is
/// pid 1 of its own namespace (the usual case); every forked worker
/// inherits them instead of compiling its own.
static PRECOMPILED: OnceLock<Filters> = OnceLock::new();

/// Compiles the filters of a worker that will be pid 1 (see [`PRECOMPILED`]).
pub fn precompute() {
    if let Ok(filters) = compile(1) {
        let _ = PRECOMPILED.set(filters);
    }
}

fn compile(pid: u32) -> Result<Filters, String> {
    let main = allowlist(pid).map_err(|e| e.to_string())?;
    // A second filter turns clone3 into ENOSYS (its flags live in memory
    // a filter cannot read); with two filters the stricter answer wins.
    let clone3 = filter(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
    .map_err(|e| e.to_string())?;
    Ok(Filters { pid, clone3, main })
}

pub fn apply() -> Result<String, String> {
    let pid = std::process::id();
    let compiled;
    let filters = match PRECOMPILED.get().filter(|f| f.pid == pid) {
        Some(filters) => filters,
        None => {
            compiled = compile(pid)?;
            &compiled
        }
    };
    // The allowlist forbids seccomp(2) itself, so it goes last.
    apply_filter_all_threads(&filters.clone3).map_err(|e| e.to_string())?;
    apply_filter_all_threads(&filters.main).map_err(|e| e.to_string())?;
    Ok(format!("{} system calls allowed, the rest EPERM", ALLOWED.len() + 8))
}

fn allowlist(pid: u32) -> Result<BpfProgram, seccompiler::BackendError> {
    let pid = u64::from(pid);
    let eq = |arg: u8, value: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|s| (*s, vec![])).collect();
    // Threads, never processes.
    let thread = libc::CLONE_THREAD as u64;
    let masked = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(thread), thread)?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![masked])?]);
    rules.insert(libc::SYS_clone3, vec![]);
    // ioctl only to set a descriptor non-blocking or close-on-exec (no
    // terminal or device requests).
    let ioctls = [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX];
    rules.insert(libc::SYS_ioctl, ioctls.iter().map(|r| SeccompRule::new(vec![eq(1, *r)?])).collect::<Result<_, _>>()?);
    // fcntl for descriptor flags only (no F_SETOWN/F_SETSIG signal routing).
    let fcntls = [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL, libc::F_SETFL, libc::F_DUPFD_CLOEXEC];
    rules.insert(libc::SYS_fcntl, fcntls.iter().map(|c| SeccompRule::new(vec![eq(1, *c as u64)?])).collect::<Result<_, _>>()?);
    // prctl for thread names and memory-region names only.
    let prctls = [libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64, 0x5356_4d41 /* PR_SET_VMA */];
    rules.insert(libc::SYS_prctl, prctls.iter().map(|o| SeccompRule::new(vec![eq(0, *o)?])).collect::<Result<_, _>>()?);
    // Unix sockets only.
    rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![eq(0, libc::AF_UNIX as u64)?])?]);
    rules.insert(libc::SYS_socketpair, vec![SeccompRule::new(vec![eq(0, libc::AF_UNIX as u64)?])?]);
    // Signals to its own threads only (abort(), V8's own thread signals).
    rules.insert(libc::SYS_tgkill, vec![SeccompRule::new(vec![eq(0, pid)?])?]);
    let _ = rules.insert(libc::SYS_kill, vec![SeccompRule::new(vec![eq(0, pid)?])?]);
    filter(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow)
}

fn filter(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let arch: TargetArch = std::env::consts::ARCH.try_into()?;
    SeccompFilter::new(rules, mismatch, matched, arch)?.try_into()
}
