//! The host side of the Node-compatible environment (`js_runtime/node/`):
//! the fixed module set's file table, and the ops behind `crypto` and
//! `zlib`. Everything here is reached by guest code through the shim's
//! wrappers, so every op validates its arguments and answers bad input with
//! a guest error, never a panic.

pub mod crypto;
pub mod keys;
pub mod modules;
pub mod zlib;

use deno_error::JsErrorBox;

pub(crate) fn type_error(msg: impl Into<String>) -> JsErrorBox {
    JsErrorBox::type_error(msg.into())
}

pub(crate) fn range_error(msg: impl Into<String>) -> JsErrorBox {
    JsErrorBox::range_error(msg.into())
}
