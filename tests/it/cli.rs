//! The `webtask` binary: `run` once, and `serve` until SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_webtask");

fn script(code: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("webtask-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.js", code.len() * 31 + code.bytes().map(usize::from).sum::<usize>()));
    std::fs::write(&path, code).unwrap();
    path
}

#[test]
fn run_prints_the_result_and_logs_console_to_stderr() {
    let file = script("return function (ctx, cb) { console.warn('about to greet', {n: 1}); cb(null, 'Hello, ' + ctx.data.name); }");
    let out = Command::new(BIN).arg("run").arg(&file).args(["--data", "name=cli"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#""Hello, cli""#);
    let record: Value = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "webtask::guest")
        .expect("a guest log record on stderr");
    // Formatted as Node's util.format does.
    assert_eq!(record["message"], "about to greet { n: 1 }");
    assert_eq!(record["level"], "WARN");
    assert_eq!(record["container"], "default");
    assert!(!record["req_id"].as_str().unwrap().is_empty());
}

#[test]
fn the_binary_runs_without_its_source_tree() {
    // An installed binary has no checkout beside it: hide the runtime's
    // sources (an empty tmpfs over js_runtime/, in a mount namespace of
    // this test's own) and the node still builds its snapshot.
    let sources = concat!(env!("CARGO_MANIFEST_DIR"), "/js_runtime");
    let file = script("return function (cb) { cb(null, typeof require('crypto').createHash); }");
    let hidden = format!("mount -t tmpfs none {sources} && test ! -e {sources}/bootstrap.js && exec {BIN} run {}", file.display());
    let out = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &hidden]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#""function""#);
}

#[test]
fn run_reports_errors_as_json_and_fails() {
    let file = script("return function (cb) { cb(new Error('nope')); }");
    let out = Command::new(BIN).arg("run").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["code"].as_u64(), v["message"].as_str()), (Some(500), Some("nope")));
}

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| serde_json::from_str::<Value>(&l).ok()?["addr"].as_str().map(str::to_owned))
        .expect("listening record");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let code = r#"return function (context, cb) { cb(null, "Hello, " + context.data.name); }"#;
        let req = format!(
            "POST /api/run/demo?name=webtask HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{code}",
            code.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with(r#""Hello, webtask""#), "{body}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(lines.map_while(Result::ok).any(|l| l.contains("webtask node stopped")));
}
