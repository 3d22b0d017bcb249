//! Every Webtask programming model, through the HTTP API.

use serde_json::json;

use crate::support::{every_target, TestNode};

#[tokio::test]
async fn return_function_with_context_and_callback() {
    for node in every_target().await {
        let res = node
            .run("demo", "?name=webtask", r#"return function (context, cb) { cb(null, "Hello, " + context.data.name); }"#)
            .await;
        assert_eq!(res.status, 200);
        assert_eq!(res.headers["content-type"], "application/json");
        assert_eq!(res.text(), r#""Hello, webtask""#);
    }
}

#[tokio::test]
async fn return_function_with_callback_only() {
    for node in every_target().await {
        let res = node.run("demo", "", "return function (cb) { cb(null, {a: [1, 2], b: null}); }").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.json(), json!({"a": [1, 2], "b": null}));
    }
}

#[tokio::test]
async fn module_exports_with_context_and_callback() {
    for node in every_target().await {
        let res = node.run("demo", "?x=1", "module.exports = function (context, cb) { cb(null, context.query.x + '!'); }").await;
        assert_eq!(res.json(), json!("1!"));
    }
}

#[tokio::test]
async fn module_exports_with_callback_only() {
    for node in every_target().await {
        let res = node.run("demo", "", "module.exports = function (cb) { setTimeout(() => cb(null, 42), 5); }").await;
        assert_eq!(res.json(), json!(42));
    }
}

#[tokio::test]
async fn async_function_returns_its_value() {
    for node in every_target().await {
        let code = r#"module.exports = async (context) => {
            await new Promise(r => setTimeout(r, 5));
            return { name: context.data.name };
        };"#;
        let res = node.run("demo", "?name=a", code).await;
        assert_eq!(res.json(), json!({"name": "a"}));
    }
}

#[tokio::test]
async fn plain_function_returning_a_promise() {
    for node in every_target().await {
        let code = "module.exports = function () { return Promise.resolve([1, 'two']); };";
        let res = node.run("demo", "", code).await;
        assert_eq!(res.json(), json!([1, "two"]));
    }
}

#[tokio::test]
async fn async_function_with_callback_may_answer_later() {
    for node in every_target().await {
        let code = "module.exports = async function (context, cb) { setTimeout(() => cb(null, 'late'), 5); };";
        assert_eq!(node.run("demo", "", code).await.json(), json!("late"));
    }
}

#[tokio::test]
async fn first_callback_wins() {
    for node in every_target().await {
        let code = "return function (cb) { cb(null, 1); cb(null, 2); cb(new Error('x')); }";
        let res = node.run("demo", "", code).await;
        assert_eq!((res.status, res.json()), (200, json!(1)));
    }
}

#[tokio::test]
async fn undefined_result_is_json_null() {
    for node in every_target().await {
        let res = node.run("demo", "", "return function (cb) { cb(); }").await;
        assert_eq!((res.status, res.text().as_str()), (200, "null"));
    }
}

#[tokio::test]
async fn context_req_res_controls_status_headers_and_streamed_body() {
    for node in every_target().await {
        let code = r#"module.exports = function (context, req, res) {
            res.setHeader('x-method', req.method);
            res.writeHead(201, { 'content-type': 'text/plain', 'x-name': context.data.name });
            res.write('hello ');
            setTimeout(() => res.end('world'), 10);
        };"#;
        let res = node.run("demo", "?name=n", code).await;
        assert_eq!(res.status, 201);
        assert_eq!(res.headers["content-type"], "text/plain");
        assert_eq!(res.headers["x-name"], "n");
        assert_eq!(res.headers["x-method"], "POST");
        assert_eq!(res.text(), "hello world");
    }
}

#[tokio::test]
async fn res_end_without_write_sends_head_and_body() {
    for node in every_target().await {
        let code = "module.exports = (ctx, req, res) => { res.statusCode = 404; res.end('nope'); };";
        let res = node.run("demo", "", code).await;
        assert_eq!((res.status, res.text().as_str()), (404, "nope"));
    }
}

#[tokio::test]
async fn context_carries_data_query_headers_secrets_meta() {
    let node = TestNode::start().await;
    let envelope = json!({
        "code": "return (ctx, cb) => cb(null, {data: ctx.data, query: ctx.query, h: ctx.headers['x-test'], s: ctx.secrets, m: ctx.meta, body: ctx.body})",
        "data": {"d": 1},
        "secrets": {"key": "shh"},
        "meta": {"owner": "me"},
        "body": {"b": true}
    });
    let req = http::Request::builder()
        .method("POST")
        .uri(node.url("/api/run/demo?q=1&q=2&name=x"))
        .header("content-type", "application/json")
        .header("x-test", "yes")
        .body(http_body_util::Full::new(bytes::Bytes::from(envelope.to_string())))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["query"], json!({"q": ["1", "2"], "name": "x"}));
    assert_eq!(v["data"], json!({"q": ["1", "2"], "name": "x", "b": true, "d": 1}));
    assert_eq!(v["h"], json!("yes"));
    assert_eq!(v["s"], json!({"key": "shh"}));
    assert_eq!(v["m"], json!({"owner": "me"}));
    assert_eq!(v["body"], json!({"b": true}));
}

#[tokio::test]
async fn globals_persist_within_a_container_only() {
    for node in every_target().await {
        let code = "return function (cb) { global.n = (global.n || 0) + 1; cb(null, global.n); }";
        assert_eq!(node.run("a", "", code).await.json(), json!(1));
        assert_eq!(node.run("a", "", code).await.json(), json!(2));
        assert_eq!(node.run("b", "", code).await.json(), json!(1));
    }
}

#[tokio::test]
async fn same_code_compiles_once_per_container() {
    let node = TestNode::start().await;
    let code = "return function (cb) { cb(null, 'cached'); }";
    let compiled = || async { crate::support::sample(&node.metrics().await, "webtask_compilations_total").unwrap() };
    let before = compiled().await;
    for _ in 0..3 {
        assert_eq!(node.run("cache", "", code).await.json(), json!("cached"));
    }
    assert_eq!(compiled().await - before, 1.0);
    node.run("cache", "", "return function (cb) { cb(null, 'other'); }").await;
    assert_eq!(compiled().await - before, 2.0);
}

/// Names `Object.prototype` has are names like any other, in the query and
/// in a form body; only a real repeat makes an array.
#[tokio::test]
async fn query_names_that_objects_inherit_are_plain_names() {
    for node in every_target().await {
        let code = "return function (c, cb) { cb(null, [c.query, Object.getPrototypeOf(c.query) === Object.prototype]); }";
        let res = node.run("proto", "?toString=a&valueOf=b&constructor=c&__proto__=d&x=1&x=2", code).await;
        assert_eq!(res.json(), json!([{"toString": "a", "valueOf": "b", "constructor": "c", "__proto__": "d", "x": ["1", "2"]}, true]));
        // A urlencoded body (an embedder's request) is parsed the same way.
        if let crate::support::Target::Lib(engine) = &node {
            let mut ctx = webtask::Context::new();
            ctx.body = Some(bytes::Bytes::from_static(b"hasOwnProperty=1&x=1&x=2"));
            ctx.content_type = Some("application/x-www-form-urlencoded".into());
            let out = engine.run_in("proto", "return function (c, cb) { cb(null, c.body); }", ctx).await.unwrap();
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.body).unwrap(), json!({"hasOwnProperty": "1", "x": ["1", "2"]}));
        }
    }
}

/// `context.headers` as Node's `req.headers`: repeated cookies joined with
/// "; ", set-cookie an array, single-valued headers keep their first value,
/// others joined with ", "; a value that is not ASCII arrives byte per char.
#[tokio::test]
async fn request_headers_join_and_decode_as_node_does() {
    for node in [TestNode::start().await, TestNode::workers().await] {
        let code = "return function (c, cb) { cb(null, [c.headers, c.headers['x-bin']]); }";
        let mut conn = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let head = format!(
            "POST /api/run/hdrs HTTP/1.1\r\nhost: t\r\ncookie: a=1\r\ncookie: b=2\r\nset-cookie: s=1\r\nset-cookie: s=2\r\n\
             user-agent: one\r\nuser-agent: two\r\nx-dup: 1\r\nx-dup: 2\r\nx-bin: caf\u{e9}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            code.len()
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(code.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        let h = &v[0];
        assert_eq!((&h["cookie"], &h["set-cookie"]), (&json!("a=1; b=2"), &json!(["s=1", "s=2"])), "{v}");
        assert_eq!((&h["user-agent"], &h["x-dup"]), (&json!("one"), &json!("1, 2")), "{v}");
        // "é" went out as UTF-8 (C3 A9): two latin1 characters, as Node shows it.
        assert_eq!(v[1], json!("caf\u{c3}\u{a9}"), "{v}");
    }
}

/// A response header the HTTP layer could not send throws where it is set,
/// with Node's error codes, instead of vanishing.
#[tokio::test]
async fn invalid_response_headers_throw_as_in_node() {
    for node in every_target().await {
        let code = r#"module.exports = (c, req, res) => {
            const codes = [];
            for (const [k, v] of [['x-a', 'a\r\nInjected: 1'], ['bad name', 'v'], ['', 'v'], ['x-u', undefined], ['x-wide', 'λ'], ['x-ok', 'caf\u00e9\tok']]) {
                try { res.setHeader(k, v); codes.push('set'); } catch (e) { codes.push(e.code); }
            }
            res.end(JSON.stringify(codes));
        };"#;
        let res = node.run("badhdr", "", code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let want = json!(["ERR_INVALID_CHAR", "ERR_INVALID_HTTP_TOKEN", "ERR_INVALID_HTTP_TOKEN", "ERR_HTTP_INVALID_HEADER_VALUE", "ERR_INVALID_CHAR", "set"]);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), want);
        assert!(res.headers.get("injected").is_none());
    }
}
