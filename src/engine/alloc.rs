//! A capped ArrayBuffer allocator: V8 asks it for every ArrayBuffer backing
//! store of one isolate, and it refuses (returns null, which V8 turns into a
//! guest `RangeError`) once the isolate's buffers would exceed the cap. This
//! memory lives outside the V8 heap, so the heap limit alone would not
//! bound it.
//!
//! Ops answer through the same budget: bytes they hand the guest are
//! allocated by this allocator ([`guest_bytes`], or a buffer the shim
//! allocated and the op fills), and host memory an op keeps for the guest
//! between calls (a zlib stream, a key) is charged to it ([`Charge`]). So
//! nothing the guest can make pile up grows past the cap: past it the guest
//! gets a `RangeError` naming the limit, never the worker an OOM kill.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use deno_core::v8;
use deno_error::JsErrorBox;

/// The ArrayBuffer memory one isolate may hold; shared by its allocator and
/// its ops (kept in the `OpState`).
pub struct Budget {
    cap: usize,
    used: AtomicUsize,
    /// The last allocation refused and not yet reported (bytes wanted,
    /// bytes left then), for V8's own RangeError, which names no figure
    /// (see [`Budget::refusal`]). Written only when refusing.
    refused: Mutex<Option<(usize, usize)>>,
}

/// The message V8 gives a RangeError when this allocator refuses a buffer.
pub const V8_REFUSAL: &str = "Array buffer allocation failed";

impl Budget {
    fn new(cap: usize) -> Budget {
        Budget { cap, used: AtomicUsize::new(0), refused: Mutex::new(None) }
    }

    /// A budget no allocator draws from (unit tests of the ops).
    #[cfg(test)]
    pub fn detached(cap: usize) -> Arc<Self> {
        Arc::new(Budget::new(cap))
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes the isolate may still allocate.
    pub fn remaining(&self) -> usize {
        self.cap.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// The guest error for `want` more bytes than the budget has left.
    pub fn exhausted(&self, want: usize) -> JsErrorBox {
        JsErrorBox::range_error(format!("{V8_REFUSAL}: {}", self.figures(want, self.remaining())))
    }

    fn figures(&self, want: usize, left: usize) -> String {
        format!("{want} more bytes would pass this container's ArrayBuffer memory limit of {} MiB ({left} bytes left)", self.cap >> 20)
    }

    /// The figures of the last allocation this budget refused, once: what
    /// V8's bare "Array buffer allocation failed" was about. Taken, so a
    /// later error of the same words (thrown by guest code, say) does not
    /// carry an old refusal's figures.
    pub fn take_refusal(&self) -> Option<String> {
        let (want, left) = self.refused.lock().unwrap().take()?;
        Some(self.figures(want, left))
    }

    /// Forgets a refusal nobody reported (the guest caught its error).
    pub fn forget_refusal(&self) {
        self.refused.lock().unwrap().take();
    }

    /// Reserves `len` bytes for the allocator, or records the refusal.
    fn reserve_or_record(&self, len: usize) -> bool {
        if self.reserve(len) {
            return true;
        }
        *self.refused.lock().unwrap() = Some((len, self.remaining()));
        false
    }

    fn reserve(&self, len: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(len).filter(|n| *n <= self.cap) else {
                return false;
            };
            match self.used.compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

unsafe extern "C" fn allocate(budget: &Budget, len: usize) -> *mut c_void {
    if !budget.reserve_or_record(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: calloc with any size is defined; null is handled by V8.
    let ptr = unsafe { libc::calloc(len.max(1), 1) };
    if ptr.is_null() {
        budget.release(len);
    }
    ptr
}

unsafe extern "C" fn allocate_uninitialized(budget: &Budget, len: usize) -> *mut c_void {
    if !budget.reserve_or_record(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: as above.
    let ptr = unsafe { libc::malloc(len.max(1)) };
    if ptr.is_null() {
        budget.release(len);
    }
    ptr
}

unsafe extern "C" fn free(budget: &Budget, data: *mut c_void, len: usize) {
    budget.release(len);
    // SAFETY: data came from calloc/malloc above.
    unsafe { libc::free(data) };
}

unsafe extern "C" fn drop_budget(budget: *const Budget) {
    // SAFETY: the pointer was produced by Arc::into_raw in `capped`.
    drop(unsafe { Arc::from_raw(budget) });
}

static VTABLE: v8::RustAllocatorVtable<Budget> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_budget,
};

/// An allocator that lets one isolate hold at most `cap` bytes of buffers,
/// and the budget it draws from.
pub fn capped(cap: usize) -> (v8::UniqueRef<v8::Allocator>, Arc<Budget>) {
    let budget = Arc::new(Budget::new(cap));
    // SAFETY: the handle is a leaked Arc<Budget> released by `drop_budget`,
    // matching the vtable's type.
    let allocator = unsafe { v8::new_rust_allocator(Arc::into_raw(budget.clone()), &VTABLE) };
    (allocator, budget)
}

/// Host memory an op keeps on the guest's behalf, counted against the
/// isolate's budget until it is dropped.
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    pub fn new(budget: &Arc<Budget>, bytes: usize) -> Result<Charge, JsErrorBox> {
        if !budget.reserve(bytes) {
            return Err(budget.exhausted(bytes));
        }
        Ok(Charge { budget: budget.clone(), bytes })
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Charges `bytes` more (a codec that learns its window size only from
    /// the data), or fails as `new` does, keeping what was charged before.
    pub fn grow(&mut self, bytes: usize) -> Result<(), JsErrorBox> {
        if !self.budget.reserve(bytes) {
            return Err(self.budget.exhausted(bytes));
        }
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// The ArrayBuffer budget of the isolate `scope` belongs to.
pub(crate) fn budget(scope: &v8::Isolate) -> Arc<Budget> {
    let state = deno_core::JsRuntime::op_state_from(scope);
    let state = state.borrow();
    state.borrow::<Arc<Budget>>().clone()
}

/// Makes room for `len` more bytes, collecting garbage first if the budget
/// is short (as V8 does before it refuses an ArrayBuffer).
pub fn make_room(scope: &mut v8::Isolate, budget: &Budget, len: usize) -> Result<(), JsErrorBox> {
    if budget.remaining() < len {
        scope.low_memory_notification();
        if budget.remaining() < len {
            return Err(budget.exhausted(len));
        }
    }
    Ok(())
}

/// A `Uint8Array` of `len` bytes allocated through the isolate's capped
/// allocator, filled by `fill`. The budget is checked first: V8 aborts the
/// process when this allocation fails, where guest code gets a RangeError.
pub fn guest_bytes<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    budget: &Budget,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<v8::Local<'s, v8::Uint8Array>, JsErrorBox> {
    make_room(scope, budget, len)?;
    let store = v8::ArrayBuffer::new_backing_store(scope, len);
    if len > 0 {
        let data = store.data().ok_or_else(|| budget.exhausted(len))?;
        // SAFETY: the store was just allocated with `len` bytes and nothing
        // else refers to it yet.
        fill(unsafe { std::slice::from_raw_parts_mut(data.as_ptr() as *mut u8, len) });
    }
    let buffer = v8::ArrayBuffer::with_backing_store(scope, &store.make_shared());
    v8::Uint8Array::new(scope, buffer, 0, len).ok_or_else(|| budget.exhausted(len))
}
