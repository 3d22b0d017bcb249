//! The thread that owns one container's isolate. V8 isolates are bound to
//! the thread that entered them, so each container gets one such thread,
//! fed through a channel; in a worker process the same loop is fed from the
//! node's socket instead.
//!
//! The loop does three things: starts jobs as they arrive, drives the event
//! loop while requests are waiting on it, and enforces what only this thread
//! can (wall-clock deadlines, and rebuilding the isolate after a kill).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use super::inflight::ReplyTx;
use super::isolate::Isolate;
use super::request::Context;
use super::watchdog::{CpuGuard, Kill};
use super::{Code, Error, IsolateSpec, Limits};

/// A request for the isolate thread.
pub struct Job {
    pub container: Arc<str>,
    pub code: Code,
    pub context: Context,
    pub req_id: Arc<str>,
    pub reply: ReplyTx,
    pub permit: Permit,
}

/// One unit of a container's concurrency budget, returned on drop.
pub struct Permit(pub(super) Arc<AtomicUsize>);

impl Permit {
    /// A permit already counted in `counter`; dropping it gives it back.
    pub fn from_counter(counter: Arc<AtomicUsize>) -> Self {
        Permit(counter)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

// Not boxed: every request passes through a `Job` event, and the others
// are rare and small.
#[allow(clippy::large_enum_variant)]
enum Event {
    Job(Job),
    Closed,
    LoopIdle,
    LoopError(String),
    Deadline,
}

/// Runs an isolate thread until its channel closes.
pub fn run(spec: IsolateSpec, rx: mpsc::UnboundedReceiver<Job>) {
    // Timers only: an idle isolate thread parks on a futex, which is cheaper
    // to wake per request than an I/O driver's eventfd.
    let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    tokio.block_on(serve(spec, rx, None));
}

/// The isolate loop, on the calling thread's current-thread runtime, until
/// `rx` closes. With `prewarmed` the isolate is created before the first
/// job arrives (a pooled worker process) and the sender told when it is
/// ready; otherwise it is created with the first job.
pub async fn serve(
    spec: IsolateSpec,
    mut rx: mpsc::UnboundedReceiver<Job>,
    prewarmed: Option<oneshot::Sender<Result<(), Error>>>,
) {
    {
        let guard = CpuGuard::for_current_thread(spec.limits.cpu_ms);
        let mut host = Host {
            container: "".into(),
            limits: spec.limits.clone(),
            spec,
            guard,
            isolate: None,
            loop_idle: true,
            recycle: false,
            background: None,
            cpu_read: None,
        };
        if let Some(ready) = prewarmed {
            let _ = ready.send(host.isolate().map(|_| ()));
        }
        let mut deadline: Option<Pin<Box<Sleep>>> = None;
        loop {
            let idle = host.isolate.as_mut().is_none_or(|i| i.inflight().is_empty());
            let wait = host.spec.idle_wait;
            let spun = if idle && !wait.is_zero() { wait_for_job(&mut rx, wait) } else { None };
            let event = match spun {
                Some(event) => event,
                None => poll_fn(|cx| {
                if let Poll::Ready(job) = rx.poll_recv(cx) {
                    return Poll::Ready(job.map_or(Event::Closed, Event::Job));
                }
                if let Some(isolate) = host.isolate.as_mut().filter(|_| !host.loop_idle) {
                    match isolate.poll_event_loop(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Event::LoopIdle),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::LoopError(e.to_string())),
                        Poll::Pending => {}
                    }
                }
                if let Some(sleep) = deadline.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Deadline);
                    }
                }
                Poll::Pending
            })
            .await,
            };
            // The request whose synchronous run a kill interrupted is its
            // culprit; during the event loop it is the request whose
            // callback was running (else the oldest, which the CPU figure
            // was measured from).
            let mut running = None;
            match event {
                Event::Job(job) => running = host.start(job),
                Event::Closed => break,
                Event::LoopIdle => {
                    host.loop_idle = true;
                    host.background = None;
                }
                Event::LoopError(e) => host.loop_failed(e),
                Event::Deadline => host.expire(Instant::now()),
            }
            host.after_turn(running);
            deadline = host.next_deadline().map(|at| Box::pin(tokio::time::sleep_until(at)));
        }
    }
}

/// Polls for the next job for up to `wait` before the thread parks: a
/// caller in a request loop sends its next job within microseconds, and a
/// thread still awake takes it without a futex wake-up on either side.
fn wait_for_job(rx: &mut mpsc::UnboundedReceiver<Job>, wait: std::time::Duration) -> Option<Event> {
    let until = std::time::Instant::now() + wait;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(Event::Job(job)),
            Err(mpsc::error::TryRecvError::Disconnected) => return Some(Event::Closed),
            // Yielding, not spinning: a thread the CPU is needed for (the
            // HTTP side, on a busy machine) runs first.
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < until => std::thread::yield_now(),
            Err(mpsc::error::TryRecvError::Empty) => return None,
        }
    }
}

struct Host {
    container: Arc<str>,
    limits: Limits,
    spec: IsolateSpec,
    guard: Arc<CpuGuard>,
    isolate: Option<Isolate>,
    /// The event loop has nothing left to do for the requests in flight.
    loop_idle: bool,
    /// A request timed out here: rebuild the isolate once it is drained, so
    /// nothing it left behind (intervals, pending work) outlives it.
    recycle: bool,
    /// Guest work still running with no request in flight (a timer or
    /// microtask a finished request left behind): since when, in CPU time
    /// and wall time. It gets one request's CPU and wall budget, no more.
    background: Option<(u64, Instant)>,
    /// The last reading of this thread's CPU clock, and when it was taken.
    cpu_read: Option<(std::time::Instant, u64)>,
}

/// How long a reading of the thread's CPU clock stands in for a new one
/// at a request's start. Reading it is a syscall (about 1 µs here, a tenth
/// of a worker's CPU per request under load), and jobs that arrive together
/// start microseconds apart. A reused reading can only be early, by at most
/// the CPU this thread used meanwhile, which is at most this wall time and
/// spent on the same container's work: a request may be charged up to
/// 20 µs more, never less.
const CPU_READING_REUSE: std::time::Duration = std::time::Duration::from_micros(20);

/// The thread's CPU clock for a start mark, reusing `last` if it was read
/// within [`CPU_READING_REUSE`]. Wall time from `std`, which tests that
/// pause tokio's clock do not stop.
fn cpu_mark(guard: &CpuGuard, last: &mut Option<(std::time::Instant, u64)>) -> u64 {
    let now = std::time::Instant::now();
    match *last {
        Some((at, ns)) if now.saturating_duration_since(at) < CPU_READING_REUSE => ns,
        _ => {
            let ns = guard.now_ns();
            *last = Some((now, ns));
            ns
        }
    }
}

impl Host {
    fn isolate(&mut self) -> Result<&mut Isolate, Error> {
        if self.isolate.is_none() {
            let isolate = Isolate::new(&self.spec, &self.guard, self.container.clone())?;
            self.isolate = Some(isolate);
        }
        Ok(self.isolate.as_mut().unwrap())
    }

    /// Starts `job`; returns its id in the isolate.
    fn start(&mut self, job: Job) -> Option<u32> {
        if self.guard.killed().is_some() {
            // Killed after its last request finished: start clean.
            self.discard(&Error::internal("isolate killed while idle"), None);
        }
        let cpu_start = cpu_mark(&self.guard, &mut self.cpu_read);
        let deadline = Instant::now() + std::time::Duration::from_millis(self.limits.wall_ms);
        let guard = self.guard.clone();
        if job.container != self.container {
            // A pooled isolate learns its container with its first job.
            self.container = job.container.clone();
            if let Some(isolate) = self.isolate.as_mut() {
                isolate.set_container(self.container.clone());
            }
        }
        let isolate = match self.isolate() {
            Ok(isolate) => isolate,
            Err(err) => {
                let _ = job.reply.send(Err(err));
                return None;
            }
        };
        let id = isolate.inflight().insert(job.reply, job.req_id, cpu_start, deadline, job.permit);
        guard.set_oldest(isolate.inflight().oldest_cpu_start());
        isolate.start(id, &job.code, &job.context);
        self.loop_idle = false;
        Some(id)
    }

    fn loop_failed(&mut self, message: String) {
        if self.guard.killed().is_some() {
            return; // after_turn reports the kill
        }
        tracing::error!(container = &*self.container, error = %message, "event loop failed; recycling isolate");
        self.discard(&Error::internal(message), None);
    }

    fn expire(&mut self, now: Instant) {
        let Some(isolate) = self.isolate.as_mut() else { return };
        isolate.sweep_exchanges(now);
        let expired = isolate.inflight().expired(now);
        for id in expired {
            isolate.inflight().fail(id, Error::WallLimit { limit_ms: self.limits.wall_ms });
            self.recycle = true;
        }
        if self.background.is_some_and(|(_, since)| since + self.wall() <= now) {
            tracing::warn!(container = &*self.container, "background work outlived the wall-clock limit; recycling isolate");
            self.recycle = true;
        }
    }

    fn wall(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.limits.wall_ms)
    }

    /// Bookkeeping after anything ran on the isolate: kills, recycling, and
    /// what the watchdog should watch next.
    fn after_turn(&mut self, running: Option<u32>) {
        self.settle_event_loop();
        if let Some(kill) = self.guard.killed() {
            let (err, kind) = match kill {
                Kill::Cpu { limit_ms, start_ns } => {
                    // Measured now, after V8 stopped: what was really used.
                    let used_ms = self.guard.now_ns().saturating_sub(start_ns).div_ceil(1_000_000);
                    (Error::CpuLimit { limit_ms, used_ms }, "cpu_limit")
                }
                Kill::Memory { limit_mb } => (Error::MemoryLimit { limit_mb }, "memory_limit"),
            };
            tracing::warn!(container = &*self.container, code = kind, "{err}; isolate discarded");
            let culprit = running.or_else(|| self.isolate.as_mut()?.interrupted_request());
            self.discard(&err, culprit);
        }
        let Some(isolate) = self.isolate.as_mut() else {
            self.guard.set_oldest(None);
            return;
        };
        let idle = isolate.inflight().is_empty();
        if idle && self.recycle {
            self.discard(&Error::internal("recycled"), None);
            return;
        }
        if idle && !self.loop_idle && self.background.is_none() {
            self.background = Some((cpu_mark(&self.guard, &mut self.cpu_read), Instant::now()));
        }
        // The watchdog watches whenever guest code may run: for the oldest
        // request, or for work left behind with no request at all.
        let oldest = isolate.inflight().oldest_cpu_start();
        let background = self.background.map(|(cpu, _)| cpu);
        self.guard.set_oldest(match (oldest, background) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }

    /// With nothing in flight, gives the event loop one turn right away: a
    /// request that answered synchronously usually left nothing behind,
    /// and then there is no background work to time (and no clock to
    /// read). Work that does remain keeps `loop_idle` false, and the main
    /// loop polls it with a real waker.
    fn settle_event_loop(&mut self) {
        if self.loop_idle || self.guard.killed().is_some() {
            return;
        }
        let Some(isolate) = self.isolate.as_mut() else { return };
        if !isolate.inflight().is_empty() {
            return;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match isolate.poll_event_loop(&mut cx) {
            Poll::Ready(Ok(())) => self.loop_idle = true,
            Poll::Ready(Err(e)) => self.loop_failed(e.to_string()),
            Poll::Pending => {}
        }
    }

    /// Drops the isolate: `culprit` (else the oldest request) fails with
    /// `err`, every other request still in it with `isolate_recycled`.
    fn discard(&mut self, err: &Error, culprit: Option<u32>) {
        // Whatever a kill was waiting for has landed: tearing down a large
        // heap is not an overrun.
        self.guard.landed();
        if let Some(isolate) = self.isolate.take() {
            // Gone before anyone hears of it: a caller that sees the error
            // never finds the old isolate still counted or still running.
            let inflight = isolate.into_inflight();
            let recycled = Error::IsolateRecycled { reason: err.code().to_owned() };
            inflight.borrow_mut().fail_all(culprit, err, &recycled);
        }
        self.guard.set_oldest(None);
        self.guard.reset();
        self.background = None;
        self.loop_idle = true;
        self.recycle = false;
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let background = self.background.map(|(_, since)| since + self.wall());
        let requests = self.isolate.as_mut().and_then(|i| i.inflight().earliest_deadline());
        // Egress exchanges die with their request's deadline, even when the
        // request answered long before.
        let exchanges = self.isolate.as_mut().and_then(|i| i.exchange_deadline());
        [requests, background, exchanges].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_mark_is_reused_only_briefly_and_never_late() {
        let guard = CpuGuard::for_current_thread(1000);
        let mut last = None;
        // Taken together: one reading serves both, and it is not late. The
        // thread may be preempted between them past the window: then the
        // second is a fresh reading, and the pair is tried again.
        let first = (0..100)
            .find_map(|_| {
                last = None;
                let took = std::time::Instant::now();
                let (a, b) = (cpu_mark(&guard, &mut last), cpu_mark(&guard, &mut last));
                (took.elapsed() < CPU_READING_REUSE).then(|| {
                    assert_eq!(a, b);
                    a
                })
            })
            .expect("two marks within 20 µs in 100 tries");
        assert!(first <= guard.now_ns());
        // After this thread has worked for longer than the reuse window,
        // a mark is read afresh and counts that work.
        let spin = std::time::Instant::now();
        while spin.elapsed() < CPU_READING_REUSE * 50 {
            std::hint::black_box(spin.elapsed());
        }
        let later = cpu_mark(&guard, &mut last);
        assert!(later > first, "{later} after {first}");
        assert!(later <= guard.now_ns());
    }
}
