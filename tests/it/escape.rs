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
        let code = r#"module.exports = function (cb) {
            let msg;
            try { require('fs'); } catch (e) { msg = e.message; }
            cb(null, [msg, typeof process]);
        };"#;
        assert_eq!(node.run("esc", "", code).await.json(), json!(["Cannot find module 'fs'", "undefined"]));
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
