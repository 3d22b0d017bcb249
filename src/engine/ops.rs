//! The host surface guest code reaches, only through the runtime's own
//! modules (`js_runtime/bootstrap.js` and `js_runtime/node/`, which keep the
//! ops in their closures): settling a request, streaming a response,
//! console output, egress exchanges (`engine::exchange`), and the Node
//! environment's crypto, zlib and module table (`engine::node`). Ops take
//! plain values and check every argument. The only host objects handed
//! back are the Node ops' resumable states (a digest, a zlib stream, a key,
//! a signature job): cppgc objects with no properties or methods, that only
//! these ops accept, kept by the shim where guest code does not look
//! (private fields, a WeakMap).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::{op2, v8, OpState};

use super::alloc::{self, Budget};
use super::code_cache::{self, Key};
use super::console::{self, ConsoleLine, ConsoleSink};
use super::exchange::{
    op_wt_fetch_abort, op_wt_fetch_finish, op_wt_fetch_head, op_wt_fetch_outgoing, op_wt_fetch_read, op_wt_fetch_start, op_wt_fetch_take,
    op_wt_fetch_write,
};
use super::fetch::Fetcher;
use super::inflight::Inflight;
use super::node::crypto::{
    op_wt_aes_cbc, op_wt_digest_copy, op_wt_digest_final, op_wt_digest_update, op_wt_gcm_aad, op_wt_gcm_check, op_wt_gcm_new,
    op_wt_gcm_tag, op_wt_gcm_update, op_wt_hash_new, op_wt_hmac_new, op_wt_pbkdf2_new, op_wt_pbkdf2_run, op_wt_random,
};
use super::node::keys::{
    op_wt_job_run, op_wt_key_der, op_wt_key_from_ec_point, op_wt_key_from_jwk, op_wt_key_import, op_wt_key_info, op_wt_key_public,
    op_wt_sign_start, op_wt_verify_start,
};
use super::node::modules::{op_wt_module_compile, op_wt_module_resolve, op_wt_module_text, op_wt_module_version};
use super::node::zlib::{op_wt_crc32, op_wt_zlib_new, op_wt_zlib_run};
use super::{Error, ScriptError};

/// Console output one request may produce (each line counted with
/// [`console::LINE_COST`]); past it lines are dropped (after one marker), so
/// no request can flood the node's logs. Output of timers left running
/// after their request gets as much per second, per isolate.
const LOG_BUDGET: u64 = 1024 * 1024;

/// The isolate's way out to the network, and how often a request may use it.
pub struct Egress {
    pub fetcher: Arc<dyn Fetcher>,
    pub max_subrequests: u32,
}

/// Which container this isolate serves (for log records).
pub struct HostInfo {
    pub container: Arc<str>,
}

/// Where this isolate's console lines go.
pub struct Console(pub Arc<dyn ConsoleSink>);

deno_core::extension!(
    webtask_runtime,
    ops = [
        op_wt_complete, op_wt_fail, op_wt_head, op_wt_write, op_wt_end, op_wt_console,
        op_wt_fetch_outgoing, op_wt_fetch_start, op_wt_fetch_write, op_wt_fetch_finish, op_wt_fetch_head, op_wt_fetch_read, op_wt_fetch_take, op_wt_fetch_abort,
        op_wt_hash_new, op_wt_hmac_new, op_wt_digest_copy, op_wt_digest_update, op_wt_digest_final,
        op_wt_pbkdf2_new, op_wt_pbkdf2_run, op_wt_random, op_wt_aes_cbc, op_wt_gcm_new, op_wt_gcm_aad,
        op_wt_gcm_update, op_wt_gcm_tag, op_wt_gcm_check, op_wt_key_import, op_wt_key_from_jwk,
        op_wt_key_from_ec_point, op_wt_key_public, op_wt_key_info, op_wt_key_der, op_wt_sign_start,
        op_wt_verify_start, op_wt_job_run, op_wt_zlib_new, op_wt_zlib_run, op_wt_crc32,
        op_wt_module_resolve, op_wt_module_version,
        op_wt_module_compile, op_wt_module_text,
        op_wt_load_builtins,
        op_wt_load_streams,
        op_wt_preview_entries,
    ],
    esm_entry_point = "ext:webtask_runtime/bootstrap.js",
    customizer = |ext: &mut deno_core::Extension| ext.esm_files = std::borrow::Cow::Borrowed(&RUNTIME_MODULES),
);

/// The runtime's modules, embedded in the binary. deno_core's own
/// `esm = [...]` records them by path and reads them from the source tree
/// when the snapshot is built, which here is at node start: a binary moved
/// off its build tree would not start.
macro_rules! runtime_module {
    ($file:literal) => {
        deno_core::ExtensionFileSource::new(
            concat!("ext:webtask_runtime/", $file),
            deno_core::ascii_str_include!(concat!(env!("CARGO_MANIFEST_DIR"), "/js_runtime/", $file)),
        )
    };
}

static RUNTIME_MODULES: [deno_core::ExtensionFileSource; 8] = [
    runtime_module!("bootstrap.js"),
    runtime_module!("node/require.js"),
    runtime_module!("node/process.js"),
    runtime_module!("node/crypto.js"),
    runtime_module!("node/zlib.js"),
    runtime_module!("node/egress.js"),
    runtime_module!("node/http.js"),
    runtime_module!("node/web.js"),
];

/// The npm polyfills behind the Node built-ins (`js_runtime/node/dist/`),
/// left out of the snapshot, where they cost every isolate most of a
/// millisecond to deserialise; compiled on an isolate's first require of a
/// built-in backed by them.
const BUILTINS: &str = include_str!("../../js_runtime/node/dist/builtins.js");
const BUILTINS_NAME: &str = "ext:webtask_runtime/node/dist/builtins.js";

/// The bundle as a classic script that evaluates to its `polyfills`
/// export (it is built as an ES module ending in `export{polyfills};`).
fn builtins_script() -> &'static str {
    static SCRIPT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        let body = BUILTINS.trim_end().strip_suffix("export{polyfills};").expect("the bundle ends with export{polyfills}");
        format!("(function () {{ {body}\nreturn polyfills; }})()")
    })
}

/// Evaluates the polyfill bundle and returns its `polyfills` object.
/// Not deno_core's lazy ES module loader: that one unwraps the result of
/// evaluating, so a CPU-limit termination landing mid-load (the load runs
/// inside a guest request's budget) would panic the process. Here it is an
/// exception like any other, and the request fails with its limit.
#[op2(reentrant)]
fn op_wt_load_builtins<'s>(scope: &mut v8::PinScope<'s, '_>) -> Result<v8::Local<'s, v8::Value>, deno_error::JsErrorBox> {
    evaluate(scope, BUILTINS_NAME, builtins_script(), Key::Bundle)
}

/// streams.js, left out of the snapshot like the bundle (it is most of a
/// web.js in objects): a script that evaluates to the function web.js
/// calls with its helpers.
const STREAMS: &str = include_str!("../../js_runtime/node/streams.js");
const STREAMS_NAME: &str = "ext:webtask_runtime/node/streams.js";

/// Evaluates streams.js and returns its function; as `op_wt_load_builtins`.
#[op2(reentrant)]
fn op_wt_load_streams<'s>(scope: &mut v8::PinScope<'s, '_>) -> Result<v8::Local<'s, v8::Value>, deno_error::JsErrorBox> {
    evaluate(scope, STREAMS_NAME, STREAMS, Key::Streams)
}

/// What Node's `util.inspect` shows of a collection or an iterator without
/// running guest code (iterating would consume an iterator, and call
/// whatever replaced `next`): V8's preview, `[entries, isKeyValue]`;
/// undefined for anything else. Only the guest's own objects reach it,
/// and what it returns is what the guest could read from them anyway.
#[op2]
fn op_wt_preview_entries<'s>(scope: &mut v8::PinScope<'s, '_>, value: v8::Local<'s, v8::Value>) -> v8::Local<'s, v8::Value> {
    let undefined = v8::undefined(scope).into();
    let Ok(object) = v8::Local::<v8::Object>::try_from(value) else { return undefined };
    let (Some(entries), key_value) = object.preview_entries(scope) else { return undefined };
    let key_value = v8::Boolean::new(scope, key_value).into();
    v8::Array::new_with_elements(scope, &[entries.into(), key_value]).into()
}

/// Compiles and runs the classic script `source` named `name`; its value.
fn evaluate<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    name: &str,
    source: &'static str,
    key: Key,
) -> Result<v8::Local<'s, v8::Value>, deno_error::JsErrorBox> {
    let failed = || deno_error::JsErrorBox::generic(format!("{name} could not be loaded"));
    let name = v8::String::new(scope, name).ok_or_else(failed)?;
    let source = super::script::static_text(scope, source.as_bytes()).ok_or_else(failed)?;
    let origin = super::script::origin(scope, name);
    v8::tc_scope!(let tc, scope);
    let script = super::script::compile_script(tc, source, &origin, code_cache::lookup(key));
    let value = script.and_then(|script| {
        let value = script.run(tc);
        code_cache::record_script(tc, key, script);
        value
    });
    match value {
        Some(value) => Ok(value),
        None => {
            if tc.has_caught() && !tc.has_terminated() {
                tc.rethrow();
            }
            // Terminating: V8 unwinds to the host whatever this returns.
            Ok(v8::undefined(tc).into())
        }
    }
}

fn inflight(state: &OpState) -> std::cell::RefMut<'_, Inflight> {
    state.borrow::<Rc<RefCell<Inflight>>>().borrow_mut()
}

#[op2(fast)]
fn op_wt_complete(state: &mut OpState, #[smi] id: u32, #[string] json: String) {
    inflight(state).complete(id, json);
}

#[op2(fast)]
fn op_wt_fail(
    state: &mut OpState,
    #[smi] id: u32,
    #[string] name: String,
    #[string] message: String,
    #[string] stack: String,
    #[string] details: String,
) {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let mut err = ScriptError { name: non_empty(name), message, stack: non_empty(stack), details };
    if err.name.as_deref() == Some("RangeError") && err.message == alloc::V8_REFUSAL {
        if let Some(figures) = state.borrow::<Arc<Budget>>().take_refusal() {
            add_figures(&mut err, &figures);
        }
    }
    inflight(state).fail(id, Error::Script(err));
}

/// V8's RangeError for a refused ArrayBuffer names no limit: the caller
/// gets the figures of the refusal after its message.
fn add_figures(err: &mut ScriptError, figures: &str) {
    let bare = format!("RangeError: {}", alloc::V8_REFUSAL);
    let full = format!("{bare}: {figures}");
    err.message = format!("{}: {figures}", alloc::V8_REFUSAL);
    if err.details == bare {
        err.details = full.clone();
    }
    if let Some(rest) = err.stack.as_deref().and_then(|s| s.strip_prefix(&bare)) {
        err.stack = Some(format!("{full}{rest}"));
    }
}

/// Headers the transport owns: framing and connection management are never
/// the guest's to set (a wrong content-length would break the connection).
const TRANSPORT_HEADERS: [&str; 5] = ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"];

#[op2]
fn op_wt_head(state: &mut OpState, #[smi] id: u32, status: f64, #[serde] flat: Vec<String>) {
    // Only final statuses: 1xx would be read as an interim answer or a
    // protocol switch by whatever sits in front of the node.
    if !(200.0..=599.0).contains(&status) || status.fract() != 0.0 {
        let message = format!("Invalid status code: {status}");
        let details = format!("RangeError: {message}");
        let err = ScriptError { name: Some("RangeError".into()), message, stack: None, details };
        return inflight(state).fail(id, Error::Script(err));
    }
    let mut headers = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        // Values the HTTP layer would reject are dropped, not sent broken.
        let valid = http::HeaderName::try_from(k.as_str()).is_ok() && http::HeaderValue::try_from(v.as_str()).is_ok();
        if valid && !TRANSPORT_HEADERS.contains(&k.as_str()) {
            headers.push((k, v));
        }
    }
    inflight(state).head(id, status as u16, headers);
}

#[op2]
fn op_wt_write(state: &mut OpState, #[smi] id: u32, #[serde] chunk: deno_core::StringOrBuffer) -> bool {
    let bytes = match chunk {
        deno_core::StringOrBuffer::String(s) => Bytes::from(s),
        deno_core::StringOrBuffer::Buffer(b) => Bytes::copy_from_slice(&b),
    };
    inflight(state).write(id, bytes)
}

#[op2(fast)]
fn op_wt_end(state: &mut OpState, #[smi] id: u32) {
    inflight(state).end(id);
}

#[op2(fast)]
fn op_wt_console(state: &mut OpState, #[smi] id: u32, #[smi] level: u32, #[string] msg: &str) {
    // Every line costs its envelope too, so a flood of empty lines runs
    // out of budget as surely as one of long ones.
    let cost = msg.len().saturating_add(console::LINE_COST);
    let (verdict, req_id) = {
        let mut inflight = inflight(state);
        (inflight.log_budget(id, cost, LOG_BUDGET), inflight.req_id(id).cloned())
    };
    let msg = match (verdict, &req_id) {
        (Some(true), _) => msg,
        (Some(false), Some(_)) => "console output of this request passed 1 MiB; further lines are dropped",
        (Some(false), None) => "console output outside a request passed 1 MiB a second; further lines are dropped for now",
        (None, _) => return,
    };
    let container = state.borrow::<HostInfo>().container.clone();
    let sink = &state.borrow::<Console>().0;
    let msg = console::truncate(msg, sink.line_bytes()).into_owned();
    sink.log(ConsoleLine { container, req_id, level: console::level::clamp(level), msg });
}
