//! The startup snapshot: `js_runtime/` evaluated once per process, so every
//! isolate after that is a deserialisation, not a bootstrap. Built lazily on
//! first use (node start, or the first embedded run) on a thread of its
//! own, because V8 wants no other isolate entered on the creating thread.

use std::sync::OnceLock;

use deno_core::{v8, JsRuntimeForSnapshot, RuntimeOptions};

use super::ops::webtask_runtime;

static SNAPSHOT: OnceLock<&'static [u8]> = OnceLock::new();
static V8_FLAGS: OnceLock<u32> = OnceLock::new();
static SINGLE_THREADED_PLATFORM: OnceLock<v8::SharedRef<v8::Platform>> = OnceLock::new();

/// Sets process-wide V8 flags; only the first call takes effect, since V8
/// reads them once when its platform starts.
pub fn init_v8(stack_kb: u32, array_buffer_mb: u64) {
    set_flags(stack_kb, array_buffer_mb, &[]);
}

/// Starts V8 single-threaded, as workers run it: a platform with no
/// threads, and `--single-threaded` so V8 asks for none. A worker's GC and
/// compilation then run on its isolate's thread, where its CPU limit sees
/// them, and a worker has no V8 threads to start. Nobody else drains this
/// platform's foreground queue (deno_core drains only its own platform's):
/// [`run_platform_tasks`] does.
pub fn start_v8_single_threaded(stack_kb: u32, array_buffer_mb: u64) {
    set_flags(stack_kb, array_buffer_mb, &["--single-threaded"]);
    let platform = SINGLE_THREADED_PLATFORM.get_or_init(|| v8::new_single_threaded_default_platform(false).make_shared());
    deno_core::JsRuntime::init_platform(Some(platform.clone()));
}

/// Runs the foreground tasks V8 has posted for `isolate` (WebAssembly's
/// async compilation, FinalizationRegistry callbacks, GC steps) when this
/// process runs the single-threaded platform; whether any ran.
pub fn run_platform_tasks(isolate: &v8::Isolate) -> bool {
    let Some(platform) = SINGLE_THREADED_PLATFORM.get() else { return false };
    // A bounded batch: a task may post another (a FinalizationRegistry
    // callback making garbage), and the event loop must get its turn, where
    // a CPU-limit termination lands, between batches.
    let mut ran = false;
    for _ in 0..64 {
        if !v8::Platform::pump_message_loop(platform, isolate, false) {
            break;
        }
        ran = true;
    }
    ran
}

fn set_flags(stack_kb: u32, array_buffer_mb: u64, extra: &[&str]) {
    let applied = *V8_FLAGS.get_or_init(|| {
        // Wasm memories are reserved by V8 itself, not through the capped
        // ArrayBuffer allocator: bound each one to the same cap.
        let wasm_pages = array_buffer_mb.saturating_mul(16).max(1);
        let mut flags = vec![String::new(), format!("--stack-size={stack_kb}"), format!("--wasm-max-mem-pages={wasm_pages}")];
        flags.extend(extra.iter().map(|f| f.to_string()));
        let rest = deno_core::v8_set_flags(flags);
        debug_assert!(rest.len() <= 1, "unknown V8 flags: {rest:?}");
        // V8 seeds Math.random and its hash tables from /dev/urandom,
        // which a jailed worker cannot open; without a source it falls
        // back to the clock.
        v8::V8::set_entropy_source(system_entropy);
        stack_kb
    });
    if applied != stack_kb {
        tracing::warn!(applied, requested = stack_kb, "V8 stack size is process-wide; keeping the first value");
    }
}

fn system_entropy(buf: &mut [u8]) -> bool {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf).is_ok()
}

/// Uses `blob` (built by another process of this binary) instead of
/// building one; a no-op if this process has one already.
pub fn install(blob: &'static [u8]) {
    let _ = SNAPSHOT.set(blob);
}

/// The snapshot blob, built on first call.
pub fn get() -> &'static [u8] {
    SNAPSHOT.get_or_init(|| {
        std::thread::Builder::new()
            .name("webtask-snapshot".into())
            .spawn(build)
            .expect("spawn snapshot thread")
            .join()
            .expect("building the startup snapshot failed")
    })
}

fn build() -> &'static [u8] {
    // V8 starts here in the mode isolates run in. Left to the snapshot
    // runtime, deno_core would start it with `--predictable
    // --random-seed=42` for the whole process, and every isolate this
    // process creates afterwards (in-process containers, embedders) would
    // draw the same Math.random sequence.
    deno_core::JsRuntime::init_platform(None);
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let _enter = tokio.enter();
    let rt = JsRuntimeForSnapshot::new(RuntimeOptions {
        extensions: vec![webtask_runtime::init()],
        ..Default::default()
    });
    Box::leak(rt.snapshot())
}
