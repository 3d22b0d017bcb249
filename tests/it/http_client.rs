//! Node's `http`/`https` clients as Node 20 behaves: how bodies are framed,
//! the events and errors of aborts, destroys, failures and timeouts (each
//! sequence below is what Node 20 emits for the same code against the same
//! server), and https with the verification clients expect.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::egress::{allowing, echo_server, path_of, raw_server, tls_echo_server, until_closed, write_chunk, CHUNKED_HEAD};
use crate::support::every_target_with;

/// `/hang` never answers; `/slow` sends "first", then "rest" 300 ms later;
/// `/reset` sends "x" and then drops the connection; `/close` drops it
/// before answering.
async fn scripted_server() -> SocketAddr {
    raw_server(|head, mut stream| async move {
        match path_of(&head) {
            "/slow" => {
                stream.write_all(CHUNKED_HEAD).await.unwrap();
                let _ = write_chunk(&mut stream, b"first").await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = write_chunk(&mut stream, b"rest").await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
            "/reset" => {
                stream.write_all(CHUNKED_HEAD).await.unwrap();
                let _ = write_chunk(&mut stream, b"x").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            "/close" => {}
            _ => {
                until_closed(&mut stream).await;
            }
        }
    })
    .await
}

/// Runs `scenario(ev, done)` for each case and returns every case's events.
fn scenarios(cases: &[(&str, &str)]) -> String {
    let mut code = String::from(
        r#"module.exports = async (ctx) => {
        const http = require('http');
        const base = ctx.data.url;
        const watch = (ev, req) => {
            for (const e of ['abort', 'close', 'finish', 'timeout', 'socket', 'response']) req.on(e, () => ev.push(e));
            req.on('error', (e) => ev.push('error:' + e.code + ':' + e.message));
        };
        const watchRes = (ev, res) => {
            for (const e of ['aborted', 'close', 'end']) res.on(e, () => ev.push('res.' + e));
            res.on('error', (e) => ev.push('res.error:' + e.code + ':' + e.message));
            res.on('data', (d) => ev.push('res.data:' + d));
        };
        const run = (scenario) => new Promise((resolve) => {
            const ev = [];
            scenario(ev);
            setTimeout(() => resolve(ev), 500);
        });
        const out = {};
    "#,
    );
    for (name, scenario) in cases {
        code.push_str(&format!("out[{name:?}] = await run((ev) => {{ {scenario} }});\n"));
    }
    code.push_str("return out; };");
    code
}

fn config(server: SocketAddr) -> webtask::config::Config {
    let mut config = allowing(server, None);
    config.engine.limits.cpu_ms = 2_000;
    config.engine.limits.wall_ms = 10_000;
    config
}

#[tokio::test]
async fn request_events_and_errors_are_node_20s() {
    let server = scripted_server().await;
    let cases = [
        ("normal", "const r = http.get(base + '/slow', (res) => { watchRes(ev, res); }); watch(ev, r);"),
        ("abortBeforeResponse", "const r = http.get(base + '/hang'); watch(ev, r); setTimeout(() => r.abort(), 50);"),
        ("destroyBeforeResponse", "const r = http.get(base + '/hang'); watch(ev, r); setTimeout(() => r.destroy(), 50);"),
        ("destroyWithError", "const r = http.get(base + '/hang'); watch(ev, r); setTimeout(() => r.destroy(new Error('mine')), 50);"),
        ("destroyAtOnce", "const r = http.get(base + '/hang'); watch(ev, r); r.destroy();"),
        ("destroyMidBody", "const r = http.get(base + '/slow', (res) => { watchRes(ev, res); res.once('data', () => r.destroy()); }); watch(ev, r);"),
        ("abortMidBody", "const r = http.get(base + '/slow', (res) => { watchRes(ev, res); res.once('data', () => r.abort()); }); watch(ev, r);"),
        ("destroyMidBodyUnheard", "const r = http.get(base + '/slow', (res) => { for (const e of ['aborted', 'close']) res.on(e, () => ev.push('res.' + e)); res.on('data', () => r.destroy()); }); watch(ev, r);"),
        ("responseDestroyed", "const r = http.get(base + '/slow', (res) => { watchRes(ev, res); res.once('data', () => res.destroy()); }); watch(ev, r);"),
        ("upstreamResetMidBody", "const r = http.get(base + '/reset', (res) => watchRes(ev, res)); watch(ev, r);"),
        ("upstreamClosedBeforeResponse", "const r = http.get(base + '/close'); watch(ev, r);"),
        ("timeoutOption", "const r = http.get(base + '/hang', { timeout: 100 }); watch(ev, r); setTimeout(() => { ev.push('still open: ' + !r.destroyed); r.destroy(); }, 300);"),
        ("timeoutDestroys", "const r = http.get(base + '/hang', { timeout: 100 }); watch(ev, r); r.on('timeout', () => r.destroy());"),
        ("setTimeout", "const r = http.get(base + '/hang'); watch(ev, r); r.setTimeout(100, () => { ev.push('cb'); r.destroy(); });"),
    ];
    let code = scenarios(&cases);
    // Node 20.20 against the same server.
    let expected = json!({
        "normal": ["socket", "finish", "response", "res.data:first", "res.data:rest", "res.end", "close", "res.close"],
        "abortBeforeResponse": ["socket", "finish", "abort", "error:ECONNRESET:socket hang up", "close"],
        "destroyBeforeResponse": ["socket", "finish", "error:ECONNRESET:socket hang up", "close"],
        "destroyWithError": ["socket", "finish", "error:undefined:mine", "close"],
        "destroyAtOnce": ["error:ECONNRESET:socket hang up", "close"],
        "destroyMidBody": ["socket", "finish", "response", "res.data:first", "res.aborted", "close", "res.error:ECONNRESET:aborted", "res.close"],
        "abortMidBody": ["socket", "finish", "response", "res.data:first", "abort", "res.aborted", "close", "res.error:ECONNRESET:aborted", "res.close"],
        "destroyMidBodyUnheard": ["socket", "finish", "response", "res.aborted", "close", "res.close"],
        "responseDestroyed": ["socket", "finish", "response", "res.data:first", "res.aborted", "res.close", "close"],
        "upstreamResetMidBody": ["socket", "finish", "response", "res.data:x", "res.aborted", "close", "res.error:ECONNRESET:aborted", "res.close"],
        "upstreamClosedBeforeResponse": ["socket", "finish", "error:ECONNRESET:socket hang up", "close"],
        "timeoutOption": ["socket", "finish", "timeout", "still open: true", "error:ECONNRESET:socket hang up", "close"],
        "timeoutDestroys": ["socket", "finish", "timeout", "error:ECONNRESET:socket hang up", "close"],
        "setTimeout": ["socket", "finish", "timeout", "cb", "error:ECONNRESET:socket hang up", "close"],
    });
    for node in every_target_with(config(server)).await {
        let res = node.run("events", &format!("?url=http://{server}"), &code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        for (name, _) in cases {
            assert_eq!(v[name], expected[name], "{name}");
        }
    }
}

#[tokio::test]
async fn request_bodies_are_framed_as_node_frames_them() {
    let server = echo_server().await;
    let code = r#"module.exports = async (ctx) => {
        const http = require('http');
        const send = (method, act) => new Promise((resolve, reject) => {
            const req = http.request(ctx.data.url, { method }, (res) => {
                let body = '';
                res.on('data', (d) => body += d);
                res.on('end', () => { const e = JSON.parse(body); resolve([e.framing, e.body]); });
            });
            req.on('error', reject);
            act(req);
        });
        return {
            getEnd: await send('GET', (r) => r.end()),
            postEmpty: await send('POST', (r) => r.end()),
            postWhole: await send('POST', (r) => r.end('abc')),
            postWritten: await send('POST', (r) => { r.write('a'); r.end('bc'); }),
            declared: await send('PUT', (r) => { r.setHeader('content-length', 3); r.write('a'); r.end('bc'); }),
            flushed: await send('POST', (r) => { r.flushHeaders(); r.end(); }),
        };
    };"#;
    for node in every_target_with(config(server)).await {
        let res = node.run("framing", &format!("?url=http://{server}/"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        // What Node 20 sends for each.
        assert_eq!(
            res.json(),
            json!({"getEnd": ["none", ""], "postEmpty": ["length 0", ""], "postWhole": ["length 3", "abc"],
                   "postWritten": ["chunked", "abc"], "declared": ["length 3", "abc"], "flushed": ["chunked", ""]})
        );
    }
}

#[tokio::test]
async fn failures_carry_node_codes() {
    let (_held, closed) = crate::support::refusing_addr();
    let server = echo_server().await;
    let mut config = config(server);
    config.egress.allow.push(closed.to_string());
    let code = r#"module.exports = async (ctx) => {
        const http = require('http');
        const fail = (url, act) => new Promise((resolve) => {
            const req = http.request(url, { method: 'POST' }, () => resolve('answered'));
            req.on('error', (e) => resolve([e.code, e.message]));
            act(req);
        });
        return {
            refused: await fail(ctx.data.closed, (r) => r.end()),
            denied: await fail('http://10.255.255.1/', (r) => r.end()),
            // Written in pieces past the 8 MiB limit of a request body.
            tooLarge: await fail(ctx.data.url, (r) => {
                const mib = Buffer.alloc(1 << 20, 120);
                let n = 0;
                const more = () => { while (n < 9) { n++; if (!r.write(mib)) return r.once('drain', more); } r.end(); };
                more();
            }),
        };
    };"#;
    for node in every_target_with(config.clone()).await {
        let query = format!("?url=http://{server}/&closed=http://{closed}/");
        let v: Value = node.run("failures", &query, code).await.json();
        assert_eq!(v["refused"], json!(["ECONNREFUSED", format!("connect ECONNREFUSED 127.0.0.1:{}", closed.port())]), "{v}");
        assert_eq!(v["denied"][0], "egress_denied", "{v}");
        assert_eq!(v["tooLarge"][0], "egress_limit", "{v}");
    }
}

#[tokio::test]
async fn a_request_path_cannot_name_another_host() {
    // Built into a URL, "@host:port/..." once made the request go to that
    // host, with the webtask's own headers: refused, as are paths Node
    // refuses, and hosts that would do the same.
    let server = echo_server().await;
    let code = r#"module.exports = async (ctx) => {
        const http = require('http');
        const [host, port] = ctx.data.server.split(':');
        const attempt = (options) => { try { http.request(options).destroy(); return 'made'; } catch (e) { return e.code; } };
        const got = await new Promise((resolve, reject) => {
            const req = http.request({ hostname: host, port, path: '/a@b?c=1' }, (res) => {
                let body = ''; res.on('data', (d) => body += d); res.on('end', () => resolve(JSON.parse(body).path));
            });
            req.on('error', reject);
            req.end();
        });
        return {
            at: attempt({ hostname: host, port, path: '@127.0.0.1:1/x' }),
            absolute: attempt({ hostname: host, port, path: 'http://127.0.0.1:1/' }),
            space: attempt({ hostname: host, port, path: '/a b' }),
            host: attempt({ hostname: 'x@' + host, port, path: '/' }),
            got,
        };
    };"#;
    for node in every_target_with(config(server)).await {
        let v: Value = node.run("paths", &format!("?server={server}"), code).await.json();
        let expected = json!({"at": "ERR_INVALID_ARG_VALUE", "absolute": "ERR_INVALID_ARG_VALUE", "space": "ERR_UNESCAPED_CHARACTERS",
                              "host": "ERR_INVALID_ARG_VALUE", "got": "/a@b?c=1"});
        assert_eq!(v, expected);
    }
}

#[tokio::test]
async fn https_clients_see_a_verified_peer() {
    let (server, ca) = tls_echo_server().await;
    let config = crate::support::with_room(allowing(server, Some(ca)), 5_000);
    let code = r#"module.exports = function (ctx, cb) {
        const url = ctx.data.url;
        require('https').get(url + '/plain', (res) => {
            let body = '';
            res.on('data', (d) => body += d);
            res.on('end', () => {
                const out = { https: [res.statusCode, res.socket.encrypted, JSON.parse(body).path] };
                // request refuses a response whose socket is not authorized.
                require('request')({ url: url + '/lib', strictSSL: true, json: true }, (err, r, b) => {
                    if (err) return cb(err);
                    out.request = [r.statusCode, b.path];
                    cb(null, out);
                });
            });
        }).on('error', cb);
    };"#;
    for node in every_target_with(config.clone()).await {
        let url = format!("https://localhost:{}", server.port());
        let res = node.run("tls", &format!("?url={url}"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json(), json!({"https": [200, true, "/plain"], "request": [200, "/lib"]}));
    }
}

#[tokio::test]
async fn client_libraries_time_out_cancel_and_fail_as_under_node() {
    let server = scripted_server().await;
    let (_held, closed) = crate::support::refusing_addr();
    let mut config = crate::support::with_room(config(server), 5_000);
    config.egress.allow.push(closed.to_string());
    let code = r#"module.exports = async (ctx) => {
        const { url, closed } = ctx.data;
        const axios = require('axios');
        const nodeFetch = require('node-fetch');
        const out = {};
        try { await axios.get(url + '/hang', { timeout: 200 }); } catch (e) { out.axiosTimeout = [e.code, e.message]; }
        const r = await axios.get(url + '/slow', { responseType: 'stream' });
        out.axiosStream = await new Promise((resolve) => { const c = []; r.data.on('data', (d) => c.push(d.toString())); r.data.on('end', () => resolve(c)); });
        out.request = await new Promise((resolve) => require('request')({ url: url + '/hang', timeout: 200 }, (err) => resolve([err && err.code, err && err.connect])));
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 100);
        try { await axios.get(url + '/hang', { signal: ac.signal }); } catch (e) { out.axiosAbort = [e.code, e.name]; }
        try { await nodeFetch(url + '/hang', { timeout: 150 }); } catch (e) { out.nodeFetchTimeout = [e.name, e.type]; }
        try { await require('superagent').get(url + '/hang').timeout(150); } catch (e) { out.superagentTimeout = [e.code, e.timeout]; }
        try { await nodeFetch(closed); } catch (e) { out.nodeFetchRefused = [e.name, e.code, e.errno]; }
        try { await axios.get(closed); } catch (e) { out.axiosRefused = e.code; }
        return out;
    };"#;
    // What the same code gives under Node 20.
    let expected = json!({
        "axiosTimeout": ["ECONNABORTED", "timeout of 200ms exceeded"], "axiosStream": ["first", "rest"],
        "request": ["ESOCKETTIMEDOUT", false], "axiosAbort": ["ERR_CANCELED", "CanceledError"],
        "nodeFetchTimeout": ["FetchError", "request-timeout"], "superagentTimeout": ["ECONNABORTED", 150],
        "nodeFetchRefused": ["FetchError", "ECONNREFUSED", "ECONNREFUSED"], "axiosRefused": "ECONNREFUSED",
    });
    for node in every_target_with(config.clone()).await {
        let res = node.run("libraries", &format!("?url=http://{server}&closed=http://{closed}/"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json(), expected);
    }
}

/// A chunk written past the container's ArrayBuffer limit fails the
/// request with the limit's code: the body never goes out short as if it
/// were whole.
#[tokio::test]
async fn a_chunk_past_the_arraybuffer_limit_fails_the_request() {
    let server = echo_server().await;
    let mut config = crate::support::with_room(allowing(server, None), 2_000);
    config.engine.limits.array_buffer_mb = 16;
    let code = r#"module.exports = (ctx, cb) => {
        const http = require('http');
        const keep = new Uint8Array(7 << 20);
        const chunk = Buffer.alloc(6 << 20, 1);
        const req = http.request(ctx.data.url, { method: 'POST' }, (res) => {
            let n = 0;
            res.on('data', (d) => { n += d.length; });
            res.on('end', () => cb(null, { status: res.statusCode, echoed: n, kept: keep.length }));
        });
        req.on('error', (e) => cb(null, { code: e.code, message: e.message, kept: keep.length }));
        req.write(chunk);
        req.end();
    };"#;
    for node in every_target_with(config.clone()).await {
        let v = node.run("short", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v["code"], json!("arraybuffer_limit"), "{v}");
        assert!(v["message"].as_str().unwrap().contains("ArrayBuffer memory limit of 16 MiB"), "{v}");
    }
}
