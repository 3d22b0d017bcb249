//! The fixed module set (`modules/`): every module loads and does one real
//! thing in a webtask, `require('name@range')` is checked against the
//! installed version, `/api/env/node/modules` lists the set, and the HTTP
//! clients (`request`, `axios`, `superagent`, `node-fetch`, Node's `http`)
//! leave through the egress.

use serde_json::{json, Value};

use crate::egress::{allowing, echo_server, gated_server};
use crate::support::{every_target_with, test_config, workers_config_from, TestNode};

/// The test config with room for a container's first requires: loading a
/// module compiles and runs it inside the request's CPU limit, and the test
/// build's limit (100 ms) is meant for tripping.
fn modules_config() -> webtask::config::Config {
    crate::support::with_room(test_config(), 5_000)
}

async fn workers_node() -> TestNode {
    TestNode::with_config(workers_config_from(modules_config())).await
}

/// Every module of modules/package.json.
const SET: [&str; 26] = [
    "async", "axios", "bluebird", "body-parser", "ejs", "express", "ipaddr.js", "jsonwebtoken", "jwks-rsa", "lodash", "moment",
    "moment-timezone", "node-fetch", "oauth-sign", "q", "qs", "request", "request-promise", "slack-notify", "superagent", "uuid",
    "validator", "webtask-tools", "xml2js", "xmldom", "xpath",
];

#[tokio::test]
async fn the_module_list_names_every_module_with_its_version() {
    let node = TestNode::start().await;
    let res = node.get("/api/env/node/modules").await;
    assert_eq!(res.status, 200);
    let list: Vec<Value> = serde_json::from_slice(&res.body).unwrap();
    let names: Vec<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, SET, "run `make modules` if the set is empty");
    let lodash = list.iter().find(|m| m["name"] == "lodash").unwrap();
    assert_eq!(lodash["version"], "4.17.21");
    assert_eq!(node.request("POST", "/api/env/node/modules", None, "").await.status, 405);
}

#[tokio::test]
async fn every_module_loads_and_does_one_real_thing() {
    let node = workers_node().await;
    let code = r#"module.exports = async function () {
        const out = {};
        const t = (name, f) => { try { out[name] = f(require(name)); } catch (e) { out[name] = 'FAILED: ' + e.stack; } };
        t('async', (m) => typeof m.waterfall);
        t('axios', (m) => typeof m.create().get);
        t('bluebird', (m) => typeof m.promisifyAll);
        t('body-parser', (m) => typeof m.json());
        t('ejs', (m) => m.render('<%= a %>!', { a: 'x&y' }));
        t('express', (m) => typeof m().get);
        t('ipaddr.js', (m) => m.parse('10.1.2.3').range());
        t('jsonwebtoken', (m) => m.decode(m.sign({ sub: 'a' }, 'k', { noTimestamp: true })).sub);
        t('jwks-rsa', (m) => typeof m);
        t('lodash', (m) => m.chunk([1, 2, 3], 2));
        t('moment', (m) => m.utc('2020-02-29T12:00:00Z').add(1, 'year').format('YYYY-MM-DD'));
        t('moment-timezone', (m) => m.tz('2020-06-01T12:00:00Z', 'America/New_York').format('HH:mm Z'));
        t('node-fetch', (m) => typeof m);
        t('oauth-sign', (m) => m.hmacsign('GET', 'http://e.com/', { a: '1' }, 'cs', 'ts'));
        t('q', (m) => typeof m.defer().promise.then);
        t('qs', (m) => m.parse('a[b]=c'));
        t('request', (m) => typeof m.get);
        t('request-promise', (m) => typeof m.get);
        t('slack-notify', (m) => typeof m('https://hooks.slack.com/x').send);
        t('superagent', (m) => typeof m.get);
        t('uuid', (m) => m.validate(m.v4()) && m.v5('hello', m.v5.DNS));
        t('validator', (m) => [m.isEmail('a@b.co'), m.isEmail('nope')]);
        t('webtask-tools', (m) => typeof m.fromExpress);
        t('xml2js', (m) => { let r; m.parseString('<a><b>1</b></a>', (e, v) => { r = v; }); return r; });
        t('xmldom', (m) => new m.DOMParser().parseFromString('<a><b>hi</b></a>', 'text/xml').getElementsByTagName('b')[0].textContent);
        t('xpath', (m) => m.select('string(//b)', new (require('xmldom').DOMParser)().parseFromString('<a><b>hi</b></a>')));
        return out;
    };"#;
    let res = node.run("modules", "", code).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let v = res.json();
    for name in SET {
        assert!(!v[name].is_null() && !v[name].as_str().is_some_and(|s| s.starts_with("FAILED")), "{name}: {}", v[name]);
    }
    assert_eq!(v["ejs"], "x&amp;y!");
    assert_eq!(v["ipaddr.js"], "private");
    assert_eq!(v["jsonwebtoken"], "a");
    assert_eq!(v["lodash"], json!([[1, 2], [3]]));
    assert_eq!(v["moment"], "2021-02-28");
    assert_eq!(v["moment-timezone"], "08:00 -04:00");
    // What oauth-sign computes for the same call under Node 20.
    assert_eq!(v["oauth-sign"], "jwgiRacr+bxszJVnk+9H0qMRHFw=");
    assert_eq!(v["qs"], json!({"a": {"b": "c"}}));
    assert_eq!(v["uuid"], "9342d47a-1bab-5709-9869-c840b2eac501");
    assert_eq!(v["validator"], json!([true, false]));
    assert_eq!(v["xml2js"], json!({"a": {"b": ["1"]}}));
    assert_eq!(v["xmldom"], "hi");
    assert_eq!(v["xpath"], "hi");
}

#[tokio::test]
async fn versioned_require_checks_the_installed_version() {
    let node = TestNode::with_config(modules_config()).await;
    let code = r#"return function (cb) {
        const out = { v4: require('lodash@4').VERSION, caret: require('lodash@^4.17.0') === require('lodash'),
                      range: typeof require('moment@>=2.0.0 <3'), tilde: typeof require('express@~4.21') };
        try { require('lodash@3'); } catch (e) { out.v3 = [e.message, e.code]; }
        try { require('left-pad@1'); } catch (e) { out.absent = e.message; }
        cb(null, out);
    }"#;
    let v = node.run("versions", "", code).await.json();
    assert_eq!(v["v4"], "4.17.21");
    assert_eq!(v["caret"], true);
    assert_eq!(v["range"], "function");
    assert_eq!(v["tilde"], "function");
    assert_eq!(
        v["v3"],
        json!(["Cannot find module 'lodash@3': webtask's module set has lodash@4.17.21, which does not satisfy '3'", "MODULE_NOT_FOUND"])
    );
    assert_eq!(v["absent"], "Cannot find module 'left-pad@1': left-pad is not in webtask's module set");
}

#[tokio::test]
async fn an_express_app_with_two_routes_through_webtask_tools() {
    let code = r#"
        const express = require('express');
        const bodyParser = require('body-parser');
        const app = express();
        app.use(bodyParser.json());
        app.all('/', (req, res) => res.json({ route: 'root', method: req.method, q: req.query.q }));
        app.post('/items/:id', (req, res) => res.status(201).set('X-Id', req.params.id).send({ id: req.params.id, body: req.body }));
        module.exports = require('webtask-tools').fromExpress(app);
    "#;
    let node = workers_node().await;
    // The code is stored per request here, so both routes are reached with
    // the JSON form of /api/run, which carries code and body together.
    let root = serde_json::json!({ "code": code });
    let res = node.request("POST", "/api/run/exp?q=1", Some("application/json"), root.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"route": "root", "method": "POST", "q": "1"}));

    let item = serde_json::json!({ "code": code, "body": { "name": "thing" } });
    let res = node.request("POST", "/api/run/exp/items/42", Some("application/json"), item.to_string()).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.headers["x-id"], "42");
    assert_eq!(res.json(), json!({"id": "42", "body": {"name": "thing"}}));

    let res = node.request("POST", "/api/run/exp/nowhere", Some("application/json"), root.to_string()).await;
    assert_eq!(res.status, 404, "{}", res.text());
}

#[tokio::test]
async fn jsonwebtoken_signs_and_verifies() {
    let node = TestNode::with_config(modules_config()).await;
    let code = r#"return function (cb) {
        const jwt = require('jsonwebtoken');
        const token = jwt.sign({ sub: 'user-1', scope: 'read' }, 'shh', { algorithm: 'HS256', expiresIn: '1h', issuer: 'webtask' });
        const claims = jwt.verify(token, 'shh', { issuer: 'webtask' });
        let wrong;
        try { jwt.verify(token, 'other'); } catch (e) { wrong = [e.name, e.message]; }
        const fixed = jwt.sign({ a: 1 }, 'secret', { noTimestamp: true });
        cb(null, { sub: claims.sub, exp: claims.exp - claims.iat, wrong, fixed });
    }"#;
    let v = node.run("jwt", "", code).await.json();
    assert_eq!(v["sub"], "user-1");
    assert_eq!(v["exp"], 3600);
    assert_eq!(v["wrong"], json!(["JsonWebTokenError", "invalid signature"]));
    // HS256 over {"alg":"HS256","typ":"JWT"}.{"a":1} with "secret", as Node 20 signs it.
    assert_eq!(v["fixed"], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhIjoxfQ.57TF7smP9XDhIexBqPC-F1toZReYZLWb_YRU5tv0sxM");
}

#[tokio::test]
async fn jsonwebtoken_rs256_matches_node() {
    let expect: Value = serde_json::from_str(include_str!("fixtures/expect.json")).unwrap();
    let engine = webtask::Engine::new(modules_config().engine);
    let ctx = webtask::Context::new()
        .data("rsa", include_str!("fixtures/rsa.pem"))
        .data("rsaPub", include_str!("fixtures/rsa.pub"))
        .data("jwt", expect["jwt"].clone());
    let code = r#"return function (context, cb) {
        const jwt = require('jsonwebtoken');
        const { rsa, rsaPub } = context.data;
        const token = jwt.sign({ sub: 'rs' }, rsa, { algorithm: 'RS256', noTimestamp: true });
        let forged;
        try { jwt.verify(context.data.jwt.slice(0, -4) + 'AAAA', rsaPub); } catch (e) { forged = e.message; }
        cb(null, { token, claims: jwt.verify(context.data.jwt, rsaPub, { algorithms: ['RS256'] }), forged });
    }"#;
    let out = engine.run(code, ctx).await.unwrap();
    let v = out.json().unwrap();
    // RS256 is deterministic: the token is byte for byte the one Node signs.
    assert_eq!(v["token"], expect["jwt"]);
    assert_eq!(v["claims"], json!({"sub": "rs"}));
    assert_eq!(v["forged"], "invalid signature");
}

/// axios asks for brotli where zlib can decode it (Node 20 can) and gets
/// the server's brotli answer decoded; a plain `http.get` reading
/// `content-encoding: br` through `zlib.createBrotliDecompress` the same.
#[tokio::test]
async fn axios_and_http_decode_a_brotli_answer() {
    let server = echo_server().await;
    let code = r#"module.exports = function (context, cb) {
        const url = context.data.url + '/brotli';
        const zlib = require('zlib');
        require('axios').get(url).then((r) => {
            const out = { axios: [r.status, r.data] };
            require('http').get(url, { headers: { 'accept-encoding': 'br' } }, (res) => {
                let text = '';
                res.pipe(zlib.createBrotliDecompress()).on('data', (c) => { text += c; }).on('end', () => {
                    out.http = [res.headers['content-encoding'], JSON.parse(text)];
                    cb(null, out);
                }).on('error', cb);
            }).on('error', cb);
        }, cb);
    };"#;
    let want: Value = serde_json::from_str(crate::egress::BROTLI_JSON).unwrap();
    for node in every_target_with(allowing(server, None)).await {
        let res = node.run("brotli", &format!("?url=http://{server}"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        assert_eq!(v["axios"], json!([200, want]));
        assert_eq!(v["http"], json!(["br", want]));
    }
}

#[tokio::test]
async fn request_axios_and_http_reach_an_allowed_server_through_egress() {
    let server = echo_server().await;
    let mut config = allowing(server, None);
    config.engine.limits = modules_config().engine.limits;
    let code = r#"module.exports = function (context, cb) {
        const url = context.data.url;
        const request = require('request');
        const axios = require('axios');
        const http = require('http');
        request.post({ url: url + '/r?x=1', json: { hello: 'request' }, headers: { 'X-Test': 'req' } }, (err, res, body) => {
            if (err) return cb(err);
            const out = { request: [res.statusCode, res.headers['x-echo'], body.method, body.path, body['x-test'], JSON.parse(body.body)] };
            axios.put(url + '/a', { hello: 'axios' }, { headers: { 'X-Test': 'ax' } }).then((r) => {
                out.axios = [r.status, r.headers['x-echo'], r.data.method, r.data['x-test'], JSON.parse(r.data.body)];
                const req = http.request(url + '/h', { method: 'PATCH', headers: { 'x-test': 'node' } }, (res) => {
                    const chunks = [];
                    res.on('data', (c) => chunks.push(c));
                    res.on('end', () => {
                        const b = JSON.parse(Buffer.concat(chunks).toString());
                        out.http = [res.statusCode, res.statusMessage, b.method, b.path, b['x-test'], b.body];
                        require('request-promise')({ uri: url + '/rp', json: true }).then((b2) => {
                            out.rp = b2.path;
                            cb(null, out);
                        }, cb);
                    });
                });
                req.on('error', cb);
                req.write('part1,');
                req.end('part2');
            }, cb);
        });
    };"#;
    for node in every_target_with(config.clone()).await {
        let res = node.run("clients", &format!("?url=http://{server}"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        assert_eq!(v["request"], json!([200, "yes", "POST", "/r?x=1", "req", {"hello": "request"}]));
        assert_eq!(v["axios"], json!([200, "yes", "PUT", "ax", {"hello": "axios"}]));
        assert_eq!(v["http"], json!([200, "OK", "PATCH", "/h", "node", "part1,part2"]));
        assert_eq!(v["rp"], "/rp");
    }
}

#[tokio::test]
async fn node_http_clients_obey_the_egress_policy() {
    let server = echo_server().await;
    // Not allowlisted: loopback is refused, as for fetch.
    let code = r#"module.exports = function (context, cb) {
        require('http').get(context.data.url, () => cb(null, 'reached')).on('error', (e) => {
            require('axios').get(context.data.url).then(() => cb(null, 'reached'), (e2) => cb(null, [e.code, e.message, e2.code]));
        });
    };"#;
    for node in every_target_with(modules_config()).await {
        let v = node.run("clients", &format!("?url=http://{server}/"), code).await.json();
        assert_eq!(v[0], "egress_denied", "{v}");
        assert!(v[1].as_str().unwrap().contains(&server.to_string()), "{v}");
        assert_eq!(v[2], "egress_denied", "{v}");
    }
}


#[tokio::test]
async fn superagent_and_node_fetch_reach_an_allowed_server_and_stream() {
    let server = echo_server().await;
    let (gated, log) = gated_server().await;
    let mut config = allowing(server, None);
    config.egress.allow.push(gated.to_string());
    config.engine.limits = modules_config().engine.limits;
    let code = r#"module.exports = async (context) => {
        const { url, gated } = context.data;
        const superagent = require('superagent');
        const fetch = require('node-fetch');
        const out = {};
        const sa = await superagent.post(url + '/sa').set('X-Test', 'sa').send({ hello: 'superagent' });
        const sb = JSON.parse(sa.text);
        out.superagent = [sa.status, sb.method, sb['x-test'], sb['content-type'], JSON.parse(sb.body)];
        const nf = await fetch(url + '/nf', { method: 'POST', body: JSON.stringify({ hello: 'node-fetch' }), headers: { 'Content-Type': 'application/json', 'X-Test': 'nf' } });
        const b = await nf.json();
        out.nodeFetch = [nf.status, nf.headers.get('x-echo'), b.method, b['x-test'], b['content-type'], JSON.parse(b.body)];
        // node-fetch's body is a Node stream fed as the upstream sends.
        const streamed = await fetch(gated + '/stream');
        out.chunks = await new Promise((resolve, reject) => {
            const chunks = [];
            streamed.body.on('data', (c) => {
                chunks.push(c.toString());
                if (chunks.length === 1) fetch(gated + '/release').then((r) => r.text(), reject);
            });
            streamed.body.on('end', () => resolve(chunks));
            streamed.body.on('error', reject);
        });
        return out;
    };"#;
    for node in every_target_with(config.clone()).await {
        let res = node.run("clients", &format!("?url=http://{server}&gated=http://{gated}"), code).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let v = res.json();
        assert_eq!(v["superagent"], json!([200, "POST", "sa", "application/json", {"hello": "superagent"}]));
        assert_eq!(v["nodeFetch"], json!([200, "yes", "POST", "nf", "application/json", {"hello": "node-fetch"}]));
        assert_eq!(v["chunks"], json!(["first", "rest"]));
        assert_eq!(std::mem::take(&mut *log.lock().unwrap()), ["first sent", "release requested", "released"]);
    }
}

/// `webtask_code_cache_bytes` from a node's metrics.
fn code_cache_bytes(metrics: &str) -> u64 {
    let line = metrics.lines().find(|l| l.starts_with("webtask_code_cache_bytes ")).expect("the code cache gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A webtask that loads what most real ones do.
const LOADS_EXPRESS: &str = r#"
    const express = require('express');
    const app = express();
    app.all('/', (req, res) => res.json({ lodash: require('lodash').VERSION, buffer: Buffer.from('hi').toString('hex') }));
    module.exports = require('webtask-tools').fromExpress(app);
"#;

/// The module set and the Node shim compile from a code cache the engine
/// builds once per process: V8 takes it for every file express loads, and
/// rejects none.
#[tokio::test]
async fn an_engines_isolates_compile_shared_code_from_its_code_cache() {
    use webtask::engine::code_cache;
    let node = TestNode::with_config(modules_config()).await;
    // Built in the background from the engine's start (well under a
    // second in a release build; far more in a debug one on a busy CI).
    crate::support::eventually_within("the code cache built", std::time::Duration::from_secs(240), || async {
        code_cache::installed_bytes() > 0
    })
    .await;
    assert!(code_cache_bytes(&node.metrics().await) > 1_000_000);
    let (consumed, _) = code_cache::counts();
    let res = node.request("POST", "/api/run/cc-fresh", Some("application/javascript"), LOADS_EXPRESS).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"lodash": "4.17.21", "buffer": "6869"}));
    let (after, rejected) = code_cache::counts();
    assert!(after - consumed >= 40, "express and its dependencies took {} caches", after - consumed);
    assert_eq!(rejected, 0, "V8 rejected shared code caches");
}

/// A worker starts V8 with flags of its own (single-threaded, its stack
/// size), so its node has the cache built by a process started the same
/// way; were the flags to differ, every worker would log V8 rejecting it.
#[tokio::test]
async fn workers_compile_shared_code_from_the_cache_their_node_built() {
    let toml = "[workers]\nmode = \"process\"\npool_size = 1\n[jail]\nmode = \"required\"\n\
                [engine.limits]\ncpu_ms = 5000\nwall_ms = 10000\n";
    let node = crate::logs::ServeNode::start("code-cache", toml).await;
    assert!(code_cache_bytes(&node.metrics().await) > 1_000_000);
    for container in ["cc-a", "cc-b"] {
        let (status, body) = crate::logs::post_for_body(node.addr, container, LOADS_EXPRESS).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"lodash": "4.17.21", "buffer": "6869"}));
    }
    let stderr = node.stop_and_read_stderr().await;
    let records: Vec<Value> = stderr.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let built = records.iter().find(|r| r["message"] == "built the workers' code cache").expect("the node built a code cache");
    assert!(built["bytes"].as_u64().is_some_and(|b| b > 1_000_000), "{built}");
    let rejected: Vec<_> = stderr.iter().filter(|l| l.contains("rejected the shared code cache")).collect();
    assert!(rejected.is_empty(), "{rejected:?}");
}

/// `workers.preload_modules`: a pooled worker loads them while idle, before
/// any tenant has it, so a new container finds them loaded; without it a
/// container's module cache starts empty. A module outside the set is a
/// configuration error.
#[tokio::test]
async fn pooled_workers_preload_the_configured_modules() {
    let code = "module.exports = function (cb) { \
        cb(null, Object.keys(require.cache).some((f) => f.startsWith('/node_modules/express/'))); }";
    let mut config = workers_config_from(modules_config());
    config.workers.preload_modules = vec!["express".into()];
    let node = TestNode::with_config(config).await;
    let tries = std::sync::atomic::AtomicUsize::new(0);
    // Each try takes a pooled worker; the next one needs a moment to be
    // spawned and to load express while idle.
    crate::support::eventually_within("a new container with express loaded", std::time::Duration::from_secs(120), || async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        node.run(&format!("preloaded-{n}"), "", code).await.json() == json!(true)
    })
    .await;

    let plain = workers_node().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(plain.run("not-preloaded", "", code).await.json(), json!(false));

    let err = webtask::config::Config::parse("[workers]\npreload_modules = [\"express\", \"left-pad\"]\n").unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "workers.preload_modules: \"left-pad\" is not in the module set (GET /api/env/node/modules lists it)"
    );
}

/// A code-cache builder that hands back something else than a cache (here
/// a wrapper around the binary that prints garbage) costs the node its
/// cache, not its start: it says why and serves, compiling per isolate.
#[tokio::test]
async fn a_node_whose_code_cache_builder_misbehaves_serves_without_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("webtask-cc-garbage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("webtask");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = code-cache ]; then echo 'not a cache'; exit 0; fi\nexec {} \"$@\"\n",
        env!("CARGO_BIN_EXE_webtask")
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let toml = format!(
        "[workers]\nmode = \"process\"\npool_size = 1\nexe = \"{}\"\n[jail]\nmode = \"required\"\n\
         [engine.limits]\ncpu_ms = 5000\nwall_ms = 10000\n",
        wrapper.display()
    );
    let node = crate::logs::ServeNode::start("cc-garbage", &toml).await;
    assert_eq!(code_cache_bytes(&node.metrics().await), 0);
    let (status, body) = crate::logs::post_for_body(node.addr, "cc-garbage", LOADS_EXPRESS).await;
    assert_eq!(status, 200, "{body}");
    let stderr = node.stop_and_read_stderr().await;
    let _ = std::fs::remove_dir_all(&dir);
    let warned = stderr.iter().find(|l| l.contains("no code cache for workers")).expect("the node said it has no cache");
    assert!(warned.contains("not a code cache"), "{warned}");
    assert!(!stderr.iter().any(|l| l.contains("built the workers' code cache")));
}
