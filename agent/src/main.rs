//! The `herdwatch` binary: run, top, findings, check, config, version.
use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use herdwatch::{Agent, Config, check, view};

/// The pipeline allocates small, short-lived buffers per socket event; mimalloc's per-thread
/// free lists make that measurably cheaper than glibc's (benches/pipeline.rs uses the same).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The start parsed the kernel's BTF and verified the programs on this thread: tens of MiB
/// allocated and freed. mimalloc purges freed pages lazily, on later allocator work in the
/// same heap, which a mostly idle agent may never do; collected here, they leave the agent's
/// resident set (measured: 25 MiB anonymous after the start, 7 MiB once collected).
fn release_startup_memory() {
    // SAFETY: mi_collect only walks and frees this thread's heap; no pointer is handed over.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[derive(Parser)]
#[command(
    name = "herdwatch",
    version,
    about = "eBPF agent naming the repeating root cause of CPU saturation in Python web fleets"
)]
struct Cli {
    /// TOML config file (defaults apply without one).
    #[arg(long, global = true, env = "HERDWATCH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trace and show the live view (pools, top processes by CPU and run-queue delay).
    Run {
        /// Print one view after one interval and exit.
        #[arg(long)]
        once: bool,
        /// Print snapshots as JSON lines instead of the terminal view.
        #[arg(long)]
        json: bool,
        /// Refresh interval in milliseconds (overrides the config).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// CPU, run-queue and process accounting only: no socket tracing.
        #[arg(long)]
        no_socket_tracing: bool,
    },
    /// Findings of the running agent (read from its local API socket, or --api over TCP).
    Findings {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: herdwatch::export::api::client::ApiFlags,
    },
    /// Interactive view of the running agent (pools, routes, queries, findings) over its API.
    Top(herdwatch::export::top::TopArgs),
    /// Preflight: kernel, BTF, tracefs, capabilities, and a real load+attach of each program.
    Check,
    /// Print the config in effect as TOML, each key with where its value came from (default,
    /// the config file, a HERDWATCH_* variable, a flag).
    Config {
        /// As `run --interval-ms` would override it.
        #[arg(long)]
        interval_ms: Option<u64>,
        /// As `run --no-socket-tracing` would override it.
        #[arg(long)]
        no_socket_tracing: bool,
        /// Print the reference of every key (docs/configuration.md) instead.
        #[arg(long, hide = true)]
        reference: bool,
    },
    /// Print the version.
    Version,
}

/// The one way the config is read: defaults, the file, `HERDWATCH_*`, then flags.
fn load_config(
    path: Option<&PathBuf>,
    interval_ms: Option<u64>,
    no_socket_tracing: bool,
) -> anyhow::Result<Config> {
    Ok(load_layers(path, interval_ms, no_socket_tracing)?.config)
}

/// The config and the layers it came from (for `herdwatch config`).
fn load_layers(
    path: Option<&PathBuf>,
    interval_ms: Option<u64>,
    no_socket_tracing: bool,
) -> anyhow::Result<herdwatch::config::Loaded> {
    let flags = herdwatch::config::Flags {
        interval_ms,
        no_socket_tracing,
    };
    Ok(herdwatch::config::load(
        path.map(PathBuf::as_path),
        // Lossy, not `vars()`: a variable that is not UTF-8 must not panic the agent.
        std::env::vars_os().map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        }),
        flags,
    )?)
}

fn main() -> ExitCode {
    // Transparent huge pages make an allocator arena the agent barely touches 2 MiB of
    // resident memory (idle agent: 40-43 MiB with them, 38 without); pay for what is used.
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERDWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Cmd::Run {
        once: false,
        json: false,
        interval_ms: None,
        no_socket_tracing: false,
    }) {
        Cmd::Version => {
            println!("herdwatch {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        Cmd::Check => Ok(run_check()),
        Cmd::Config {
            reference: true, ..
        } => {
            print!("{}", herdwatch::config::reference::markdown());
            Ok(true)
        }
        Cmd::Config {
            interval_ms,
            no_socket_tracing,
            reference: false,
        } => load_layers(cli.config.as_ref(), interval_ms, no_socket_tracing).map(|loaded| {
            print!("{}", loaded.render());
            true
        }),
        Cmd::Findings { json, api } => load_config(cli.config.as_ref(), None, false)
            .and_then(|c| print_findings(&c, &api, json)),
        Cmd::Top(args) => load_config(cli.config.as_ref(), None, false).and_then(|c| {
            herdwatch::export::top::main(&args, c.api_socket.as_deref())?;
            Ok(true)
        }),
        Cmd::Run {
            once,
            json,
            interval_ms,
            no_socket_tracing,
        } => {
            // The same layers again at every SIGHUP: file, environment, flags.
            let reload = || load_config(cli.config.as_ref(), interval_ms, no_socket_tracing);
            reload().and_then(|config| run(config, once, json, &reload))
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            // Each cause once: most of the library's errors already quote their source.
            eprintln!("herdwatch: {}", herdwatch::error::describe(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn print_findings(
    config: &Config,
    api: &herdwatch::export::api::client::ApiFlags,
    json: bool,
) -> anyhow::Result<bool> {
    use herdwatch::export::api::client;
    let target = client::Target::from_flags(api, config.api_socket.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let findings = runtime.block_on(client::findings_at(&target))?;
    if json {
        // The model's JSON, the shape `findings --json` has always printed.
        println!("{}", serde_json::to_string(&findings)?);
        return Ok(true);
    }
    print!("{}", view::render_findings(&findings, usize::MAX));
    Ok(true)
}

fn run_check() -> bool {
    let lines = check::run_checks();
    for l in &lines {
        println!(
            "{} {:<28} {}",
            if l.ok { "ok  " } else { "FAIL" },
            l.name,
            l.detail
        );
    }
    lines.iter().all(|l| l.ok)
}

fn run(
    config: Config,
    once: bool,
    json: bool,
    reload: &dyn Fn() -> anyhow::Result<Config>,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        // Listening before the start: a service manager's SIGTERM during the seconds of
        // loading still ends the agent cleanly, rather than by the default action.
        let mut stop = StopSignals::listen()?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let mut running = config.clone();
        let mut agent = tokio::select! {
            agent = Agent::start(&config) => agent?,
            signal = stop.next() => {
                tracing::info!("{signal} during the start: stopping");
                return Ok(true);
            }
        };
        release_startup_memory();
        let mut updates = agent.subscribe();
        let print = |snap: &herdwatch::model::Snapshot| -> anyhow::Result<()> {
            let mut stdout = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut stdout, snap)?;
                writeln!(stdout)?;
            } else {
                if !once {
                    // Clear the screen and home the cursor for the live view.
                    write!(stdout, "\x1b[2J\x1b[H")?;
                }
                write!(stdout, "{}", view::render(snap))?;
            }
            stdout.flush()?;
            Ok(())
        };
        loop {
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() { return Ok(false); }
                    let snap = updates.borrow_and_update().clone();
                    print(&snap)?;
                    if once {
                        // The first periodic snapshot covers one full interval since start.
                        agent.stop().await?;
                        return Ok(true);
                    }
                }
                _ = hangup.recv() => reload_config(&mut agent, &mut running, reload).await,
                signal = stop.next() => {
                    tracing::info!("{signal}: stopping");
                    // Applies what is queued, flushes the exporters, detaches the programs
                    // and removes the API socket.
                    agent.stop().await?;
                    return Ok(true);
                }
            }
        }
    })
}

/// SIGHUP: the config is read again (same file, environment and flags) and applied without
/// reloading the kernel programs: detector thresholds, route patterns, and the exporters
/// (OTLP, the API listeners, `/metrics`) whose keys changed. A config that does not load or
/// validate, or an exporter that does not start, leaves the running one in place with one
/// error logged; keys that only a restart can apply (map sizes, intervals…) are named in a
/// warning.
async fn reload_config(
    agent: &mut Agent,
    running: &mut Config,
    reload: &dyn Fn() -> anyhow::Result<Config>,
) {
    let new = match reload() {
        Ok(new) => new,
        Err(err) => {
            tracing::error!("SIGHUP: the config is refused, the running one stays: {err:#}");
            return;
        }
    };
    let restarted = match agent.reconfigure(running, &new).await {
        Ok(restarted) => restarted,
        Err(err) => {
            tracing::error!("SIGHUP: {err}");
            return;
        }
    };
    let at_restart = keys_needing_a_restart(running, &new);
    let exporters = if restarted.is_empty() {
        String::new()
    } else {
        format!("; restarted {}", restarted.join(", "))
    };
    tracing::info!(
        "SIGHUP: config reloaded; detector thresholds and route patterns in effect{exporters}"
    );
    if !at_restart.is_empty() {
        tracing::warn!(
            "SIGHUP: {} changed and take(s) effect at the next restart",
            at_restart.join(", ")
        );
    }
    *running = new;
}

/// Top-level keys a reload applies: the rest changed only take effect at a restart.
const RELOADED_KEYS: [&str; 10] = [
    "detect",
    "route_patterns",
    "otlp",
    "api_socket",
    "api_listen",
    "api_tls_cert",
    "api_tls_key",
    "api_token_file",
    "api_insecure",
    "prometheus_listen",
];

/// Top-level keys whose values differ, other than those a reload applies.
fn keys_needing_a_restart(old: &Config, new: &Config) -> Vec<String> {
    // The finding book's bound is under `detect` but sized at the start.
    let book_bound = (old.detect.max_findings != new.detect.max_findings)
        .then(|| "detect.max_findings".to_string());
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return book_bound.into_iter().collect();
    };
    new.iter()
        .filter(|(key, _)| !RELOADED_KEYS.contains(&key.as_str()))
        .filter(|(key, value)| old.get(key.as_str()) != Some(value))
        .map(|(key, _)| key.clone())
        .chain(book_bound)
        .collect()
}

/// SIGTERM (what service managers and the kubelet send) and SIGINT (Ctrl-C): both stop the
/// agent cleanly, with exit code 0.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// The name of the next stop signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
