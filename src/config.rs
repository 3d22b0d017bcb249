//! Node configuration (`webtask.toml`). Every field has an embedded default,
//! so `webtask serve` with no file runs a working single node.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! threads = 4
//!
//! [http]
//! body_bytes = 1048576
//!
//! [engine.limits]
//! cpu_ms = 1000
//! heap_mb = 128
//! ```

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

use crate::egress::EgressConfig;
use crate::engine::EngineConfig;
use crate::jail::JailConfig;
use crate::logs::LogsConfig;
use crate::pool::{Mode, PoolConfig};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Threads of the node's own runtime (HTTP, routing to workers, egress,
    /// logs); see [`Config::node_threads`] for the default.
    pub threads: Option<NonZeroUsize>,
    pub http: HttpConfig,
    pub engine: EngineConfig,
    pub workers: PoolConfig,
    pub jail: JailConfig,
    pub egress: EgressConfig,
    pub logs: LogsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([127, 0, 0, 1], 8080).into(),
            threads: None,
            http: HttpConfig::default(),
            engine: EngineConfig::default(),
            workers: PoolConfig::default(),
            jail: JailConfig::default(),
            egress: EgressConfig::default(),
            logs: LogsConfig::default(),
        }
    }
}

/// Limits the HTTP layer enforces before a request reaches the engine.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body; larger ones get `413` before they are read whole.
    pub body_bytes: u64,
    /// Largest request head (request line and headers); larger gets `431`.
    pub header_bytes: usize,
    /// Time a client has to send a complete request head; also how long an
    /// idle keep-alive connection is kept.
    pub header_timeout_ms: u64,
    /// Time a client has, once the head is in, to send the whole request
    /// body; past it the request gets `408 body_timeout`. Bounds how long a
    /// stalled upload holds up to `body_bytes` of the node's memory.
    pub body_timeout_ms: u64,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_bytes: 1024 * 1024,
            header_bytes: 16 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// More node threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

impl Config {
    /// Reads a TOML file; missing fields take their defaults, unknown ones are errors.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// How many threads the node's runtime gets: `threads` if set, else
    /// half the cores, rounded up, in `process` mode, where the workers run
    /// the guest code in their own processes on the same cores, and every
    /// core in `in-process` mode. Measured on two cores (`wrk -t2 -c32`,
    /// one container, runs alternated): with workers, one node thread spent
    /// 20–23 µs of CPU per request against 24–27 µs for two, at the same
    /// requests per second; in-process, two threads served 46–51k requests
    /// a second against 39–40k for one.
    pub fn node_threads(&self) -> usize {
        if let Some(threads) = self.threads {
            return threads.get();
        }
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        match self.workers.mode {
            Mode::Process => cores.div_ceil(2),
            Mode::InProcess => cores,
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text)?;
        if config.threads.is_some_and(|n| n.get() > MAX_THREADS) {
            anyhow::bail!("threads must be at most {MAX_THREADS}");
        }
        config.logs.validate().map_err(anyhow::Error::msg)?;
        config.engine.limits.validate().map_err(anyhow::Error::msg)?;
        config.workers.validate().map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_threads_leave_cores_to_workers_unless_set() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let process = Config::default();
        assert_eq!(process.node_threads(), cores.div_ceil(2));
        let in_process = Config::parse("[workers]\nmode = \"in-process\"\n").unwrap();
        assert_eq!(in_process.node_threads(), cores);
        assert_eq!(Config::parse("threads = 3\n").unwrap().node_threads(), 3);
        // serde's own message for a zero NonZeroUsize, then ours.
        let err = Config::parse("threads = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("nonzero"), "{err:#}");
        let err = Config::parse("threads = 100000\n").unwrap_err();
        assert_eq!(format!("{err:#}"), "threads must be at most 1024");
    }
}
