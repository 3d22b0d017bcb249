//! The `webtask` command: `serve` a node, `run` one webtask file once, or
//! follow a container's `logs`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use webtask::api::{self, Node};
use webtask::config::Config;
use webtask::egress::Egress;
use webtask::logs::layer::SystemLayer;
use webtask::logs::Logs;
use webtask::pool::Runner;
use webtask::{Context, Engine};

/// The node's hot path allocates small, short-lived buffers, on several
/// threads at once (HTTP parsing, frames to workers); glibc's allocator
/// spent ~5 % of the node's CPU there under load. V8 keeps its own.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "webtask", version, about = "Run untrusted JavaScript per HTTP request, per tenant, in V8")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node serving the HTTP API.
    Serve {
        /// Address to listen on (overrides the config file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// webtask.toml; embedded defaults without it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a webtask file once and print its JSON result.
    Run {
        file: PathBuf,
        /// `key=value`, visible in context.data (repeatable).
        #[arg(long = "data", value_parser = parse_kv)]
        data: Vec<(String, String)>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Follow a container's log stream and pretty-print it.
    Logs {
        container: String,
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Replay this many seconds of records first.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Which jail layers this host can enforce, and why not.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// A jailed probe process; started by `doctor` and tests.
    #[command(hide = true)]
    JailCheck {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        action: String,
    },
    /// The process a node forks its workers from; started by a node,
    /// never by hand.
    #[command(hide = true)]
    Zygote {
        /// The node that spawned it: the zygote and its workers die with it.
        #[arg(long)]
        node_pid: i32,
    },
    /// Builds the code cache a node's workers share; started by a node,
    /// never by hand.
    #[command(hide = true)]
    CodeCache {
        #[arg(long)]
        node_pid: i32,
        /// The workers' engine limits, as JSON (V8's flags follow them).
        #[arg(long)]
        limits: String,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // stderr gets what WEBTASK_LOG asks for. Only `serve` has a system log
    // stream: its layer, behind its own filter, takes the node's own events
    // once a node starts; other commands leave those callsites disabled.
    let system = matches!(cli.command, Command::Serve { .. }).then(SystemLayer::new);
    let stderr = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_env("WEBTASK_LOG").unwrap_or_else(|_| EnvFilter::new("info")));
    let system_layer = system.clone().map(|layer| layer.with_filter(SystemLayer::filter()));
    tracing_subscriber::registry().with(stderr).with(system_layer).init();
    match cli.command {
        Command::Zygote { node_pid } => return webtask::worker::zygote::main(node_pid),
        Command::CodeCache { node_pid, limits } => {
            return webtask::worker::code_cache::main(node_pid, serde_json::from_str(&limits).context("limits")?);
        }
        Command::JailCheck { spec, action } => {
            return webtask::jail::check::main(&serde_json::from_str(&spec).context("jail spec")?, &action);
        }
        Command::Doctor { config } => return doctor(load(config)?),
        _ => {}
    }
    let runtime = |threads: Option<usize>| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = threads {
            builder.worker_threads(n);
        }
        builder.enable_all().build()
    };
    match cli.command {
        Command::Serve { listen, config } => {
            let system = system.expect("installed for serve");
            let config = load(config)?;
            runtime(Some(config.node_threads()))?.block_on(serve(config, listen, system))
        }
        Command::Logs { container, url, since } => runtime(None)?.block_on(follow(container, url, since)),
        Command::Run { file, data, config } => runtime(None)?.block_on(run_once(load(config)?, file, data)),
        Command::Zygote { .. } | Command::CodeCache { .. } | Command::JailCheck { .. } | Command::Doctor { .. } => unreachable!("handled above"),
    }
}

async fn follow(container: String, url: String, since: Option<u64>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let mut stdout = std::io::stdout();
    let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let tail = webtask::logs::tail::Tail { url, container, since, colour };
    tail.run(&mut stdout).await?;
    anyhow::bail!("the node ended the stream")
}

/// Applies the jail in a probe process and prints what held.
fn doctor(config: Config) -> anyhow::Result<()> {
    use webtask::jail::{self, JailMode};
    let mut jail_config = config.jail.clone();
    jail_config.mode = JailMode::BestEffort;
    let exe = std::env::current_exe()?;
    let outcome = jail::check::run(&exe, &jail_config, "nothing")?;
    println!("cgroup hierarchy: {:?}", jail::cgroup::detect());
    println!("landlock ABI:     {:?}", jail::landlock::kernel_abi());
    let migrations = if jail::cgroup::favors_dynmods() { "fast (favordynmods)" } else { "slow (no favordynmods; a node with jail.favor_dynmods sets it)" };
    println!("cgroup moves:     {migrations}");
    println!();
    let mut all = true;
    for layer in &outcome.layers {
        all &= layer.applied;
        let mark = if layer.applied { "ok  " } else { "MISSING" };
        println!("{mark:8} {:13} {}", layer.layer, layer.detail);
    }
    println!();
    if all {
        println!("every layer is enforced: jail = \"required\" will start");
        Ok(())
    } else {
        println!("some layers are missing: jail = \"required\" will refuse to start");
        std::process::exit(1);
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    path.map_or_else(|| Ok(Config::default()), |p| Config::load(&p))
}

/// How long a stopping node waits for its log store to take what it holds.
const LOGS_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a stopping node waits for its killed workers to be reaped.
const WORKERS_REAPED_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn serve(mut config: Config, listen: Option<std::net::SocketAddr>, system: SystemLayer) -> anyhow::Result<()> {
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let egress = Egress::new(&config.egress, vec![addr]).map_err(anyhow::Error::msg)?;
    let logs = Logs::start(&config.logs)?;
    system.attach(logs.clone());
    let runner = Runner::start(&config.workers, &config.engine, &config.jail, egress, &logs).await?;
    tracing::info!(%addr, "webtask node listening");
    let node = Node::new(runner, config.http.clone(), logs);
    api::serve(node.clone(), listener, shutdown_signal()).await;
    node.runner.shutdown(WORKERS_REAPED_WITHIN).await;
    // Records Kafka has not taken yet get a moment; the rest are counted lost.
    node.logs.shutdown(LOGS_FLUSH).await;
    tracing::info!("webtask node stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn run_once(mut config: Config, file: PathBuf, data: Vec<(String, String)>) -> anyhow::Result<()> {
    let code = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    // One run: building the cache would cost more than it saves.
    config.engine.code_cache = false;
    let egress = Egress::new(&config.egress, vec![]).map_err(anyhow::Error::msg)?;
    let engine = Engine::with_fetcher(config.engine, std::sync::Arc::new(egress));
    let mut context = Context::new();
    context.query = data;
    match engine.run(code, context).await {
        Ok(out) => {
            println!("{}", String::from_utf8_lossy(&out.body));
            Ok(())
        }
        Err(err) => {
            println!("{}", api::error_json(&err));
            std::process::exit(1);
        }
    }
}
