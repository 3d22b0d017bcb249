//! The host side of the Node-compatible environment (`js_runtime/node/`):
//! the fixed module set's file table, and the ops behind `crypto` and
//! `zlib`. Everything here is reached by guest code through the shim's
//! wrappers, so every op validates its arguments and answers bad input with
//! a guest error, never a panic.
//!
//! Two rules hold for every op here:
//! - Bytes handed to the guest are allocated through the isolate's capped
//!   ArrayBuffer allocator (`alloc::guest_bytes`, or a buffer the shim
//!   allocated and the op fills), and host state kept between calls is
//!   charged to the same budget, so the ArrayBuffer limit covers them.
//! - No call works longer than about a [`SLICE`]: the CPU watchdog's
//!   termination only lands once an op returns, so work that grows with the
//!   guest's input (hashing, zlib, PBKDF2 iterations, RSA exponentiation)
//!   keeps its state in a GC-managed object and the shim calls again until
//!   it is done.

pub mod crypto;
pub mod keys;
pub mod modules;
pub mod zlib;

use std::time::{Duration, Instant};

use deno_error::JsErrorBox;

pub(crate) fn type_error(msg: impl Into<String>) -> JsErrorBox {
    JsErrorBox::type_error(msg.into())
}

pub(crate) fn range_error(msg: impl Into<String>) -> JsErrorBox {
    JsErrorBox::range_error(msg.into())
}

/// How long one op call may work before it returns to JavaScript.
pub(crate) const SLICE: Duration = Duration::from_millis(2);

/// Whether a sliced op should return at once, without progress: the
/// isolate is being stopped (see `watchdog`), and the shim's loop must reach
/// V8's termination check quickly.
pub(crate) fn stopping() -> bool {
    super::watchdog::stop_requested()
}

/// The end of one call's slice of work.
pub(crate) struct Deadline(Instant);

impl Deadline {
    pub fn start() -> Self {
        Deadline(Instant::now() + SLICE)
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

pub(crate) use crate::engine::alloc::budget;

/// A `usize` from a JS number that must be a whole number in `0..=max`.
pub(crate) fn index(value: f64, max: usize, what: &str) -> Result<usize, JsErrorBox> {
    if value >= 0.0 && value <= max as f64 && value.fract() == 0.0 {
        Ok(value as usize)
    } else {
        Err(range_error(format!("{what} out of range: {value} (0 to {max})")))
    }
}
