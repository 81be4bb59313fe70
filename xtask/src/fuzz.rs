//! Fuzzing the protocol parsers with cargo-fuzz (libFuzzer, nightly).
use std::process::Command;

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

/// Runs one target for `seconds`; Ok(false) when it found a crash.
pub fn run_target(target: &str, seconds: u32) -> anyhow::Result<bool> {
    let root = setup::workspace_root();
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .args(["-rss_limit_mb=2048", "-print_final_stats=0"])
        .current_dir(&root)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    Ok(status.success())
}

pub fn run_all(seconds: u32) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let mut failed = Vec::new();
    for target in TARGETS {
        if !run_target(target, seconds)? {
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
