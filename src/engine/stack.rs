//! Stack traces as the guest sees them: only frames of its own code
//! (`webtask.js`), of the fixed module set (`/node_modules/...`, public
//! code that runs with the guest's privilege, and whose own call-site
//! tricks, such as depd's, need their frames) and of V8 builtins. Runtime frames would name internal
//! scripts and functions; dropping them before anything formats the trace
//! means no error a guest catches, prints or returns says anything about the
//! host, and a guest `Error.prepareStackTrace` gets guest call sites only.

use deno_core::v8;

/// The script name every webtask is compiled under.
pub const GUEST_SCRIPT: &str = "webtask.js";

/// Where the module set's files live in the module table.
pub const MODULE_SET_PREFIX: &str = "/node_modules/";

/// V8's prepare-stack-trace hook: filters the call sites, then lets
/// deno_core format them (or call a guest `Error.prepareStackTrace`).
pub fn prepare<'s, 'i>(
    scope: &mut v8::PinScope<'s, 'i>,
    error: v8::Local<'s, v8::Value>,
    callsites: v8::Local<'s, v8::Array>,
) -> v8::Local<'s, v8::Value> {
    let kept = guest_frames(scope, callsites);
    deno_core::error::prepare_stack_trace_callback(scope, error, kept)
}

fn guest_frames<'s>(scope: &mut v8::PinScope<'s, '_>, callsites: v8::Local<'s, v8::Array>) -> v8::Local<'s, v8::Array> {
    let key = v8::String::new(scope, "getFileName").unwrap();
    let mut kept = Vec::with_capacity(callsites.length() as usize);
    for i in 0..callsites.length() {
        let Some(site) = callsites.get_index(scope, i) else { continue };
        if is_guest_frame(scope, site, key) {
            kept.push(site);
        }
    }
    v8::Array::new_with_elements(scope, &kept)
}

fn is_guest_frame(scope: &mut v8::PinScope, site: v8::Local<v8::Value>, key: v8::Local<v8::String>) -> bool {
    let file = site
        .to_object(scope)
        .and_then(|obj| {
            let f = v8::Local::<v8::Function>::try_from(obj.get(scope, key.into())?).ok()?;
            f.call(scope, obj.into(), &[])
        })
        .filter(|v| !v.is_null_or_undefined());
    match file {
        // Builtins (`Array.map`, `new Promise`) have no script.
        None => true,
        Some(name) => {
            let name = name.to_rust_string_lossy(scope);
            name == GUEST_SCRIPT || name.starts_with(MODULE_SET_PREFIX)
        }
    }
}
