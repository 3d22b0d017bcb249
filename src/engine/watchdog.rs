//! CPU-time enforcement from outside the isolate thread.
//!
//! Each isolate thread publishes, in a [`CpuGuard`], its thread CPU clock and
//! the CPU reading at which its oldest in-flight request started. One
//! watchdog thread per process reads those clocks and calls
//! `terminate_execution` on an isolate whose request ran past its budget;
//! the isolate thread then learns the reason from the guard. The hot path
//! pays two relaxed atomic stores per request and never takes a lock or
//! wakes the watchdog unless it is parked.
//!
//! The watchdog does not tick. A thread cannot use more CPU time than
//! wall time passes, so after a scan it sleeps until the soonest moment a
//! request could reach its budget (its budget less what it has used), and
//! never longer than half the smallest budget, so a request that starts
//! while it sleeps is seen before it can reach its own. A request that
//! ends in a millisecond never wakes it: with many processes each holding
//! a watchdog (one per worker), a fixed tick was thousands of wake-ups a
//! second on a busy machine.
//!
//! The stop only lands in JavaScript, at a check V8 makes on a loop's back
//! edge or a call; a loop that spends its time in ops (the Node shim's
//! sliced hashing, zlib, PBKDF2, RSA) reaches that check only every so many
//! rounds. So sliced ops ask [`stop_requested`] and return at once, without
//! progress, once their thread's isolate is being stopped: the shim's loop
//! then spins to V8's check within microseconds.
//!
//! CPU time is the isolate thread's: requests of one container running
//! concurrently in one isolate share it, and each is charged for the time
//! the thread spent since it started (since up to 20 µs before: the host
//! reuses a recent reading of the clock, see `host::CPU_READING_REUSE`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use deno_core::v8;

/// The shortest sleep between scans: how far a kill may overshoot a budget,
/// besides the scheduler's own latency.
const MIN_SLEEP: Duration = Duration::from_micros(250);
/// The longest sleep between scans, running or idle.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Time without any request in flight before the watchdog parks; until
/// then a request starting needs no wake-up.
const IDLE_BEFORE_PARK: Duration = Duration::from_millis(200);
/// CPU time an isolate thread may spend after its stop was requested before
/// the stop counts as one that cannot land (see [`on_overrun`]). A stop
/// lands within microseconds at V8's next check; only a long native
/// built-in (a typed array's sort of millions of elements) runs on.
const OVERRUN_GRACE: Duration = Duration::from_millis(100);
/// `kill_cpu` once the host has seen its kill: nothing left to land.
const LANDED: u64 = u64::MAX;

/// Why the watchdog (or the heap-limit callback) stopped an isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// `start_ns`: the CPU reading the limit was measured from.
    Cpu { limit_ms: u64, start_ns: u64 },
    Memory { limit_mb: u64 },
}

/// Shared between one isolate thread and the watchdog.
pub struct CpuGuard {
    clock: libc::clockid_t,
    limit_ns: u64,
    /// CPU clock reading (ns, +1 so that 0 means "idle") at which the oldest
    /// in-flight request started.
    oldest_start: AtomicU64,
    isolate: Mutex<Option<v8::IsolateHandle>>,
    kill: Mutex<Option<Kill>>,
    killed: AtomicBool,
    /// This thread's CPU clock when the stop was requested; [`LANDED`] once
    /// the host has seen it land.
    kill_cpu: AtomicU64,
}

/// What a process does with a stop that cannot land: see [`on_overrun`].
type OverrunHook = Box<dyn Fn(Kill, u64) + Send + Sync>;
static OVERRUN: OnceLock<OverrunHook> = OnceLock::new();

/// Sets, once per process, what happens when an isolate thread has run
/// [`OVERRUN_GRACE`] of CPU past a requested stop: V8 lands a stop only in
/// JavaScript, and a native built-in may run for seconds before it returns
/// there. The hook gets the kill and the CPU used, in ms, by the oldest
/// request (what a CPU limit is measured on); it runs on the watchdog
/// thread while the isolate thread still runs. A worker process reports
/// the limit and ends itself. Without a hook (an embedded engine, whose
/// threads cannot be stopped from outside) the overrun is logged and the
/// isolate thread runs on until the built-in returns.
pub fn on_overrun(hook: impl Fn(Kill, u64) + Send + Sync + 'static) {
    let _ = OVERRUN.set(Box::new(hook));
}

impl CpuGuard {
    /// A guard for the calling thread; must be created on the isolate thread.
    pub fn for_current_thread(limit_ms: u64) -> Arc<Self> {
        let guard = Arc::new(CpuGuard {
            clock: current_thread_clock(),
            limit_ns: limit_ms.saturating_mul(1_000_000),
            oldest_start: AtomicU64::new(0),
            isolate: Mutex::new(None),
            kill: Mutex::new(None),
            killed: AtomicBool::new(false),
            kill_cpu: AtomicU64::new(LANDED),
        });
        watchdog().register(&guard);
        CURRENT.with(|c| *c.borrow_mut() = Arc::downgrade(&guard));
        guard
    }

    /// Points the guard at a (new) isolate and clears any previous kill.
    pub fn attach(&self, handle: v8::IsolateHandle) {
        *self.isolate.lock().unwrap() = Some(handle);
        self.reset();
    }

    /// Forgets a kill once its isolate is gone.
    pub fn reset(&self) {
        *self.kill.lock().unwrap() = None;
        self.kill_cpu.store(LANDED, Ordering::Release);
        self.killed.store(false, Ordering::Release);
    }

    /// The host has seen the kill land: what the thread does next (tearing
    /// the isolate down, however large its heap) is no overrun.
    pub fn landed(&self) {
        self.kill_cpu.store(LANDED, Ordering::Release);
    }

    /// This thread's CPU time now, in ns.
    pub fn now_ns(&self) -> u64 {
        clock_ns(self.clock)
    }

    /// Publishes the start of the oldest request in flight (`None`: idle).
    pub fn set_oldest(&self, start_ns: Option<u64>) {
        // SeqCst here and in `Watchdog::park`: of this store and the
        // watchdog's `parked` store, at least one side must see the other's.
        // Weaker orders let each store wait in its core's buffer while that
        // core loads, and then the watchdog parks with a request running.
        let now = start_ns.map_or(0, |s| s + 1);
        let was = self.oldest_start.swap(now, Ordering::SeqCst);
        if was == 0 && now != 0 {
            watchdog().wake();
        } else if now != 0 && now < was {
            // An earlier start (work a request left behind, now counted):
            // the watchdog may be asleep on the later one's budget.
            watchdog().thread.unpark();
        }
    }

    /// Stops the isolate for `kill` (first reason wins).
    pub fn terminate(&self, kill: Kill) {
        let mut slot = self.kill.lock().unwrap();
        if slot.is_none() {
            *slot = Some(kill);
            self.kill_cpu.store(self.now_ns(), Ordering::Release);
        }
        drop(slot);
        self.killed.store(true, Ordering::Release);
        if let Some(handle) = self.isolate.lock().unwrap().as_ref() {
            handle.terminate_execution();
        }
    }

    /// The reason the isolate was stopped, if it was.
    pub fn killed(&self) -> Option<Kill> {
        if !self.killed.load(Ordering::Acquire) {
            return None;
        }
        *self.kill.lock().unwrap()
    }

    /// Stops a request past its budget. `None` while idle; otherwise the
    /// CPU time its requests may still use before the next check matters.
    fn check(&self) -> Option<Duration> {
        let start = self.oldest_start.load(Ordering::Relaxed);
        if start == 0 {
            return None;
        }
        if self.killed.load(Ordering::Acquire) {
            // Stopping already: the request ends as soon as V8 lands it,
            // unless a native built-in keeps it from landing.
            return Some(self.overrun_check());
        }
        let used = self.now_ns().saturating_sub(start - 1);
        if used > self.limit_ns {
            self.terminate(Kill::Cpu { limit_ms: self.limit_ns / 1_000_000, start_ns: start - 1 });
            return Some(self.budget());
        }
        Some(Duration::from_nanos(self.limit_ns - used))
    }

    fn budget(&self) -> Duration {
        Duration::from_nanos(self.limit_ns)
    }

    /// A stop requested and not seen to land: past [`OVERRUN_GRACE`] of the
    /// thread's CPU, the process's overrun hook runs (once). How long until
    /// the next look.
    fn overrun_check(&self) -> Duration {
        let since = self.kill_cpu.load(Ordering::Acquire);
        if since == LANDED {
            return self.budget();
        }
        let now = self.now_ns();
        let after = Duration::from_nanos(now.saturating_sub(since));
        if after < OVERRUN_GRACE {
            return OVERRUN_GRACE - after;
        }
        // Once per kill: the next look finds it marked as landed.
        if self.kill_cpu.compare_exchange(since, LANDED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return self.budget();
        }
        let Some(kill) = *self.kill.lock().unwrap() else { return self.budget() };
        let used_ms = match kill {
            Kill::Cpu { start_ns, .. } => now.saturating_sub(start_ns).div_ceil(1_000_000),
            Kill::Memory { .. } => 0,
        };
        match OVERRUN.get() {
            Some(hook) => hook(kill, used_ms),
            None => tracing::warn!(?kill, used_ms, "a stop could not land within {OVERRUN_GRACE:?} of CPU: a native built-in is running; the isolate stops when it returns"),
        }
        self.budget()
    }
}

thread_local! {
    /// The guard of the isolate thread this is, if it is one.
    static CURRENT: RefCell<Weak<CpuGuard>> = const { RefCell::new(Weak::new()) };
}

/// Whether the isolate of the calling thread is being stopped (its
/// termination requested and not yet landed).
pub fn stop_requested() -> bool {
    CURRENT.with(|c| c.borrow().upgrade().is_some_and(|g| g.killed.load(Ordering::Acquire)))
}

struct Watchdog {
    guards: Mutex<Vec<Weak<CpuGuard>>>,
    thread: Thread,
    parked: AtomicBool,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let handle = thread::Builder::new()
            .name("webtask-watchdog".into())
            .spawn(run)
            .expect("spawn watchdog thread");
        Watchdog {
            guards: Mutex::new(Vec::new()),
            thread: handle.thread().clone(),
            parked: AtomicBool::new(false),
        }
    })
}

impl Watchdog {
    fn register(&self, guard: &Arc<CpuGuard>) {
        self.guards.lock().unwrap().push(Arc::downgrade(guard));
        // Its budget may be shorter than the sleep the watchdog is in.
        self.thread.unpark();
    }

    fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

fn run() {
    let dog = watchdog();
    let mut idle_since: Option<Instant> = None;
    loop {
        let (active, sleep) = dog.scan();
        if active {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_BEFORE_PARK {
            dog.park();
            idle_since = None;
            continue;
        }
        // Parked, not asleep: a new guard cuts the wait short.
        thread::park_timeout(sleep);
    }
}

impl Watchdog {
    /// Checks every guard; whether any request is in flight, and how long
    /// the watchdog may sleep before it must look again.
    fn scan(&self) -> (bool, Duration) {
        let (mut active, mut sleep) = (false, MAX_SLEEP);
        self.guards.lock().unwrap().retain(|weak| {
            let Some(guard) = weak.upgrade() else { return false };
            // A request this guard's thread starts during the sleep must be
            // seen before it can use up its budget.
            sleep = sleep.min(guard.budget() / 2);
            if let Some(left) = guard.check() {
                active = true;
                sleep = sleep.min(left);
            }
            true
        });
        (active, sleep.max(MIN_SLEEP))
    }

    fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        // A request that started between the scan and `parked` being set
        // would be missed; one more scan closes that window.
        let any = self.guards.lock().unwrap().iter().any(|w| {
            w.upgrade().is_some_and(|g| g.oldest_start.load(Ordering::SeqCst) != 0)
        });
        if !any {
            thread::park();
        }
        self.parked.store(false, Ordering::Release);
    }
}

/// The calling thread's CPU-time clock, as the kernel encodes a thread's
/// clock id (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
///
/// Not `pthread_getcpuclockid`: glibc builds that id from the thread id it
/// cached when the thread was made, and a process made by a raw `clone`
/// (the zygote forks workers so) inherits its parent's. The kernel then
/// refuses the clock (EINVAL), CPU time reads as zero, and no CPU limit
/// ever fires.
fn current_thread_clock() -> libc::clockid_t {
    const CPUCLOCK_PERTHREAD: libc::clockid_t = 4;
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let clock = (!tid << 3) | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    // Guest code must not run where its CPU time cannot be read.
    assert_eq!(rc, 0, "the thread CPU clock of thread {tid} cannot be read: {}", std::io::Error::last_os_error());
    clock
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; clock is a thread CPU clock id.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
