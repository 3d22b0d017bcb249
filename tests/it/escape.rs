//! Guest code trying to reach the host: each test is an escape attempt that
//! must find only the guest's own global.

use serde_json::json;

use crate::support::every_target;

#[tokio::test]
async fn function_constructor_yields_only_the_guest_global() {
    for node in every_target().await {
        let code = r#"return function (cb) {
            const g = this.constructor.constructor('return this')();
            const g2 = (function () { return this; })();
            cb(null, [g === globalThis, g2 === globalThis, typeof g.Deno, typeof g.__bootstrap,
                      typeof g.__infra, typeof g.__webtask_lockdown, typeof Deno]);
        }"#;
        let res = node.run("esc", "", code).await;
        assert_eq!(res.json(), json!([true, true, "undefined", "undefined", "undefined", "undefined", "undefined"]));
    }
}

#[tokio::test]
async fn no_host_names_on_the_global() {
    for node in every_target().await {
        let code = r#"return function (cb) {
            const names = Reflect.ownKeys(globalThis).map(String);
            cb(null, names.filter(n => /deno|bootstrap|infra|lockdown|op_|core|primordials/i.test(n)));
        }"#;
        assert_eq!(node.run("esc", "", code).await.json(), json!([]));
    }
}

#[tokio::test]
async fn stack_trace_call_sites_hide_runtime_functions() {
    for node in every_target().await {
        // Structured call sites are the classic way to grab a caller's function
        // or receiver; runtime frames are strict mode, so V8 hides both.
        let code = r#"return function (cb) {
            Error.prepareStackTrace = (e, sites) => sites;
            const sites = new Error().stack;
            Error.prepareStackTrace = undefined;
            const leaks = sites
                .filter(s => s.getFileName() !== 'webtask.js')
                .filter(s => s.getFunction() !== undefined || (s.getThis() !== undefined && s.getThis() !== globalThis))
                .map(s => String(s.getFunctionName()));
            cb(null, { leaks, files: sites.map(s => s.getFileName()).filter(f => f && f !== 'webtask.js') });
        }"#;
        let res = node.run("esc", "", code).await;
        assert_eq!(res.json(), json!({"leaks": [], "files": []}), "{}", res.text());
    }
}

#[tokio::test]
async fn console_and_timers_lead_nowhere() {
    for node in every_target().await {
        let code = r#"return function (cb) {
            const found = [];
            for (const f of [console.log, setTimeout, clearTimeout, queueMicrotask]) {
                if (f.constructor !== Function) found.push('foreign Function');
                for (const k of Reflect.ownKeys(f)) if (!['length', 'name', 'prototype'].includes(String(k))) found.push(String(k));
            }
            try { Object.defineProperty(console, 'log', { value: 1 }); found.push('console writable'); } catch (e) {}
            cb(null, found);
        }"#;
        assert_eq!(node.run("esc", "", code).await.json(), json!([]));
    }
}

#[tokio::test]
async fn runtime_errors_are_plain_guest_errors() {
    for node in every_target().await {
        let code = r#"module.exports = function (ctx, req, res) {
            res.writeHead(200);
            let e;
            try { res.setHeader('x', 'y'); } catch (err) { e = err; }
            res.end(JSON.stringify([e instanceof Error, e.constructor === Error, typeof e.message, /ext:|bootstrap|deno/.test(e.stack)]));
        };"#;
        assert_eq!(node.run("esc", "", code).await.json(), json!([true, true, "string", false]));
    }
}

#[tokio::test]
async fn require_and_process_are_not_host_objects() {
    for node in every_target().await {
        // `fs` and friends exist only to throw; `process` is the guest's own
        // sanitised object: no environment, no exit, no bindings.
        let code = r#"module.exports = function (cb) {
            const errors = [];
            for (const f of [() => require('fs').readFileSync('/etc/passwd'), () => require('child_process').execSync('id'),
                             () => process.exit(1), () => process.binding('fs'), () => require('vm').runInNewContext('this')]) {
                try { f(); errors.push('no error'); } catch (e) { errors.push(e.message); }
            }
            const own = [require, process.nextTick, process.hrtime].flatMap(f => Reflect.ownKeys(f).map(String))
                .filter(k => /deno|core|op_|bootstrap/i.test(k));
            cb(null, [errors, Object.keys(process.env), own]);
        };"#;
        assert_eq!(
            node.run("esc", "", code).await.json(),
            json!([[
                "fs.readFileSync is not available in webtask",
                "child_process.execSync is not available in webtask",
                "process.exit is not available in webtask",
                "process.binding is not available in webtask",
                "vm.runInNewContext is not available in webtask"
            ], [], []])
        );
    }
}

#[tokio::test]
async fn containers_do_not_share_globals_or_prototypes() {
    for node in every_target().await {
        let poison = "return function (cb) { Array.prototype.evil = 1; globalThis.secret = 's3cr3t'; cb(null, 'set'); }";
        assert_eq!(node.run("tenant-a", "", poison).await.json(), json!("set"));
        let peek = "return function (cb) { cb(null, [typeof globalThis.secret, [].evil === undefined]); }";
        assert_eq!(node.run("tenant-b", "", peek).await.json(), json!(["undefined", true]));
    }
}

#[tokio::test]
async fn streaming_wasm_compilation_is_absent_not_fatal() {
    for node in every_target().await {
        let code = r#"return function (cb) {
            cb(null, [typeof WebAssembly.compileStreaming, typeof WebAssembly.instantiateStreaming, typeof WebAssembly.compile]);
        }"#;
        assert_eq!(node.run("wasm", "", code).await.json(), json!(["undefined", "undefined", "function"]));
    }
}

#[tokio::test]
async fn polluted_builtins_do_not_hijack_later_requests() {
    for node in every_target().await {
        let poison = r#"return function (cb) {
            Function.prototype.call = function () { return 'HIJACKED'; };
            Function.prototype.apply = function () { return 'HIJACKED'; };
            Map.prototype.set = function (k, v) { globalThis.leaked = v; return this; };
            Array.prototype.push = function () { throw new Error('push'); };
            String.prototype.toLowerCase = function () { return 'x'; };
            Promise.prototype.then = function () { throw new Error('then'); };
            JSON.stringify = () => '"HIJACKED"';
            setTimeout(() => {}, 1);
            cb(null, 'poisoned');
        }"#;
        assert_eq!(node.run("poison", "", poison).await.text(), r#""poisoned""#);
        let victim = r#"module.exports = function (ctx, req, res) {
            res.setHeader('X-Secret', ctx.secrets.key || 'none');
            res.end(String(typeof globalThis.leaked));
        };"#;
        let res = node.run("poison", "", victim).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.text(), "undefined", "a runtime object leaked to the guest");
    }
}

#[tokio::test]
async fn throwing_getters_on_errors_still_make_a_script_error() {
    for node in every_target().await {
        let code = r#"return function (cb) {
            const e = new Error('x');
            Object.defineProperty(e, 'name', { get() { throw 1; } });
            Object.defineProperty(e, 'stack', { get() { throw 2; } });
            throw e;
        }"#;
        let res = node.run("getters", "", code).await;
        assert_eq!(res.status, 500);
        assert_eq!((res.json()["code"].clone(), res.json()["message"].clone()), (json!(500), json!("x")));
        let code = "return function (cb) { Promise.reject({ get message() { throw new Error('boom'); } }); }";
        let res = node.run("getters", "", code).await;
        assert_eq!((res.status, res.json()["code"].clone()), (500, json!(500)), "{}", res.text());
    }
}

#[tokio::test]
async fn proto_key_in_a_body_stays_a_key() {
    let engine = webtask::Engine::new(Default::default());
    let ctx = webtask::Context::new().body("application/json", r#"{"__proto__": {"isAdmin": true}, "a": 1}"#);
    let code = "return (ctx, cb) => cb(null, [ctx.data.isAdmin === undefined, Object.getPrototypeOf(ctx.data) === Object.prototype, ctx.data.a]);";
    assert_eq!(engine.run(code, ctx).await.unwrap().json().unwrap(), json!([true, true, 1]));
}

#[tokio::test]
async fn guests_cannot_send_interim_or_invalid_statuses_or_framing_headers() {
    for node in every_target().await {
        for status in ["101", "100", "0", "1000", "'abc'", "200.5"] {
            let code = format!("module.exports = (c, req, res) => {{ res.writeHead({status}); res.end('x'); }};");
            let res = node.run("status", "", &code).await;
            assert_eq!(res.status, 500, "{status}: {}", res.text());
            assert_eq!(res.json()["name"], json!("RangeError"), "{status}");
        }
        let code = "module.exports = (c, req, res) => { res.setHeader('content-length', ['1', '2']); res.setHeader('connection', 'close'); res.end('body'); };";
        let res = node.run("status", "", code).await;
        assert_eq!((res.status, res.text().as_str()), (200, "body"));
        assert!(res.headers.get("connection").is_none());
    }
}

#[tokio::test]
async fn atomics_wait_cannot_block_a_container() {
    for node in every_target().await {
        let code = "return function (cb) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); cb(null, 'woke'); }";
        let res = node.run("atomics", "", code).await;
        assert_eq!(res.status, 500, "{}", res.text());
        assert_eq!(res.json()["name"], json!("TypeError"));
        let res = node.run("atomics", "", "return function (cb) { cb(null, 'next'); }").await;
        assert_eq!(res.json(), json!("next"));
    }
}

#[tokio::test]
async fn math_random_is_neither_shared_nor_predictable_across_containers() {
    // Tenants must not be able to predict each other's Math.random (nor
    // their own across restarts): every isolate's generator is seeded
    // afresh, never from a fixed seed.
    let draw = "return function (cb) { cb(null, [Math.random(), Math.random()]); }";
    for node in every_target().await {
        let a = node.run("random-a", "", draw).await.json();
        let b = node.run("random-b", "", draw).await.json();
        assert_ne!(a, b, "two containers drew the same sequence");
        assert_ne!(a, json!([0.22876995452731475, 0.6698482001303465]), "V8's fixed snapshot seed");
    }
}

#[tokio::test]
async fn runtime_modules_cannot_be_imported() {
    for node in every_target().await {
        // The Node shim's modules hold the ops in their closures; deno_core
        // refuses `ext:` imports from anything but another `ext:` module.
        let code = r#"module.exports = async function () {
            const out = [];
            for (const s of ['ext:webtask_runtime/node/require.js', 'ext:webtask_runtime/node/crypto.js', 'ext:webtask_runtime/bootstrap.js',
                             'ext:webtask_runtime/node/dist/builtins.js', 'ext:core/mod.js', 'node:fs', '/node_modules/lodash/lodash.js']) {
                try { await import(s); out.push('imported ' + s); } catch (e) { out.push(e.constructor === Error || e instanceof TypeError); }
            }
            return out;
        };"#;
        assert_eq!(node.run("esc", "", code).await.json(), json!([true, true, true, true, true, true, true]));
    }
}

#[tokio::test]
async fn structured_clone_and_require_misuse_are_guest_errors_not_crashes() {
    for node in every_target().await {
        // deno_core's host-object brand on a guest object must not reach a
        // deserializer lookup that panics the process.
        let brand = "return function (cb) { try { structuredClone({ [Symbol.for('Deno.core.hostObject')]() { return { type: 'x' }; } }); cb(null, 'cloned'); } catch (e) { cb(null, 'threw'); } }";
        assert_eq!(node.run("clone", "", brand).await.json(), json!("threw"));
        // A huge, deep module.path must not keep the resolver busy for long.
        let deep = "return function (cb) { module.path = '/a'.repeat(200000); try { require('x'); } catch (e) {} cb(null, 'done'); }";
        assert_eq!(node.run("clone", "", deep).await.json(), json!("done"));
        assert_eq!(node.run("clone", "", "return function (cb) { cb(null, 'alive'); }").await.json(), json!("alive"));
    }
}

#[tokio::test]
async fn a_cpu_limit_landing_while_the_node_builtins_load_is_only_that_requests_error() {
    // The polyfill bundle behind require('util') compiles inside the first
    // requiring request's CPU budget. Spin for a growing share of the budget
    // first, so the limit fires at every point of the load: each request
    // answers (done or cpu_limit), and the host lives on.
    let mut config = crate::support::test_config();
    config.engine.limits.cpu_ms = 40;
    for node in crate::support::every_target_with(config).await {
        let mut loaded = None;
        for spin in (0..40).step_by(4) {
            let code = format!(
                "return function (cb) {{ const end = Date.now() + {spin}; while (Date.now() < end); require('util'); cb(null, 'done'); }}"
            );
            let container = format!("load-{spin}");
            let res = node.run(&container, "", &code).await;
            let v = res.json();
            assert!(v == json!("done") || v["code"] == json!("cpu_limit"), "spin {spin}: {} {v}", res.status);
            if v == json!("done") && loaded.is_none() {
                loaded = Some(container);
            }
        }
        // The host lives on; where the load finished, the module works. (A
        // fresh container's first load alone can pass 40 ms of CPU on a
        // busy machine, so a new one is not asked to require it here.)
        assert_eq!(node.run("load-after", "", "return function (cb) { cb(null, 'alive'); }").await.json(), json!("alive"));
        if let Some(container) = loaded {
            let inspect = "return function (cb) { cb(null, typeof require('util').inspect); }";
            assert_eq!(node.run(&container, "", inspect).await.json(), json!("function"));
        }
    }
}
