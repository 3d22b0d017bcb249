//! CPU-time enforcement from outside the isolate thread.
//!
//! Each isolate thread publishes, in a [`CpuGuard`], its thread CPU clock and
//! the CPU reading at which its oldest in-flight request started. One
//! watchdog thread per process reads those clocks every tick and calls
//! `terminate_execution` on an isolate whose request ran past its budget;
//! the isolate thread then learns the reason from the guard. The hot path
//! pays two relaxed atomic stores per request and never takes a lock or
//! wakes the watchdog while it is ticking.
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
//! the thread spent since it started.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::{self, Thread};
use std::time::Duration;

use deno_core::v8;

/// How often running requests are checked; the CPU overshoot of a limit
/// kill is at most about one tick.
const TICK: Duration = Duration::from_millis(1);
/// Ticks without any request in flight before the watchdog parks.
const IDLE_TICKS_BEFORE_PARK: u32 = 200;

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
        self.killed.store(false, Ordering::Release);
    }

    /// This thread's CPU time now, in ns.
    pub fn now_ns(&self) -> u64 {
        clock_ns(self.clock)
    }

    /// Publishes the start of the oldest request in flight (`None`: idle).
    pub fn set_oldest(&self, start_ns: Option<u64>) {
        let was = self.oldest_start.swap(start_ns.map_or(0, |s| s + 1), Ordering::Relaxed);
        if was == 0 && start_ns.is_some() {
            watchdog().wake();
        }
    }

    /// Stops the isolate for `kill` (first reason wins).
    pub fn terminate(&self, kill: Kill) {
        let mut slot = self.kill.lock().unwrap();
        if slot.is_none() {
            *slot = Some(kill);
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

    fn check(&self) -> bool {
        let start = self.oldest_start.load(Ordering::Relaxed);
        if start == 0 {
            return false;
        }
        let used = self.now_ns().saturating_sub(start - 1);
        if used > self.limit_ns && !self.killed.load(Ordering::Acquire) {
            self.terminate(Kill::Cpu { limit_ms: self.limit_ns / 1_000_000, start_ns: start - 1 });
        }
        true
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
    }

    fn wake(&self) {
        if self.parked.load(Ordering::Acquire) {
            self.thread.unpark();
        }
    }
}

fn run() {
    let dog = watchdog();
    let mut idle_ticks = 0;
    loop {
        let mut active = false;
        dog.guards.lock().unwrap().retain(|weak| match weak.upgrade() {
            Some(guard) => {
                active |= guard.check();
                true
            }
            None => false,
        });
        idle_ticks = if active { 0 } else { idle_ticks + 1 };
        if idle_ticks >= IDLE_TICKS_BEFORE_PARK {
            dog.parked.store(true, Ordering::Release);
            // A request that started between the scan and `parked` being set
            // would be missed; one more scan closes that window.
            let any = dog.guards.lock().unwrap().iter().any(|w| {
                w.upgrade().is_some_and(|g| g.oldest_start.load(Ordering::Relaxed) != 0)
            });
            if !any {
                thread::park();
            }
            dog.parked.store(false, Ordering::Release);
            idle_ticks = 0;
        } else {
            thread::sleep(TICK);
        }
    }
}

fn current_thread_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    assert_eq!(rc, 0, "pthread_getcpuclockid failed");
    clock
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; clock is a thread CPU clock id.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
