//! Every error class, with its status and JSON body.

use serde_json::json;

use crate::support::{every_target, TestNode};

fn assert_script_error(res: &crate::support::Resp, name: &str, message: &str) -> serde_json::Value {
    assert_eq!(res.status, 500, "{}", res.text());
    let v = res.json();
    assert_eq!(v["code"], json!(500));
    assert_eq!(v["error"], json!("Script returned an error."));
    assert_eq!(v["name"], json!(name));
    assert_eq!(v["message"], json!(message));
    assert_eq!(v["details"], json!(format!("{name}: {message}")));
    v
}

/// The stack names the webtask's own line and nothing of the host.
fn assert_clean_stack(v: &serde_json::Value, line: u32) {
    let stack = v["stack"].as_str().expect("stack");
    assert!(stack.contains(&format!("webtask.js:{line}:")), "{stack}");
    for frame in stack.lines().filter(|l| l.trim_start().starts_with("at ")) {
        assert!(frame.contains("webtask.js:"), "foreign frame in {stack}");
    }
    for host in ["ext:", "/src/", ".rs", "file://", "bootstrap", "deno"] {
        assert!(!stack.contains(host), "host detail {host:?} in {stack}");
    }
}

#[tokio::test]
async fn callback_error() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) {\n  cb(new Error('boom'));\n}").await;
        let v = assert_script_error(&res, "Error", "boom");
        assert_clean_stack(&v, 2);
    }
}

#[tokio::test]
async fn synchronous_throw() {
    for node in every_target().await {
        let res = node.run("e", "", "module.exports = function (ctx, cb) {\n\n  null.x;\n};").await;
        let v = assert_script_error(&res, "TypeError", "Cannot read properties of null (reading 'x')");
        assert_clean_stack(&v, 3);
    }
}

#[tokio::test]
async fn async_rejection() {
    for node in every_target().await {
        let res = node.run("e", "", "module.exports = async () => { throw new RangeError('nope'); };").await;
        let v = assert_script_error(&res, "RangeError", "nope");
        assert_clean_stack(&v, 1);
    }
}

#[tokio::test]
async fn throw_in_a_timer_fails_its_own_request() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) { setTimeout(() => { throw new Error('later'); }, 1); }").await;
        assert_script_error(&res, "Error", "later");
    }
}

#[tokio::test]
async fn unhandled_rejection_fails_its_own_request() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) { Promise.reject(new Error('lost')); }").await;
        assert_script_error(&res, "Error", "lost");
    }
}

#[tokio::test]
async fn non_error_values_are_reported_as_strings() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) { cb('plain string'); }").await;
        assert_eq!(res.status, 500);
        assert_eq!(res.json()["details"], json!("plain string"));
        assert_eq!(res.json()["message"], json!("plain string"));
    }
}

#[tokio::test]
async fn unserialisable_result_is_a_script_error() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) { const a = {}; a.a = a; cb(null, a); }").await;
        assert_eq!(res.status, 500);
        assert_eq!(res.json()["name"], json!("TypeError"));
        assert!(res.json()["message"].as_str().unwrap().contains("circular"));
    }
}

#[tokio::test]
async fn code_that_exports_no_function() {
    for node in every_target().await {
        let res = node.run("e", "", "module.exports = 42;").await;
        assert_script_error(&res, "TypeError", "The code must return a function or assign one to module.exports");
    }
}

#[tokio::test]
async fn top_level_throw_is_a_script_error() {
    for node in every_target().await {
        let res = node.run("e", "", "\nthrow new Error('at load');").await;
        let v = assert_script_error(&res, "Error", "at load");
        assert_clean_stack(&v, 2);
    }
}

#[tokio::test]
async fn syntax_error_names_line_and_column() {
    for node in every_target().await {
        let res = node.run("e", "", "return function (cb) {\n  cb(null, 1;\n}").await;
        assert_eq!(res.status, 400);
        let v = res.json();
        assert_eq!(v["code"], json!("syntax_error"));
        assert_eq!(v["line"], json!(2));
        // V8 points at the start of the unterminated argument, `1`.
        assert_eq!(v["column"], json!(12));
        assert!(v["message"].as_str().unwrap().starts_with("SyntaxError"), "{v}");
    }
}

/// Short code is compiled eagerly and long code lazily (see
/// `engine::script::EAGER_MAX_CHARS`): the guest cannot tell which.
#[tokio::test]
async fn short_and_long_code_compile_alike() {
    let mut config = crate::support::test_config();
    config.http.body_bytes = 64 * 1024;
    let node = TestNode::with_config(config).await;
    let long_tail = format!("\n//{}", "x".repeat(10 * 1024));
    for tail in ["", long_tail.as_str()] {
        let inner_error = format!("return function (cb) {{\n  function f() {{\n    return 1 +;\n  }}\n  cb(null, 1);\n}}{tail}");
        let v = node.run("alike", "", &inner_error).await.json();
        assert_eq!((v["code"].as_str(), v["line"].as_u64(), v["column"].as_u64()), (Some("syntax_error"), Some(3), Some(15)), "{v}");

        let code = format!(
            "function helper(x) {{ return x * 2; }}\nreturn function (cb) {{\n  const g = () => {{ throw new Error('inner ' + helper(2)); }};\n  try {{ g(); }} catch (e) {{ return cb(null, [helper.toString(), e.stack.split('\\n')[1].trim()]); }}\n}}{tail}"
        );
        let res = node.run("alike", "", &code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json(), json!(["function helper(x) { return x * 2; }", "at g (webtask.js:3:27)"]));
    }
}

#[tokio::test]
async fn bad_container_names_are_refused() {
    for node in every_target().await {
        let long = "a".repeat(65);
        for name in ["bad.name", "a%20b", "%2e%2e", long.as_str(), "ü"] {
            let res = node.run(name, "", "return function (cb) { cb(null, 1); }").await;
            assert_eq!(res.status, 400, "{name}");
            assert_eq!(res.json()["code"], json!("bad_request"));
        }
        let res = node.run(&"a".repeat(64), "", "return function (cb) { cb(null, 1); }").await;
        assert_eq!(res.status, 200);
    }
}

#[tokio::test]
async fn empty_container_name_is_refused() {
    let node = TestNode::start().await;
    let res = node.request("POST", "/api/run/", Some("text/plain"), "return (cb) => cb()").await;
    assert_eq!(res.status, 400);
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let node = TestNode::start().await;
    let res = node.get("/nowhere").await;
    assert_eq!((res.status, res.json()["code"].clone()), (404, json!("not_found")));
    let res = node.get("/api/run/demo").await;
    assert_eq!((res.status, res.json()["code"].clone()), (405, json!("method_not_allowed")));
    assert_eq!(res.headers["allow"], "POST");
    let res = node.request("POST", "/healthz", None, "").await;
    assert_eq!(res.status, 405);
}

#[tokio::test]
async fn malformed_envelope_and_code() {
    let node = TestNode::start().await;
    let res = node.request("POST", "/api/run/x", Some("application/json"), "{not json").await;
    assert_eq!((res.status, res.json()["code"].clone()), (400, json!("bad_request")));
    let res = node.request("POST", "/api/run/x", Some("application/json"), r#"{"data":{}}"#).await;
    assert_eq!(res.status, 400);
    assert!(res.json()["message"].as_str().unwrap().contains("code"));
    let res = node.request("POST", "/api/run/x", Some("text/plain"), vec![0xff, 0xfe]).await;
    assert_eq!(res.status, 400);
    assert!(res.json()["message"].as_str().unwrap().contains("UTF-8"));
}
