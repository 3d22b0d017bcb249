//! V8 code caches for the code every container shares and no tenant wrote:
//! the Node shim's bundle, streams.js and the files of the module set. None
//! of it is in the startup snapshot (it would cost every isolate its
//! deserialisation), so without a cache each container's first
//! `require('express')` parses and compiles some fifty files again.
//!
//! Built once per node ([`build`]): an isolate from the snapshot requires
//! every module of the set and every built-in, then answers a request
//! through an Express app; the caches are taken after each of those runs
//! (each file keeps its largest), so they hold the functions compiled
//! while the code ran, not only the files' top levels (what Chromium calls
//! a cache after execution).
//! Consumed by every isolate's first compile of that code. A cache V8
//! rejects (another V8 or other flags) costs a normal compile, and is
//! counted and logged once per process.
//!
//! Never for tenant code: a cache shared across containers would let one
//! tenant time whether another compiled a given source, and one taken from
//! an isolate a tenant ran in could carry bytecode of that tenant's making
//! into everyone's. The builder runs only this binary's own code.
//!
//! V8 checks a cache against the length of its source only, and a release
//! V8 does not checksum it: a blob carries the stamp of the sources it was
//! built from (build.rs), and one built from others is refused whole.
//!
//! The blob: `WTCC`, a count of slots (u32), the stamp (u64), then for each
//! slot its offset and length in the data that follows (u32 each; length 0:
//! no cache), all little endian. Every cache starts 8-aligned, as V8 wants
//! to read it in place. Slot 0 is the bundle, 1 streams.js, 2 + n the set's
//! file n.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use deno_core::v8;

const MAGIC: &[u8; 4] = b"WTCC";
const HEADER: usize = 16;

/// The sources this binary caches code for (see build.rs).
const STAMP: u64 = match u64::from_str_radix(env!("WEBTASK_SHARED_CODE_STAMP"), 10) {
    Ok(stamp) => stamp,
    Err(_) => panic!("WEBTASK_SHARED_CODE_STAMP is not a number"),
};

/// What a cache is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The Node shim's polyfill bundle.
    Bundle,
    /// js_runtime/node/streams.js.
    Streams,
    /// File `n` of the module set's table.
    ModuleFile(u32),
}

impl Key {
    fn slot(self) -> usize {
        match self {
            Key::Bundle => 0,
            Key::Streams => 1,
            Key::ModuleFile(n) => 2 + n as usize,
        }
    }
}

static INSTALLED: OnceLock<&'static [u8]> = OnceLock::new();
static REJECTED: AtomicU64 = AtomicU64::new(0);
static CONSUMED: AtomicU64 = AtomicU64::new(0);

/// Makes `blob` (from [`build`], in this process or the node's) the cache
/// every later compile of shared code consults; the first call wins. One
/// that is malformed or built from other sources is refused, and said so.
pub fn install(blob: &'static [u8]) {
    if blob.is_empty() {
        return;
    }
    match check(blob) {
        Ok(()) => {
            if INSTALLED.set(blob).is_ok() {
                tracing::debug!(bytes = blob.len(), "code cache installed");
            }
        }
        Err(why) => tracing::warn!("code cache refused ({why}): compiling shared code without it"),
    }
}

/// Whether `blob` is a well-formed cache for this binary's shared code.
pub fn check(blob: &[u8]) -> Result<(), String> {
    check_shape(blob)?;
    let stamp = u64::from_le_bytes(blob[8..16].try_into().expect("8 bytes"));
    if stamp != STAMP {
        return Err(format!("built for other sources: stamp {stamp:x}, this binary's {STAMP:x}"));
    }
    Ok(())
}

/// Whether `blob` is a well-formed cache, for whichever sources: what a
/// node can check of a cache for workers that may run another binary
/// (`workers.exe`); each of them checks the stamp itself.
pub fn check_shape(blob: &[u8]) -> Result<(), String> {
    if blob.get(..4) != Some(MAGIC) || blob.len() < HEADER {
        return Err("not a code cache".into());
    }
    let slots = u32::from_le_bytes(blob[4..8].try_into().expect("4 bytes")) as usize;
    let data = slots.checked_mul(8).and_then(|i| i.checked_add(HEADER)).filter(|&d| d <= blob.len()).ok_or("index past the end")?;
    for n in 0..slots {
        let word = |at: usize| u32::from_le_bytes(blob[at..at + 4].try_into().expect("4 bytes")) as usize;
        let (off, len) = (word(HEADER + 8 * n), word(HEADER + 8 * n + 4));
        if data.checked_add(off).and_then(|o| o.checked_add(len)).is_none_or(|end| end > blob.len()) || off % 8 != 0 {
            return Err(format!("slot {n} out of bounds or unaligned"));
        }
    }
    Ok(())
}

/// The size of the cache this process has installed; 0 without one.
pub fn installed_bytes() -> usize {
    INSTALLED.get().map_or(0, |blob| blob.len())
}

/// The cache for `key`, if one is installed and holds it.
pub fn lookup(key: Key) -> Option<&'static [u8]> {
    slot(INSTALLED.get()?, key.slot())
}

/// Slot `slot` of a blob [`check`] passed.
fn slot(blob: &[u8], slot: usize) -> Option<&[u8]> {
    let word = |at: usize| -> Option<usize> { Some(u32::from_le_bytes(blob.get(at..at + 4)?.try_into().ok()?) as usize) };
    let slots = word(4)?;
    if slot >= slots {
        return None;
    }
    let (off, len) = (word(HEADER + 8 * slot)?, word(HEADER + 8 * slot + 4)?);
    let data = HEADER + 8 * slots;
    (len > 0).then(|| blob.get(data + off..data + off + len)).flatten()
}

/// Counts what V8 did with a cache offered to a compile.
pub(super) fn note(rejected: bool) {
    if !rejected {
        CONSUMED.fetch_add(1, Ordering::Relaxed);
    } else if REJECTED.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!("V8 rejected the shared code cache (built by another V8 or with other flags): compiling without it");
    }
}

/// Caches V8 took and rejected in this process so far.
pub fn counts() -> (u64, u64) {
    (CONSUMED.load(Ordering::Relaxed), REJECTED.load(Ordering::Relaxed))
}

thread_local! {
    /// While [`build`] runs on this thread: what was compiled, to take the
    /// caches from after each run.
    static RECORDING: RefCell<Option<Vec<(Key, Compiled)>>> = const { RefCell::new(None) };
}

enum Compiled {
    Function(v8::Global<v8::Function>),
    Script(v8::Global<v8::UnboundScript>),
}

/// Keeps `f` for the cache if [`build`] is running on this thread.
pub(super) fn record_function(scope: &mut v8::PinScope, key: Key, f: v8::Local<v8::Function>) {
    RECORDING.with(|r| {
        if let Some(list) = r.borrow_mut().as_mut() {
            list.push((key, Compiled::Function(v8::Global::new(scope, f))));
        }
    });
}

/// Keeps `script` for the cache if [`build`] is running on this thread.
pub(super) fn record_script(scope: &mut v8::PinScope, key: Key, script: v8::Local<v8::Script>) {
    RECORDING.with(|r| {
        if let Some(list) = r.borrow_mut().as_mut() {
            let unbound = script.get_unbound_script(scope);
            list.push((key, Compiled::Script(v8::Global::new(scope, unbound))));
        }
    });
}

/// Built-ins [`build`] requires after the set (most are loaded by then).
const BUILTINS: &[&str] = &[
    "assert", "buffer", "crypto", "events", "http", "https", "os", "path", "process", "punycode", "querystring",
    "stream", "stream/promises", "string_decoder", "timers", "url", "util", "zlib",
];

/// What [`build`] runs: every module of the set, every built-in (the
/// bundle and streams.js load with the first that needs them), the web
/// APIs and util's inspect, which load lazily; the names of those that
/// failed to load.
fn load_everything() -> String {
    let set: Vec<String> = super::node::modules::list().into_iter().map(|(name, _)| name).collect();
    let names = serde_json::to_string(&[set, BUILTINS.iter().map(|b| b.to_string()).collect()].concat()).expect("names serialise");
    format!(
        "module.exports = function (cb) {{\n\
           const failed = [];\n\
           for (const m of {names}) {{\n\
             try {{ require(m); }} catch (e) {{ failed.push(m + ': ' + e); }}\n\
           }}\n\
           try {{ new Response('x').body.getReader(); }} catch (e) {{ failed.push('streams: ' + e); }}\n\
           try {{ require('util').format('%s %o', new Map([[1, {{ a: [2] }}]]), new Error('e')); }} catch (e) {{ failed.push('inspect: ' + e); }}\n\
           cb(null, failed);\n\
         }};"
    )
}

/// What [`build`] runs next: a request through an Express app, the way
/// most webtasks answer, so the functions express and webtask-tools run
/// per request are compiled, and cached, too.
/// (Without the module set, it answers why.)
const EXPRESS_REQUEST: &str = "try {\n\
      const app = require('express')();\n\
      app.use(require('body-parser').json());\n\
      app.get('/', (req, res) => res.status(200).set('x-a', 'b').json({ q: req.query.q }));\n\
      module.exports = require('webtask-tools').fromExpress(app);\n\
    } catch (e) {\n\
      module.exports = function (cb) { cb(null, String(e)); };\n\
    }";

/// Runs everything shared in a fresh isolate on a thread of its own and
/// returns the caches as one blob. V8 must have been started the way the
/// isolates that will use the blob start it (same flags), and the
/// snapshot be in place.
pub fn build(limits: &super::Limits) -> Vec<u8> {
    let limits = for_building(limits.clone());
    builder_thread(&limits)
        .spawn(move || build_here(limits))
        .expect("spawn code-cache thread")
        .join()
        .unwrap_or_default()
}

/// The builder's thread: as a container's, room above V8's stack limit.
fn builder_thread(limits: &super::Limits) -> std::thread::Builder {
    std::thread::Builder::new().name("webtask-code-cache".into()).stack_size((limits.stack_kb as usize + 4096) * 1024)
}

/// Loading the whole set is far more than one request's worth; each run
/// still ends within `wall_ms`, well inside the node's wait for the builder.
fn for_building(mut limits: super::Limits) -> super::Limits {
    limits.cpu_ms = 120_000;
    limits.wall_ms = 10_000;
    limits.heap_mb = limits.heap_mb.max(512);
    limits
}

/// Builds the cache on a thread of its own and installs it when done,
/// once per process: for isolates in this process, which compile without
/// it until then.
pub fn build_in_background(limits: &super::Limits) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let limits = limits.clone();
        let spawned = builder_thread(&limits).spawn(move || {
            let started = std::time::Instant::now();
            let blob = build_here(for_building(limits));
            tracing::debug!(bytes = blob.len(), ms = started.elapsed().as_millis() as u64, "code cache built");
            install(Box::leak(blob.into_boxed_slice()));
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no code cache: compiling shared code per isolate");
        }
    });
}

fn build_here(limits: super::Limits) -> Vec<u8> {
    RECORDING.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let load = load_everything();
    let mut request = super::Context::new().query("q", "1");
    request.url = "/?q=1".into();
    let runs = [(load.as_str(), super::Context::new()), (EXPRESS_REQUEST, request)];
    // Taken after each run, keeping each file's largest: V8 flushes the
    // bytecode of functions that have not run for a few GCs, so a file's
    // cache after the request can lack what its loading compiled.
    let mut best: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let answers = super::isolate::run_offline(&limits, &runs, |scope| {
        RECORDING.with(|r| {
            for (key, compiled) in r.borrow().iter().flatten() {
                let Some(cache) = take(scope, compiled) else { continue };
                let kept = best.entry(key.slot()).or_default();
                if cache.len() > kept.len() {
                    *kept = cache;
                }
            }
        });
    });
    RECORDING.with(|r| r.borrow_mut().take());
    let answers = match answers {
        Ok(answers) => answers,
        Err(e) => {
            tracing::warn!(error = %e, "building the code cache failed: compiling shared code per isolate");
            return Vec::new();
        }
    };
    // A run that failed costs the cache what it would have added, no more.
    for (n, answer) in answers.iter().enumerate() {
        match answer {
            Ok(failed) if n == 0 && failed.as_array().is_some_and(|f| !f.is_empty()) => {
                tracing::warn!(%failed, "modules that failed to load while building the code cache");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(run = n, error = %e, "a run of the code-cache builder failed"),
        }
    }
    if best.is_empty() {
        return Vec::new();
    }
    encode(best)
}

fn take(scope: &mut v8::PinScope, compiled: &Compiled) -> Option<Vec<u8>> {
    let cache = match compiled {
        Compiled::Function(f) => v8::Local::new(scope, f).create_code_cache(),
        Compiled::Script(s) => v8::Local::new(scope, s).create_code_cache(),
    }?;
    Some(cache.to_vec())
}

/// The blob for the caches by slot.
fn encode(by_slot: BTreeMap<usize, Vec<u8>>) -> Vec<u8> {
    let slots = by_slot.keys().next_back().map_or(0, |s| s + 1);
    let mut index = vec![(0u32, 0u32); slots];
    let mut data = Vec::new();
    for (slot, cache) in by_slot {
        index[slot] = (data.len() as u32, cache.len() as u32);
        data.extend_from_slice(&cache);
        data.resize(data.len().next_multiple_of(8), 0);
    }
    let mut blob = Vec::with_capacity(HEADER + 8 * slots + data.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&(slots as u32).to_le_bytes());
    blob.extend_from_slice(&STAMP.to_le_bytes());
    for (off, len) in index {
        blob.extend_from_slice(&off.to_le_bytes());
        blob.extend_from_slice(&len.to_le_bytes());
    }
    blob.extend_from_slice(&data);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder's runs: one that fails or stalls is reported and the
    /// next still runs, and the caches are taken after each.
    #[test]
    fn an_offline_run_that_fails_or_stalls_costs_only_itself() {
        let limits = super::super::Limits { wall_ms: 300, cpu_ms: 5_000, ..Default::default() };
        super::super::snapshot_blob(&limits);
        let runs = [
            ("module.exports = function (cb) { cb(null, 1); }", super::super::Context::new()),
            ("module.exports = function (cb) { throw new Error('no'); }", super::super::Context::new()),
            ("module.exports = function (cb) { setInterval(() => {}, 10); }", super::super::Context::new()),
            ("module.exports = function (cb) { cb(null, 2); }", super::super::Context::new()),
        ];
        // On a thread of its own, as the builder: V8 wants no other isolate there.
        let (answers, afters) = std::thread::spawn(move || {
            let mut afters = 0;
            let answers = super::super::isolate::run_offline(&limits, &runs, |_| afters += 1).unwrap();
            (answers, afters)
        })
        .join()
        .unwrap();
        assert_eq!(afters, 4);
        assert_eq!(answers[0].as_ref().unwrap(), &serde_json::json!(1));
        assert!(matches!(answers[1], Err(super::super::Error::Script(_))), "{:?}", answers[1]);
        assert!(matches!(answers[2], Err(super::super::Error::WallLimit { limit_ms: 300 })), "{:?}", answers[2]);
        assert_eq!(answers[3].as_ref().unwrap(), &serde_json::json!(2));
    }

    #[test]
    fn slots_round_trip_aligned_and_bad_blobs_are_refused() {
        let blob = encode(BTreeMap::from([(Key::Streams.slot(), vec![1, 2, 3]), (Key::ModuleFile(3).slot(), vec![9])]));
        assert_eq!(check(&blob), Ok(()));
        assert_eq!(slot(&blob, Key::Streams.slot()), Some(&[1u8, 2, 3][..]));
        assert_eq!(slot(&blob, Key::ModuleFile(3).slot()), Some(&[9u8][..]));
        assert_eq!(slot(&blob, Key::Bundle.slot()), None);
        assert_eq!(slot(&blob, Key::ModuleFile(4).slot()), None);
        let data = HEADER + 8 * (Key::ModuleFile(3).slot() + 1);
        let at = |key: Key| slot(&blob, key.slot()).unwrap().as_ptr() as usize - blob.as_ptr() as usize;
        assert_eq!(((at(Key::Streams) - data) % 8, (at(Key::ModuleFile(3)) - data) % 8), (0, 0));

        assert!(check(&blob[..blob.len() - 8]).is_err(), "cut short");
        let mut other = blob.clone();
        other[8] ^= 1;
        assert!(check(&other).unwrap_err().starts_with("built for other sources"));
        let mut far = blob.clone();
        far[HEADER..HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&far).is_err(), "offset past the end");
        assert!(check(b"WTCX\x01\0\0\0").is_err());
        assert!(check(b"").is_err());
    }
}
