//! Fuzzing the protocol parsers with cargo-fuzz (libFuzzer, nightly).
use std::{fs::File, path::Path, process::Command};

use anyhow::Context as _;

use crate::setup;

/// Every target in fuzz/fuzz_targets.
pub const TARGETS: [&str; 4] = ["postgres_session", "http_session", "fingerprint", "route"];

pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !present {
        eprintln!("xtask setup: installing cargo-fuzz");
        setup::run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Runs one target for `seconds`; Ok(false) when it found a crash. With `log`, libFuzzer's
/// progress lines go to that file instead of the terminal.
pub fn run_target(target: &str, seconds: u32, log: Option<&Path>) -> anyhow::Result<bool> {
    let root = setup::workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .args(["-rss_limit_mb=2048", "-print_final_stats=0"])
        .current_dir(&root);
    if let Some(log) = log {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    Ok(status.success())
}

pub fn run_all(seconds: u32) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let mut failed = Vec::new();
    for target in TARGETS {
        if !run_target(target, seconds, None)? {
            failed.push(target);
        }
    }
    if failed.is_empty() {
        println!(
            "fuzz: {} targets ran {seconds} s each without a crash",
            TARGETS.len()
        );
        Ok(())
    } else {
        anyhow::bail!(
            "fuzz targets crashed: {} (inputs in fuzz/artifacts/)",
            failed.join(", ")
        )
    }
}
