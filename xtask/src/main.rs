//! `cargo xtask`: the project's own commands. Each does the setup it needs first, so a fresh
//! machine needs nothing but `cargo`.
mod bench;
mod datasource;
mod dist;
mod docs;
mod fuzz;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF programs needs (nightly rust-src, bpf-linker) and mount tracefs.
    Setup {
        /// Also the test dependencies: Debian packages and the Python venv.
        #[arg(long)]
        tests: bool,
    },
    /// Build and run the agent with embedded defaults (live terminal view, no collector).
    Run {
        /// Arguments after `--` go to `herdwatch run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, run every test; ends with `N passed, N failed, N skipped`.
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Regenerate docs/configuration.md from the config struct (a test fails when it is stale).
    Docs,
    /// Fuzz every protocol parser (cargo-fuzz, nightly) for longer than `test` does.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u32,
    },
    /// Replay an incident on real services and print the findings: herd, starvation, cron,
    /// healthy (the same replays `test` runs).
    Demo {
        /// Which replay.
        name: String,
    },
    /// Package for release in `<target>/dist/`: the agent as a .deb (binary, hardened systemd
    /// unit, default config, docs) and a tarball of the same files; the Grafana datasource
    /// plugin as a directory ready for Grafana's plugins folder and a zip of it.
    Dist {
        /// Only one of them: `agent` or `datasource` (default: both).
        what: Option<DistWhat>,
    },
    /// Benchmarks that print ratios measured side by side in one run.
    Bench {
        /// Which benchmark: `sched` (tracing overhead), `pipeline` (decode+parse+stitch rate),
        /// `otlp-down` (peak RSS with the OTLP collector down vs. OTLP off), `frames` (kernel
        /// time per socket record with and without Python frame walking) or `overhead` (the
        /// release agent's cost to gunicorn and uvicorn apps under wrk: throughput ratio, CPU per
        /// 1k req/s, idle CPU, RSS, against a bpftrace peer).
        name: String,
        /// Rounds of the interleaved measurement.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum DistWhat {
    Agent,
    Datasource,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup { tests } => {
            setup::build_prerequisites()?;
            if tests {
                setup::test_prerequisites()?;
                setup::datasource_node_modules()?;
            }
            Ok(())
        }
        Cmd::Run { args } => {
            setup::build_prerequisites()?;
            let mut cmd = std::process::Command::new("cargo");
            cmd.args(["run", "--release", "--package", "herdwatch", "--", "run"])
                .args(args);
            setup::run_checked(&mut cmd)
        }
        Cmd::Test { filter } => test::run(filter.as_deref()),
        Cmd::Demo { name } => {
            const REPLAYS: [&str; 4] = ["herd", "starvation", "cron", "healthy"];
            if !REPLAYS.contains(&name.as_str()) {
                anyhow::bail!("unknown replay {name:?}; known: {}", REPLAYS.join(", "));
            }
            setup::build_prerequisites()?;
            let venv = setup::test_prerequisites()?;
            let mut cmd = std::process::Command::new("cargo");
            cmd.args(["test", "--package", "herdwatch", "--test", "replays", "--"])
                .args(["--exact", &name, "--nocapture"])
                .env("HERDWATCH_TEST_VENV", venv);
            setup::run_checked(&mut cmd)
        }
        Cmd::Dist { what } => {
            if what != Some(DistWhat::Datasource) {
                dist::run()?;
            }
            if what != Some(DistWhat::Agent) {
                datasource::dist()?;
            }
            Ok(())
        }
        Cmd::Docs => docs::run(),
        Cmd::Fuzz { seconds } => {
            setup::build_prerequisites()?;
            fuzz::run_all(seconds)
        }
        Cmd::Bench { name, rounds } => {
            setup::build_prerequisites()?;
            match name.as_str() {
                "sched" => bench::sched(rounds),
                "pipeline" => bench::pipeline(),
                // Peak RSS with OTLP off vs. the collector down, side by side.
                "otlp-down" => bench::ignored_test("otlp", "collector_down_peak_rss", false),
                // Kernel time per socket record with and without Python frame walking.
                "frames" => bench::ignored_test("frame_walk_cost", "frame_walk_cost", false),
                // The release agent's cost to real apps under wrk, rounds alternating.
                "overhead" => bench::ignored_test("overhead", "overhead", true),
                other => anyhow::bail!(
                    "unknown benchmark {other:?}; known: sched, pipeline, otlp-down, frames, overhead"
                ),
            }
        }
    }
}
