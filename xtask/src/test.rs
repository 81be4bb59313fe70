//! `cargo xtask test`: setup, formatting and lint gates, every test, then one summary line
//! `N passed, N failed, N skipped`. Tests that cannot run here record why in
//! HERDWATCH_SKIP_DIR (see agent/tests/common) and count as skipped, not passed.
use std::{
    io::{BufRead as _, BufReader},
    process::Command,
};

use anyhow::Context as _;

use crate::{datasource, fuzz, setup};

/// Seconds each fuzz target runs in `cargo xtask test` (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS_IN_TEST: u32 = 10;

#[derive(Default, Debug)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Lines of one failed test's captured output kept for the closing report.
const FAILURE_LINES_KEPT: usize = 30;

/// What libtest printed about failed tests, kept so the end of the log names them: CI shows
/// only the tail, and the fuzz runs that follow the tests would push the failures out of it.
#[derive(Default, Debug)]
struct Failures {
    /// One `---- name stdout ----` block per failed test, cut to FAILURE_LINES_KEPT lines.
    blocks: Vec<Vec<String>>,
    in_block: bool,
}

impl Failures {
    fn observe(&mut self, line: &str) {
        if line.starts_with("---- ") && line.ends_with(" ----") {
            self.blocks.push(vec![line.to_string()]);
            self.in_block = true;
        } else if line == "failures:" || line.starts_with("test result: ") {
            self.in_block = false;
        } else if self.in_block
            && let Some(block) = self.blocks.last_mut()
            && block.len() < FAILURE_LINES_KEPT
        {
            block.push(line.to_string());
        }
    }

    fn print(&self) {
        for block in &self.blocks {
            for line in block {
                println!("{line}");
            }
        }
    }
}

/// How long each test binary ran (libtest's `finished in`), for the report's list of the
/// slowest: the suite must stay well under CI's limit, and this says where its time goes.
#[derive(Default, Debug)]
struct BinaryTimes {
    /// The binary cargo announced last (`Running tests/replays.rs (target/...)`).
    current: Option<String>,
    seconds: Vec<(String, f64)>,
}

/// Binaries listed in the closing report.
const SLOWEST_LISTED: usize = 10;

impl BinaryTimes {
    fn observe(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            self.current = Some(binary_name(rest));
        } else if line.starts_with("Doc-tests ") {
            self.current = Some(line.to_string());
        } else if line.starts_with("test result: ")
            && let Some(secs) = line
                .rsplit_once("finished in ")
                .and_then(|(_, t)| t.trim_end_matches('s').parse::<f64>().ok())
        {
            let name = self.current.take().unwrap_or_else(|| "(unnamed)".into());
            self.seconds.push((name, secs));
        }
    }

    fn print(&self) {
        let mut by_time = self.seconds.clone();
        by_time.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = by_time.iter().map(|(_, s)| s).sum();
        println!(
            "test binaries: {} ran {total:.0} s in all; the slowest:",
            by_time.len()
        );
        for (name, secs) in by_time.iter().take(SLOWEST_LISTED) {
            println!("  {secs:>7.1} s  {name}");
        }
    }
}

/// `tests/replays.rs (target/debug/deps/replays-2)` → `tests/replays.rs`;
/// `unittests src/lib.rs (target/debug/deps/herdwatch-1)` → `herdwatch src/lib.rs` (every
/// crate's unit tests are `src/lib.rs`, the binary names the crate).
fn binary_name(announced: &str) -> String {
    let Some(source) = announced.strip_prefix("unittests ") else {
        return announced
            .split(" (")
            .next()
            .unwrap_or(announced)
            .to_string();
    };
    let (source, binary) = source.split_once(" (").unwrap_or((source, ""));
    let file = binary
        .trim_end_matches(')')
        .rsplit('/')
        .next()
        .unwrap_or("");
    let krate = file.rsplit_once('-').map_or(file, |(name, _hash)| name);
    format!("{krate} {source}")
}

/// Adds one libtest line `test result: ok. 3 passed; 0 failed; 1 ignored; ...`.
fn add_result_line(line: &str, tally: &mut Tally) -> bool {
    let Some(rest) = line.trim().strip_prefix("test result: ") else {
        return false;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => tally.passed += n,
            "failed" => tally.failed += n,
            "ignored" => tally.ignored += n,
            _ => {}
        }
    }
    true
}

fn gate(name: &str, cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    eprintln!("xtask test: {name}");
    let ok = cmd
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?
        .success();
    if ok {
        tally.passed += 1;
    } else {
        eprintln!("xtask test: {name} FAILED");
        tally.failed += 1;
    }
    Ok(())
}

/// The Grafana plugin's frontend checks and backend build: each gate one test, each Jest test
/// one test, a step that cannot run yet a skip with its reason.
fn datasource_checks(skip_dir: &std::path::Path, tally: &mut Tally) -> anyhow::Result<()> {
    let outcome = datasource::test()?;
    for step in &outcome.steps {
        println!(
            "datasource {} ... {} ({:.0} s)",
            step.name,
            if step.ok { "ok" } else { "FAILED" },
            step.seconds
        );
        if step.ok {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }
    let jest = &outcome.jest;
    println!(
        "datasource jest: {} passed, {} failed, {} pending, {} suites that did not run",
        jest.passed, jest.failed, jest.pending, jest.broken_suites
    );
    tally.passed += jest.passed;
    tally.failed += jest.failed + jest.broken_suites;
    tally.ignored += jest.pending;
    for (i, reason) in outcome.skips.iter().enumerate() {
        // Counted as passed here and subtracted as skipped at the end, as the Rust tests'
        // recorded skips are.
        std::fs::write(skip_dir.join(format!("datasource-{i}")), reason)?;
        tally.passed += 1;
    }
    Ok(())
}

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
    setup::build_prerequisites()?;
    let venv = setup::test_prerequisites()?;
    let root = setup::workspace_root();
    let mut tally = Tally::default();

    if filter.is_none() {
        lint_gates(&root, &mut tally)?;
    }

    let skip_dir = std::env::temp_dir().join(format!("herdwatch-skips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&skip_dir);
    std::fs::create_dir_all(&skip_dir)?;

    let failures = cargo_tests(&root, filter, &venv, &skip_dir, &mut tally)?;
    if filter.is_none() {
        datasource_checks(&skip_dir, &mut tally)?;
        fuzz_targets(&mut tally)?;
    }

    let reasons = recorded_skips(&skip_dir)?;
    let skipped = reasons.len() as u64;
    let _ = std::fs::remove_dir_all(&skip_dir);
    for r in &reasons {
        println!("skipped: {r}");
    }
    failures.print();
    let passed = tally.passed.saturating_sub(skipped);
    println!(
        "{passed} passed, {} failed, {skipped} skipped",
        tally.failed
    );
    if tally.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `cargo fmt --check` and clippy with warnings denied.
fn lint_gates(root: &std::path::Path, tally: &mut Tally) -> anyhow::Result<()> {
    gate(
        "cargo fmt --check",
        Command::new("cargo")
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(root),
        tally,
    )?;
    gate(
        "cargo clippy -D warnings",
        Command::new("cargo")
            .args(["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])
            .current_dir(root),
        tally,
    )
}

/// Runs `cargo test` (one test at a time), echoing its output and counting its results; the
/// failures seen, for the summary at the end.
fn cargo_tests(
    root: &std::path::Path,
    filter: Option<&str>,
    venv: &std::path::Path,
    skip_dir: &std::path::Path,
    tally: &mut Tally,
) -> anyhow::Result<Failures> {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--no-fail-fast"]).current_dir(root);
    cmd.arg("--");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // Kernel tests compare timings with /proc and start real servers: one at a time on 2 CPUs.
    cmd.args(["--test-threads=1"])
        .env("HERDWATCH_TEST_VENV", venv)
        .env("HERDWATCH_SKIP_DIR", skip_dir);
    // cargo names each test binary on stderr just before the binary writes its results on
    // stdout: one pipe for both keeps them in order, so each result has its binary's name.
    let (output, writer) = std::io::pipe().context("a pipe for cargo test's output")?;
    cmd.stdout(writer.try_clone().context("cloning the pipe")?)
        .stderr(writer);
    let mut child = cmd.spawn().context("spawning cargo test")?;
    // The command holds the pipe's writing ends; dropped, the pipe ends with cargo.
    drop(cmd);
    let mut saw_results = false;
    let mut failures = Failures::default();
    let mut times = BinaryTimes::default();
    for line in BufReader::new(output).lines() {
        let line = line?;
        println!("{line}");
        failures.observe(&line);
        times.observe(&line);
        saw_results |= add_result_line(&line, tally);
    }
    let status = child.wait()?;
    times.print();
    if !status.success() && tally.failed == 0 {
        // A build failure, or a test binary that crashed before reporting.
        tally.failed += 1;
        eprintln!("xtask test: cargo test exited with {status} (saw results: {saw_results})");
    }
    Ok(failures)
}

/// Each fuzz target for `FUZZ_SECONDS_IN_TEST`, one result each.
fn fuzz_targets(tally: &mut Tally) -> anyhow::Result<()> {
    fuzz::ensure_cargo_fuzz()?;
    for target in fuzz::TARGETS {
        // libFuzzer's thousands of progress lines would bury the test report in CI's
        // tail; they go to a file whose end is printed only when the target crashes.
        let log = std::env::temp_dir().join(format!("herdwatch-fuzz-{target}.log"));
        eprintln!(
            "xtask test: fuzz {target} for {FUZZ_SECONDS_IN_TEST} s (log: {})",
            log.display()
        );
        if fuzz::run_target(target, FUZZ_SECONDS_IN_TEST, Some(&log))? {
            println!("fuzz {target} ... ok");
            tally.passed += 1;
        } else {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(FAILURE_LINES_KEPT)..] {
                println!("{line}");
            }
            println!("fuzz {target} ... FAILED (crash input in fuzz/artifacts/{target}/)");
            tally.failed += 1;
        }
    }
    Ok(())
}

/// The reasons the tests recorded for what they skipped, sorted.
fn recorded_skips(skip_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut reasons = Vec::new();
    for entry in std::fs::read_dir(skip_dir)?.filter_map(Result::ok) {
        reasons.push(
            std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .trim()
                .to_string(),
        );
    }
    reasons.sort();
    Ok(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        let mut t = Tally::default();
        assert!(add_result_line(
            "test result: ok. 12 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            &mut t
        ));
        assert!(!add_result_line("running 3 tests", &mut t));
        assert_eq!((t.passed, t.failed, t.ignored), (12, 1, 2));
    }

    #[test]
    fn names_each_binarys_time_from_cargos_announcement() {
        let mut t = BinaryTimes::default();
        for line in [
            "     Running unittests src/lib.rs (target/debug/deps/herdwatch-1)",
            "test result: ok. 161 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.20s",
            "     Running tests/replays.rs (target/debug/deps/replays-2)",
            "running 4 tests",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 301.5s",
            "   Doc-tests herdwatch",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.observe(line);
        }
        assert_eq!(
            t.seconds,
            vec![
                ("herdwatch src/lib.rs".to_string(), 3.2),
                ("tests/replays.rs".to_string(), 301.5),
                ("Doc-tests herdwatch".to_string(), 0.0),
            ]
        );
    }

    #[test]
    fn keeps_each_failed_tests_output_for_the_closing_report() {
        let mut f = Failures::default();
        for line in [
            "test a ... ok",
            "failures:",
            "",
            "---- b stdout ----",
            "thread 'b' panicked at tests/x.rs:1:1:",
            "boom",
            "---- c stdout ----",
            "left: 1",
            "",
            "failures:",
            "    b",
            "    c",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored",
        ] {
            f.observe(line);
        }
        assert_eq!(f.blocks.len(), 2);
        assert_eq!(f.blocks[0][2], "boom");
        assert_eq!(f.blocks[1], vec!["---- c stdout ----", "left: 1", ""]);
    }
}
