//! A capped ArrayBuffer allocator: V8 asks it for every ArrayBuffer backing
//! store of one isolate, and it refuses (returns null, which V8 turns into a
//! guest `RangeError`) once the isolate's buffers would exceed the cap. This
//! memory lives outside the V8 heap, so the heap limit alone would not
//! bound it.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deno_core::v8;

pub struct Budget {
    cap: usize,
    used: AtomicUsize,
}

impl Budget {
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
    if !budget.reserve(len) {
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
    if !budget.reserve(len) {
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

/// An allocator that lets one isolate hold at most `cap` bytes of buffers.
pub fn capped(cap: usize) -> v8::UniqueRef<v8::Allocator> {
    let budget = Arc::new(Budget { cap, used: AtomicUsize::new(0) });
    // SAFETY: the handle is a leaked Arc<Budget> released by `drop_budget`,
    // matching the vtable's type.
    unsafe { v8::new_rust_allocator(Arc::into_raw(budget), &VTABLE) }
}
