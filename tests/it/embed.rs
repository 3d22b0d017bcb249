//! The library API: the same engine without HTTP.

use serde_json::json;
use webtask::{Context, Engine, EngineConfig, Error};

fn engine() -> Engine {
    let mut config = EngineConfig::default();
    config.limits.cpu_ms = 100;
    config.limits.wall_ms = 1000;
    Engine::new(config)
}

#[tokio::test]
async fn runs_every_programming_model() {
    let engine = engine();
    let ctx = || Context::new().query("name", "lib");
    let cases = [
        "return function (cb) { cb(null, 'lib'); }",
        "return function (context, cb) { cb(null, context.data.name); }",
        "module.exports = function (context, cb) { cb(null, context.query.name); };",
        "module.exports = function (cb) { cb(null, 'lib'); };",
        "module.exports = async (context) => context.data.name;",
        "module.exports = () => Promise.resolve('lib');",
    ];
    for code in cases {
        let out = engine.run(code, ctx()).await.unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!((out.status, out.json().unwrap()), (200, json!("lib")), "{code}");
    }
    let out = engine
        .run("module.exports = (c, req, res) => { res.writeHead(202, {'x-a': 'b'}); res.end('raw'); };", ctx())
        .await
        .unwrap();
    assert_eq!((out.status, out.header("x-a"), &out.body[..]), (202, Some("b"), &b"raw"[..]));
}

#[tokio::test]
async fn parses_json_and_urlencoded_bodies_into_data() {
    let engine = engine();
    let code = "return (ctx, cb) => cb(null, [ctx.body, ctx.data]);";
    let out = engine.run(code, Context::new().query("q", "1").body("application/json", r#"{"a":2}"#)).await.unwrap();
    assert_eq!(out.json().unwrap(), json!([{"a": 2}, {"q": "1", "a": 2}]));
    let out = engine.run(code, Context::new().body("application/x-www-form-urlencoded", "x=1&y=two")).await.unwrap();
    assert_eq!(out.json().unwrap(), json!([{"x": "1", "y": "two"}, {"x": "1", "y": "two"}]));
    let err = engine.run(code, Context::new().body("application/json", "{oops")).await.unwrap_err();
    assert_eq!(err.code(), "bad_request");
}

#[tokio::test]
async fn errors_are_typed() {
    let engine = engine();
    match engine.run("return function (cb) { cb(new TypeError('t')); }", Context::new()).await {
        Err(Error::Script(e)) => {
            assert_eq!((e.name.as_deref(), e.message.as_str()), (Some("TypeError"), "t"));
            assert!(e.stack.unwrap().contains("webtask.js:1:"));
        }
        other => panic!("{other:?}"),
    }
    let err = engine.run("return function (cb) { while (true) {} }", Context::new()).await.unwrap_err();
    assert!(matches!(err, Error::CpuLimit { limit_ms: 100, used_ms } if used_ms > 100), "{err:?}");
    assert_eq!(err.status(), 500);
    let err = engine.run("return function (cb) {}", Context::new()).await.unwrap_err();
    assert_eq!(err, Error::WallLimit { limit_ms: 1000 });
    assert_eq!(err.status(), 504);
    let err = engine.run("return function (", Context::new()).await.unwrap_err();
    assert!(matches!(err, Error::SyntaxError { line: 1, .. }), "{err:?}");
    assert_eq!(err.status(), 400);
    let err = engine.run_in("no/slashes", "return (cb) => cb()", Context::new()).await.unwrap_err();
    assert_eq!(err.code(), "bad_request");
}

#[tokio::test]
async fn memory_limit_through_the_library() {
    let mut config = EngineConfig::default();
    config.limits.heap_mb = 32;
    let engine = Engine::new(config);
    let err = engine.run("return function (cb) { a = []; for (;;) a.push(new Array(1e5).fill(1)); }", Context::new()).await.unwrap_err();
    assert_eq!(err, Error::MemoryLimit { limit_mb: 32 });
    let out = engine.run("return function (cb) { cb(null, 'fine'); }", Context::new()).await.unwrap();
    assert_eq!(out.json().unwrap(), json!("fine"));
}

#[tokio::test]
async fn least_recently_used_container_is_retired_at_the_cap() {
    let engine = Engine::new(EngineConfig { max_isolates: 2, ..Default::default() });
    let code = "return function (cb) { global.n = (global.n || 0) + 1; cb(null, global.n); }";
    for c in ["a", "b", "a"] {
        engine.run_in(c, code, Context::new()).await.unwrap();
    }
    // "c" takes b's place (b is least recently used); a keeps its globals.
    assert_eq!(engine.run_in("c", code, Context::new()).await.unwrap().json().unwrap(), json!(1));
    assert_eq!(engine.run_in("a", code, Context::new()).await.unwrap().json().unwrap(), json!(3));
    assert_eq!(engine.run_in("b", code, Context::new()).await.unwrap().json().unwrap(), json!(1));
}
