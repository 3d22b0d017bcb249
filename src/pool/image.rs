//! The image the node hands its workers (`worker::image`): the startup
//! snapshot, and the code cache a `webtask code-cache` process builds from
//! it with the workers' V8 flags. Built once per process and V8
//! configuration (a test process starts many pools), before the zygote
//! starts, so every worker has the cache from its first request.
//!
//! The cache is a speed-up: if it cannot be built (the builder fails,
//! hangs, or hands back what `engine::code_cache::check_shape` refuses), the node
//! says so and its workers compile shared code per isolate. The builder is
//! this binary running its own code, so what passes the check is trusted
//! as the binary is.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::engine::{self, Error, Limits};
use crate::worker::image;

/// How long the builder may take (about 0.5 s on a 2-core machine; a
/// node's start waits for it).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest cache the node takes from the builder (about 4 MB in practice).
const MAX_CACHE: u64 = 256 << 20;

/// The image for workers of `limits` running `exe`, in a sealed memfd,
/// and the size of the code cache in it; without one if `with_cache` is
/// false.
pub async fn for_workers(exe: &std::path::Path, limits: &Limits, with_cache: bool) -> Result<(OwnedFd, usize), Error> {
    let snapshot = engine::snapshot_blob(limits);
    let cache = match with_cache {
        true => code_cache(exe, snapshot, limits).await,
        false => Arc::default(),
    };
    Ok((image::create(snapshot, &cache).map_err(Error::internal)?, cache.len()))
}

/// The code cache for workers of `exe` with V8 configured by `limits` (its
/// stack size and memory caps are V8 flags); built on first call.
async fn code_cache(exe: &std::path::Path, snapshot: &[u8], limits: &Limits) -> Arc<Vec<u8>> {
    type Built = tokio::sync::Mutex<HashMap<(std::path::PathBuf, u32, u64), Arc<Vec<u8>>>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    // Held while building: pools starting together wait for one build.
    let mut built = BUILT.get_or_init(Built::default).lock().await;
    let key = (exe.to_owned(), limits.stack_kb, limits.array_buffer_mb);
    if let Some(cache) = built.get(&key) {
        return cache.clone();
    }
    let started = Instant::now();
    let cache = match build(exe, snapshot, limits).await {
        Ok(cache) => {
            tracing::info!(bytes = cache.len(), ms = started.elapsed().as_millis() as u64, "built the workers' code cache");
            cache
        }
        Err(e) => {
            tracing::warn!(error = %e, "no code cache for workers: each compiles the Node shim and modules itself");
            Vec::new()
        }
    };
    built.entry(key).or_insert(Arc::new(cache)).clone()
}

async fn build(exe: &std::path::Path, snapshot: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
    let input = image::create(snapshot, &[]).map_err(Error::internal)?;
    let mut process = tokio::process::Command::new(exe)
        .args(["code-cache", "--node-pid", &std::process::id().to_string()])
        .args(["--limits", &serde_json::to_string(limits).map_err(Error::internal)?])
        .env_clear()
        .envs(std::env::var_os("WEBTASK_LOG").map(|v| ("WEBTASK_LOG", v)))
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::internal(format!("starting the code-cache builder: {e}")))?;
    if let Some(stderr) = process.stderr.take() {
        tokio::spawn(super::process::relay_stderr(stderr, process.id().unwrap_or(0)));
    }
    let mut stdout = process.stdout.take().expect("piped");
    let run = async {
        let mut cache = Vec::new();
        (&mut stdout).take(MAX_CACHE + 1).read_to_end(&mut cache).await?;
        if cache.len() as u64 > MAX_CACHE {
            return Ok((cache, None));
        }
        Ok::<_, std::io::Error>((cache, Some(process.wait().await?)))
    };
    // Dropped on every error path, the builder is killed (`kill_on_drop`).
    let cache = match tokio::time::timeout(BUILD_TIMEOUT, run).await {
        Ok(Ok((cache, Some(status)))) if status.success() => cache,
        Ok(Ok((_, Some(status)))) => return Err(Error::internal(format!("the code-cache builder failed ({status})"))),
        Ok(Ok((_, None))) => return Err(Error::internal(format!("the code cache is over {MAX_CACHE} bytes"))),
        Ok(Err(e)) => return Err(Error::internal(format!("reading the code cache: {e}"))),
        Err(_) => return Err(Error::internal(format!("the code-cache builder took over {BUILD_TIMEOUT:?}"))),
    };
    engine::code_cache::check_shape(&cache).map_err(|why| Error::internal(format!("the builder's code cache is refused: {why}")))?;
    Ok(cache)
}
