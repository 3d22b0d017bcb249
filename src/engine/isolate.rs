//! One V8 isolate serving one container: created from the startup snapshot,
//! locked down (no host objects left on the guest global), with its own
//! compile cache. It starts requests and drives their event loop; it does
//! not decide when to do either (that is `host`'s job).

use std::cell::{RefCell, RefMut};
use std::future::Future;
use std::rc::Rc;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use deno_core::{v8, JsRuntime, PollEventLoopOptions, RuntimeOptions};
use lru::LruCache;
use sha2::{Digest, Sha256};

use super::exchange::Exchanges;
use super::inflight::Inflight;
use super::ops::{webtask_runtime, Console, Egress, HostInfo};
use super::request::Context;
use super::watchdog::{CpuGuard, Kill};

use super::{alloc, script, snapshot, stack, Code, Error, IsolateSpec, Limits, ScriptError, Stats};

/// Compiled webtask functions kept per isolate.
const COMPILE_CACHE_ENTRIES: usize = 128;

pub struct Isolate {
    rt: JsRuntime,
    inflight: Rc<RefCell<Inflight>>,
    guard: Arc<CpuGuard>,
    stats: Arc<Stats>,
    run_fn: v8::Global<v8::Function>,
    instantiate_fn: v8::Global<v8::Function>,
    compiled: LruCache<[u8; 32], v8::Global<v8::Function>>,
}

impl Isolate {
    /// A fresh isolate from the snapshot, bound to `guard` for CPU and heap kills.
    pub fn new(spec: &IsolateSpec, guard: &Arc<CpuGuard>, container: Arc<str>) -> Result<Self, Error> {
        let limits = &spec.limits;
        let stats = spec.stats.clone();
        let heap = limits.heap_mb as usize * 1024 * 1024;
        let (allocator, budget) = alloc::capped(limits.array_buffer_mb as usize * 1024 * 1024);
        let params = v8::CreateParams::default().heap_limits(0, heap).array_buffer_allocator(allocator);
        let mut rt = JsRuntime::try_new(RuntimeOptions {
            startup_snapshot: Some(snapshot::get()),
            extensions: vec![webtask_runtime::init()],
            create_params: Some(params),
            ..Default::default()
        })
        .map_err(Error::internal)?;
        guard.attach(rt.v8_isolate().thread_safe_handle());
        rt.v8_isolate().set_prepare_stack_trace_callback(stack::prepare);
        // Atomics.wait would block the thread with no CPU use, out of reach
        // of both the CPU limit and the event loop's deadlines.
        rt.v8_isolate().set_allow_atomics_wait(false);

        let heap_guard = guard.clone();
        let limit_mb = limits.heap_mb;
        // SAFETY: a copy of the pointer V8 owns; used only inside the
        // callback, which V8 removes together with the isolate.
        let isolate_ptr = unsafe { rt.v8_isolate().as_raw_isolate_ptr() };
        rt.add_near_heap_limit_callback(move |current, _initial| {
            // V8 also calls this as a last resort when an ArrayBuffer
            // allocation fails; with the JS heap far from full that is the
            // capped allocator saying no, which the guest sees as a
            // RangeError, not a reason to kill the isolate.
            // SAFETY: the callback runs on the isolate's thread while the
            // isolate is alive (it is removed with the runtime).
            let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(isolate_ptr) };
            let used = isolate.get_heap_statistics().used_heap_size();
            if used < current / 2 {
                return current;
            }
            heap_guard.terminate(Kill::Memory { limit_mb });
            // Room for V8 to unwind to the termination instead of aborting
            // the process; the isolate is discarded right after. Bounded:
            // past four times the limit V8 is allowed to fail for real (in a
            // worker that ends only the worker; its cgroup bounds it anyway).
            let ceiling = (limit_mb as usize).saturating_mul(4 << 20);
            if current >= ceiling {
                current
            } else {
                current.saturating_mul(2).min(ceiling)
            }
        });

        let inflight = Rc::new(RefCell::new(Inflight::new(limits.response_bytes)));
        {
            let state = rt.op_state();
            let mut state = state.borrow_mut();
            state.put(HostInfo { container });
            state.put(Egress { fetcher: spec.fetcher.clone(), max_subrequests: limits.subrequests });
            state.put(Console(spec.console.clone()));
            state.put(inflight.clone());
            state.put(Exchanges::default());
            // What the ops allocate for the guest counts against the cap too.
            state.put(budget);
        }

        let (run_fn, instantiate_fn) = lockdown(&mut rt, limits)?;
        stats.isolates_created.fetch_add(1, Ordering::Relaxed);
        stats.live_isolates.fetch_add(1, Ordering::Relaxed);
        Ok(Isolate {
            rt,
            inflight,
            guard: guard.clone(),
            stats,
            run_fn,
            instantiate_fn,
            compiled: LruCache::new(NonZeroUsize::new(COMPILE_CACHE_ENTRIES).unwrap()),
        })
    }

    pub fn inflight(&mut self) -> RefMut<'_, Inflight> {
        self.inflight.borrow_mut()
    }

    /// Drops the egress exchanges that outlived their request's deadline.
    pub fn sweep_exchanges(&mut self, now: tokio::time::Instant) {
        self.rt.op_state().borrow_mut().borrow_mut::<Exchanges>().sweep(now);
    }

    /// When the next egress exchange outlives its request's deadline.
    pub fn exchange_deadline(&mut self) -> Option<tokio::time::Instant> {
        self.rt.op_state().borrow().borrow::<Exchanges>().earliest_deadline()
    }

    /// The request whose code was running when V8 was stopped. The runtime
    /// marks every callback with its request id as V8's continuation-
    /// preserved data (promise jobs carry it along by themselves), and a
    /// termination skips the code that would have cleared it.
    pub fn interrupted_request(&mut self) -> Option<u32> {
        let context = self.rt.main_context();
        let isolate = self.rt.v8_isolate();
        v8::scope_with_context!(scope, isolate, context);
        let data = scope.get_continuation_preserved_embedder_data();
        if !data.is_number() {
            return None;
        }
        let id = data.number_value(scope)?;
        (id >= 1.0 && id.fract() == 0.0 && id <= u32::MAX as f64).then_some(id as u32)
    }

    /// Names the container this isolate serves, for its log records.
    pub fn set_container(&mut self, container: Arc<str>) {
        self.rt.op_state().borrow_mut().put(HostInfo { container });
    }

    /// Destroys the isolate, keeping the requests that were running in it.
    pub fn into_inflight(self) -> Rc<RefCell<Inflight>> {
        self.inflight.clone()
    }

    /// Starts request `id`: compiles the code (or takes it from the cache)
    /// and calls the runner, which settles the request through the ops now
    /// or once the event loop has done its part. A kill by the watchdog or
    /// the heap limit is left for the caller to find on the guard.
    pub fn start(&mut self, id: u32, code: &Code, ctx: &Context) {
        let key: [u8; 32] = Sha256::digest(code.as_bytes()).into();
        let cached = self.compiled.get(&key).cloned();
        let context = self.rt.main_context();
        let isolate = self.rt.v8_isolate();
        v8::scope_with_context!(scope, isolate, context);
        let func = match cached {
            Some(f) => f,
            None => match compile(scope, &self.instantiate_fn, code.as_str()) {
                Ok(f) => {
                    self.stats.compilations.fetch_add(1, Ordering::Relaxed);
                    self.compiled.put(key, f.clone());
                    f
                }
                Err(err) => return fail(&self.guard, &self.inflight, id, err),
            },
        };
        let func = v8::Local::new(scope, func);
        let args = match context_args(scope, func, id, ctx) {
            Ok(args) => args,
            Err(err) => return fail(&self.guard, &self.inflight, id, err),
        };
        let run = v8::Local::new(scope, &self.run_fn);
        let undefined = v8::undefined(scope).into();
        // The runner catches guest exceptions itself; a None here is a
        // termination, which the host reads from the guard.
        v8::tc_scope!(let tc, scope);
        run.call(tc, undefined, &args);
    }

    pub fn poll_event_loop(&mut self, cx: &mut TaskContext) -> Poll<Result<(), deno_core::error::CoreError>> {
        let poll = self.rt.poll_event_loop(cx, PollEventLoopOptions::default());
        // V8 posts its tasks while JS runs, on this thread, so right after a
        // turn is when they appear; one that ran may have settled a promise.
        if poll.is_pending() && snapshot::run_platform_tasks(self.rt.v8_isolate()) {
            cx.waker().wake_by_ref();
        }
        poll
    }
}

/// Runs each webtask of `runs` once, in order, in one fresh isolate with
/// no network, on a thread of the caller's that has no isolate, each within
/// `limits.wall_ms`, calling `after` in the isolate's context after each
/// (failed or not); each webtask's answer as JSON. Stops at a run that
/// leaves the isolate killed.
pub(super) fn run_offline(
    limits: &Limits,
    runs: &[(&str, Context)],
    mut after: impl FnMut(&mut v8::PinScope),
) -> Result<Vec<Result<serde_json::Value, Error>>, Error> {
    let tokio = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(Error::internal)?;
    let _enter = tokio.enter();
    let guard = CpuGuard::for_current_thread(limits.cpu_ms);
    let mut isolate = Isolate::new(&IsolateSpec::offline(limits.clone()), &guard, "".into())?;
    let wall = std::time::Duration::from_millis(limits.wall_ms);
    let mut answers = Vec::with_capacity(runs.len());
    for (code, context) in runs {
        let body = match tokio.block_on(tokio::time::timeout(wall, isolate.run_to_end(&guard, limits, code, context))) {
            Ok(body) => body,
            Err(_) => Err(Error::WallLimit { limit_ms: limits.wall_ms }),
        };
        if let Some(kill) = guard.killed() {
            answers.push(Err(Error::internal(format!("killed: {kill:?}"))));
            break;
        }
        answers.push(body.and_then(|body| serde_json::from_slice(&body).map_err(Error::internal)));
        let context = isolate.rt.main_context();
        v8::scope_with_context!(scope, isolate.rt.v8_isolate(), context);
        after(scope);
    }
    Ok(answers)
}

impl Isolate {
    /// Starts `code` and drives the event loop until it has answered in
    /// full; the body.
    async fn run_to_end(&mut self, guard: &CpuGuard, limits: &Limits, code: &str, context: &Context) -> Result<bytes::Bytes, Error> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(limits.wall_ms);
        let permit = super::host::Permit(Default::default());
        let id = self.inflight().insert(tx, "offline".into(), guard.now_ns(), deadline, permit);
        self.start(id, &Code::from(code), context);
        let reply = std::future::poll_fn(|cx| {
            if let Poll::Ready(reply) = std::pin::Pin::new(&mut rx).poll(cx) {
                return Poll::Ready(reply.map_err(|_| Error::internal("the run was dropped")));
            }
            match self.poll_event_loop(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(Error::internal(e))),
                Poll::Ready(Ok(())) => match rx.try_recv() {
                    Ok(reply) => Poll::Ready(Ok(reply)),
                    Err(_) => Poll::Ready(Err(Error::internal("the run never answered"))),
                },
                Poll::Pending => Poll::Pending,
            }
        })
        .await??;
        let mut stream = match reply.body {
            super::ReplyBody::Full(body) => return Ok(body),
            super::ReplyBody::Stream(stream) => stream,
        };
        let mut body = Vec::new();
        std::future::poll_fn(|cx| loop {
            match stream.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => body.extend_from_slice(&chunk?),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => match self.poll_event_loop(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::internal(e))),
                    Poll::Pending => return Poll::Pending,
                    // Nothing left to run: what the stream has is all it gets.
                    Poll::Ready(Ok(())) => match stream.try_recv() {
                        Ok(chunk) => body.extend_from_slice(&chunk?),
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Poll::Ready(Ok(())),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                            return Poll::Ready(Err(Error::internal("the answer never ended")))
                        }
                    },
                },
            }
        })
        .await?;
        Ok(body.into())
    }
}

/// Calls the runtime's one-time `__webtask_lockdown` (it removes itself and
/// every host object from the global) and keeps the entry points it returns.
fn lockdown(rt: &mut JsRuntime, limits: &Limits) -> Result<(v8::Global<v8::Function>, v8::Global<v8::Function>), Error> {
    deno_core::scope!(scope, rt);
    let global = scope.get_current_context().global(scope);
    let name = v8::String::new(scope, "__webtask_lockdown").unwrap();
    let lockdown = global
        .get(scope, name.into())
        .and_then(|f| v8::Local::<v8::Function>::try_from(f).ok())
        .ok_or_else(|| Error::internal("snapshot lacks __webtask_lockdown"))?;
    let undefined = v8::undefined(scope).into();
    let response_limit = v8::Number::new(scope, limits.response_bytes as f64).into();
    let entry = lockdown.call(scope, undefined, &[response_limit]).ok_or_else(|| Error::internal("runtime lockdown failed"))?;
    let entry = v8::Local::<v8::Object>::try_from(entry).map_err(Error::internal)?;
    Ok((get_fn(scope, entry, "run")?, get_fn(scope, entry, "instantiate")?))
}

/// Fails request `id`, unless the isolate was just killed: then the host
/// reports the kill that caused the failure instead.
impl Drop for Isolate {
    fn drop(&mut self) {
        self.stats.live_isolates.fetch_sub(1, Ordering::Relaxed);
    }
}

fn fail(guard: &CpuGuard, inflight: &RefCell<Inflight>, id: u32, err: Error) {
    if guard.killed().is_none() {
        inflight.borrow_mut().fail(id, err);
    }
}

fn get_fn(
    scope: &mut v8::PinScope,
    obj: v8::Local<v8::Object>,
    name: &str,
) -> Result<v8::Global<v8::Function>, Error> {
    let key = v8::String::new(scope, name).unwrap();
    let value = obj.get(scope, key.into()).ok_or_else(|| Error::internal(format!("runtime lacks {name}")))?;
    let f = v8::Local::<v8::Function>::try_from(value).map_err(Error::internal)?;
    Ok(v8::Global::new(scope, f))
}

/// Compiles the webtask body as a function of (module, exports, require)
/// named `webtask.js`, so stack lines and syntax errors point at the
/// caller's own line and column, then evaluates it to the webtask function.
fn compile(
    scope: &mut v8::PinScope,
    instantiate: &v8::Global<v8::Function>,
    code: &str,
) -> Result<v8::Global<v8::Function>, Error> {
    let src = v8::String::new(scope, code).ok_or_else(|| Error::bad_request("code is too large"))?;
    let name = v8::String::new(scope, stack::GUEST_SCRIPT).unwrap();
    let factory = script::compile_function(scope, name, src, &["module", "exports", "require"])
        .map_err(|e| Error::SyntaxError { message: e.message, line: e.line, column: e.column })?;
    v8::tc_scope!(let tc, scope);
    let instantiate = v8::Local::new(tc, instantiate);
    let undefined = v8::undefined(tc).into();
    let Some(result) = instantiate.call(tc, undefined, &[factory.into()]) else {
        return Err(Error::internal("webtask instantiation was interrupted"));
    };
    if let Ok(f) = v8::Local::<v8::Function>::try_from(result) {
        return Ok(v8::Global::new(tc, f));
    }
    // `instantiate` describes a failure as [name, message, stack, details].
    Err(Error::Script(describe(tc, result)))
}

fn describe(scope: &mut v8::PinScope, value: v8::Local<v8::Value>) -> ScriptError {
    let text = |i: u32| -> String {
        v8::Local::<v8::Object>::try_from(value)
            .ok()
            .and_then(|arr| arr.get_index(scope, i))
            .map(|v| v.to_rust_string_lossy(scope))
            .unwrap_or_default()
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    ScriptError { name: non_empty(text(0)), message: text(1), stack: non_empty(text(2)), details: text(3) }
}

/// Arguments of the JS runner: (fn, id, method, url, headers, query, body,
/// rawBody, data, secrets, meta).
fn context_args<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    func: v8::Local<'s, v8::Function>,
    id: u32,
    ctx: &Context,
) -> Result<[v8::Local<'s, v8::Value>; 11], Error> {
    let headers = string_map(scope, &ctx.headers);
    let query = query_object(scope, &ctx.query);
    let (body, raw) = body_values(scope, ctx)?;
    let data = json_object(scope, &ctx.data)?;
    let secrets = json_object(scope, &ctx.secrets)?;
    let meta = json_object(scope, &ctx.meta)?;
    Ok([
        func.into(),
        v8::Integer::new_from_unsigned(scope, id).into(),
        v8_str(scope, &ctx.method),
        v8_str(scope, &ctx.url),
        headers.into(),
        query.into(),
        body,
        raw,
        data,
        secrets,
        meta,
    ])
}

fn v8_str<'s>(scope: &mut v8::PinScope<'s, '_>, s: &str) -> v8::Local<'s, v8::Value> {
    v8::String::new(scope, s).map(Into::into).unwrap_or_else(|| v8::undefined(scope).into())
}

/// `context.headers`, as Node's `IncomingMessage.headers` joins a repeated
/// name: `set-cookie` into an array, `cookie` with "; ", the names Node
/// takes once (content-type, host, ...) keep their first value, any other
/// with ", ". Names come lowercased.
fn string_map<'s>(scope: &mut v8::PinScope<'s, '_>, pairs: &[(String, String)]) -> v8::Local<'s, v8::Object> {
    let obj = v8::Object::new(scope);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(k2, _)| k2 == k) {
            continue;
        }
        let mut values = pairs[i..].iter().filter(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
        let key = v8::String::new(scope, k).unwrap();
        let repeated = pairs[i + 1..].iter().any(|(k2, _)| k2 == k);
        let value = match k.as_str() {
            // Nearly every header: its one value, nothing joined.
            name if !repeated && name != "set-cookie" => v8_str(scope, v),
            "set-cookie" => {
                let items: Vec<_> = values.map(|v| v8_str(scope, v)).collect();
                v8::Array::new_with_elements(scope, &items).into()
            }
            "cookie" => v8_str(scope, &values.collect::<Vec<_>>().join("; ")),
            name if TAKEN_ONCE.contains(&name) => v8_str(scope, values.next().unwrap_or_default()),
            _ => v8_str(scope, &values.collect::<Vec<_>>().join(", ")),
        };
        obj.create_data_property(scope, key.into(), value);
    }
    obj
}

/// Headers whose repeats Node 20 discards (`message.headers`).
const TAKEN_ONCE: [&str; 18] = [
    "age", "authorization", "content-length", "content-type", "etag", "expires", "from", "host",
    "if-modified-since", "if-unmodified-since", "last-modified", "location", "max-forwards",
    "proxy-authorization", "referer", "retry-after", "server", "user-agent",
];

/// Query object as Node's querystring builds it: repeated names become
/// arrays. Only own properties count as repeats: `?toString=a` is "a",
/// and `__proto__` is a name like any other.
fn query_object<'s>(scope: &mut v8::PinScope<'s, '_>, pairs: &[(String, String)]) -> v8::Local<'s, v8::Object> {
    let obj = v8::Object::new(scope);
    for (k, v) in pairs {
        let key = v8::String::new(scope, k).unwrap();
        let value = v8_str(scope, v);
        let repeat = obj.has_own_property(scope, key.into()).unwrap_or(false);
        match obj.get(scope, key.into()).filter(|_| repeat) {
            Some(existing) => {
                let arr = match v8::Local::<v8::Array>::try_from(existing) {
                    Ok(arr) => arr,
                    Err(_) => {
                        let arr = v8::Array::new(scope, 0);
                        arr.set_index(scope, 0, existing);
                        obj.create_data_property(scope, key.into(), arr.into());
                        arr
                    }
                };
                arr.set_index(scope, arr.length(), value);
            }
            _ => {
                obj.create_data_property(scope, key.into(), value);
            }
        }
    }
    obj
}

/// `context.body` (parsed for JSON and urlencoded) and the raw body that
/// the `req` stream of `(context, req, res)` carries: the body's text, or,
/// when it is not UTF-8 (an image, a signed binary payload), its exact
/// bytes, so a webhook's signature still checks out over them.
fn body_values<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    ctx: &Context,
) -> Result<(v8::Local<'s, v8::Value>, v8::Local<'s, v8::Value>), Error> {
    let Some(bytes) = ctx.body.as_ref().filter(|b| !b.is_empty()) else {
        let u = v8::undefined(scope).into();
        return Ok((u, u));
    };
    let text = String::from_utf8_lossy(bytes);
    let raw = v8::String::new(scope, &text).ok_or_else(|| Error::bad_request("request body is too large"))?;
    let media = ctx.content_type.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let body = match media.as_str() {
        "application/json" => {
            v8::tc_scope!(let tc, scope);
            match v8::json::parse(tc, raw) {
                Some(v) => v,
                None => return Err(Error::bad_request("request body is not valid JSON")),
            }
        }
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(bytes).into_owned().collect();
            query_object(scope, &pairs).into()
        }
        _ => raw.into(),
    };
    // Lossy made a copy only if the body was not UTF-8.
    if matches!(text, std::borrow::Cow::Owned(_)) {
        let store = v8::ArrayBuffer::new_backing_store_from_vec(bytes.to_vec()).make_shared();
        let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
        let view = v8::Uint8Array::new(scope, buffer, 0, bytes.len()).ok_or_else(|| Error::internal("request body view"))?;
        return Ok((body, view.into()));
    }
    Ok((body, raw.into()))
}

fn json_object<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<v8::Local<'s, v8::Value>, Error> {
    if map.is_empty() {
        return Ok(v8::Object::new(scope).into());
    }
    deno_core::serde_v8::to_v8(scope, map).map_err(Error::internal)
}
