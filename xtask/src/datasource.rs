//! The Grafana datasource plugin (`datasource/`): its checks in `cargo xtask test` (lint,
//! typecheck, Jest, a production build that must be byte-identical when repeated, the Rust
//! backend) and its layout for `cargo xtask dist`: `<target>/dist/herdwatch-fleet-datasource/`
//! holding what Grafana loads from its plugins folder, plus a zip of it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    dist::target_dir,
    setup::{self, run_checked, workspace_root},
};

/// Grafana's plugin id: the directory name in its plugins folder, and `id` in plugin.json.
pub const PLUGIN_ID: &str = "herdwatch-fleet-datasource";
/// `executable` in plugin.json; Grafana starts `<executable>_<os>_<arch>`.
const EXECUTABLE: &str = "gpx_herdwatch";
/// The Rust backend's package, built once its crate exists (another branch brings it).
const BACKEND_PACKAGE: &str = "herdwatch-datasource";
/// Grafana's arch names (Go's GOARCH) for the binaries we ship.
const ARCHES: [&str; 2] = ["amd64", "arm64"];

pub fn plugin_dir() -> PathBuf {
    workspace_root().join("datasource")
}

fn backend_manifest() -> PathBuf {
    plugin_dir().join("backend/Cargo.toml")
}

fn npm(args: &[&str]) -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(args).current_dir(plugin_dir());
    cmd
}

/// One step's outcome for `cargo xtask test`; its time is printed for the CI budget.
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub seconds: f64,
}

fn step(name: &'static str, run: impl FnOnce() -> anyhow::Result<bool>) -> Step {
    eprintln!("xtask test: datasource {name}");
    let started = Instant::now();
    let ok = match run() {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("xtask test: datasource {name}: {e:#}");
            false
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "xtask test: datasource {name} {} in {seconds:.0} s",
        if ok { "ok" } else { "FAILED" }
    );
    Step { name, ok, seconds }
}

fn succeeds(cmd: &mut Command) -> anyhow::Result<bool> {
    Ok(cmd
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?
        .success())
}

/// Jest's counts, from its `--json` report.
#[derive(Debug, Default, PartialEq)]
pub struct JestCounts {
    pub passed: u64,
    pub failed: u64,
    /// `test.skip` and `test.todo`: counted like libtest's ignored tests.
    pub pending: u64,
    /// Suites that failed to run at all (a syntax error, a missing import): each is a failure
    /// the per-test counts do not show.
    pub broken_suites: u64,
}

pub fn parse_jest_report(json: &str) -> anyhow::Result<JestCounts> {
    let report: serde_json::Value =
        serde_json::from_str(json).context("Jest's --json report is not JSON")?;
    let count = |key: &str| -> anyhow::Result<u64> {
        report
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("Jest's report has no count {key:?}"))
    };
    Ok(JestCounts {
        passed: count("numPassedTests")?,
        failed: count("numFailedTests")?,
        pending: count("numPendingTests")? + count("numTodoTests")?,
        broken_suites: count("numRuntimeErrorTestSuites")?,
    })
}

/// Runs Jest once; its counts join the suite's total.
fn jest() -> anyhow::Result<JestCounts> {
    let report = std::env::temp_dir().join(format!("herdwatch-jest-{}.json", std::process::id()));
    // Jest's exit status is implied by the counts; its own summary goes to the log.
    let status = npm(&["run", "test:ci", "--", "--json", "--outputFile"])
        .arg(&report)
        .status()
        .context("spawning jest")?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("Jest wrote no report ({status})"))?;
    let _ = std::fs::remove_file(&report);
    let counts = parse_jest_report(&text)?;
    if !status.success() && counts.failed == 0 && counts.broken_suites == 0 {
        bail!("jest exited with {status} and reported no failure");
    }
    Ok(counts)
}

/// Builds `dist/` twice from the same `node_modules` (webpack's cache cleared between) and
/// compares `module.js`: what Grafana loads must follow from the sources and the lockfile alone.
fn reproducible_build() -> anyhow::Result<bool> {
    let dir = plugin_dir();
    let module = dir.join("dist/module.js");
    let mut builds = Vec::new();
    for _ in 0..2 {
        let _ = std::fs::remove_dir_all(dir.join("node_modules/.cache/webpack"));
        let _ = std::fs::remove_dir_all(dir.join("dist"));
        if !succeeds(&mut npm(&["run", "build"]))? {
            return Ok(false);
        }
        builds
            .push(std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?);
    }
    let same = builds[0] == builds[1];
    eprintln!(
        "xtask test: dist/module.js {} bytes, {}",
        builds[0].len(),
        if same {
            "identical in both builds"
        } else {
            "DIFFERS between two builds"
        }
    );
    Ok(same)
}

/// What `cargo xtask test` adds for the plugin: gates counted as one test each, Jest's tests
/// counted one by one. A backend not yet on this branch is a skip with its reason.
pub struct TestOutcome {
    pub steps: Vec<Step>,
    pub jest: JestCounts,
    pub skips: Vec<String>,
}

pub fn test() -> anyhow::Result<TestOutcome> {
    setup::datasource_node_modules()?;
    let mut steps = vec![
        step("lint", || succeeds(&mut npm(&["run", "lint"]))),
        step("typecheck", || succeeds(&mut npm(&["run", "typecheck"]))),
    ];
    let mut counts = JestCounts::default();
    let started = Instant::now();
    match jest() {
        Ok(c) => counts = c,
        Err(e) => {
            eprintln!("xtask test: datasource jest: {e:#}");
            counts.broken_suites += 1;
        }
    }
    eprintln!(
        "xtask test: datasource jest: {} passed, {} failed, {} pending in {:.0} s",
        counts.passed,
        counts.failed,
        counts.pending,
        started.elapsed().as_secs_f64()
    );
    steps.push(step("production build, reproducible", reproducible_build));
    let mut skips = Vec::new();
    if backend_manifest().is_file() {
        steps.push(step("backend build", || {
            succeeds(
                Command::new("cargo")
                    .args(["build", "--package", BACKEND_PACKAGE])
                    .current_dir(workspace_root()),
            )
        }));
    } else {
        skips.push(format!(
            "datasource backend build: {} is not on this branch yet",
            backend_manifest().display()
        ));
    }
    Ok(TestOutcome {
        steps,
        jest: counts,
        skips,
    })
}

/// `cargo xtask dist datasource`: the production frontend, the release backend (and an
/// arm64 one when a cross build exists) and plugin.json in one directory, checked, and zipped.
pub fn dist() -> anyhow::Result<()> {
    setup::datasource_node_modules()?;
    setup::debian_packages(&[("command -v zip", "zip")])?;
    if !backend_manifest().is_file() {
        bail!(
            "{} is absent: the plugin's Rust backend is not on this branch yet, and Grafana \
             refuses a backend plugin without its executable",
            backend_manifest().display()
        );
    }
    run_checked(&mut npm(&["run", "build"]))?;
    run_checked(
        Command::new("cargo")
            .args(["build", "--release", "--package", BACKEND_PACKAGE])
            .current_dir(workspace_root()),
    )?;
    let target = target_dir();
    let out = target.join("dist");
    let stage = out.join(PLUGIN_ID);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    copy_tree(&plugin_dir().join("dist"), &stage)?;
    let mut binaries = 0;
    for (dir, arch) in backend_builds(&target) {
        // The crate names its binary for amd64; built for another triple it is that arch's.
        let Some(built) = ["amd64", "arm64"]
            .iter()
            .map(|a| dir.join(format!("{EXECUTABLE}_linux_{a}")))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let name = format!("{EXECUTABLE}_linux_{arch}");
        if stage.join(&name).exists() {
            continue;
        }
        std::fs::copy(&built, stage.join(&name))
            .with_context(|| format!("copying {}", built.display()))?;
        if Some(arch) == host_arch() {
            // The release profile keeps line tables for profiling the agent (70 MB here);
            // Grafana gets the binary without them, as the agent's .deb does.
            run_checked(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg(stage.join(&name)),
            )?;
        }
        binaries += 1;
    }
    if binaries == 0 {
        bail!("no {EXECUTABLE}_linux_* binary under {}", target.display());
    }
    check_layout(&stage)?;
    let zip = out.join(format!("{PLUGIN_ID}-{}.zip", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&zip);
    run_checked(
        Command::new("zip")
            .args(["-q", "-r", "-X"])
            .arg(&zip)
            .arg(PLUGIN_ID)
            .current_dir(&out),
    )?;
    eprintln!(
        "xtask dist: {} (copy it into Grafana's plugins folder) and {}",
        stage.display(),
        zip.display()
    );
    Ok(())
}

/// This machine's arch in Grafana's (Go's) naming.
fn host_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// Release directories that may hold a backend binary, with the arch it was built for: the
/// host build first (cross builds under `target/<triple>/` only add the other arches).
fn backend_builds(target: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut dirs: Vec<(PathBuf, &'static str)> = host_arch()
        .map(|arch| (target.join("release"), arch))
        .into_iter()
        .collect();
    dirs.push((target.join("x86_64-unknown-linux-gnu/release"), "amd64"));
    dirs.push((target.join("aarch64-unknown-linux-gnu/release"), "arm64"));
    dirs
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// What Grafana needs to load the plugin from `dir`: module.js, a plugin.json with our id
/// and a backend, its logo, and an executable `<executable>_linux_<arch>` for the name
/// plugin.json gives. Built placeholders (`%VERSION%`) must be gone.
pub fn check_layout(dir: &Path) -> anyhow::Result<()> {
    let file = |name: &str| dir.join(name);
    if !file("module.js").is_file() {
        bail!("{} has no module.js", dir.display());
    }
    let text = std::fs::read_to_string(file("plugin.json"))
        .with_context(|| format!("{} has no plugin.json", dir.display()))?;
    if text.contains("%VERSION%") || text.contains("%TODAY%") {
        bail!("plugin.json still holds build placeholders: not the built one");
    }
    let plugin: serde_json::Value =
        serde_json::from_str(&text).context("plugin.json is not JSON")?;
    let field = |key: &str| plugin.get(key);
    if field("id").and_then(|v| v.as_str()) != Some(PLUGIN_ID) {
        bail!("plugin.json id is {:?}, not {PLUGIN_ID:?}", field("id"));
    }
    if field("backend").and_then(serde_json::Value::as_bool) != Some(true) {
        bail!("plugin.json does not declare a backend");
    }
    let executable = field("executable")
        .and_then(|v| v.as_str())
        .context("plugin.json names no executable")?;
    let mut found = Vec::new();
    for arch in ARCHES {
        let binary = file(&format!("{executable}_linux_{arch}"));
        if binary.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&binary)?.permissions().mode();
            if mode & 0o111 == 0 {
                bail!("{} is not executable", binary.display());
            }
            found.push(arch);
        }
    }
    if !found.contains(&"amd64") {
        bail!(
            "no {executable}_linux_amd64 in {} (plugin.json's executable is {executable:?})",
            dir.display()
        );
    }
    let logo = plugin
        .pointer("/info/logos/small")
        .and_then(|v| v.as_str())
        .context("plugin.json names no logo")?;
    if !file(logo).is_file() {
        bail!("plugin.json's logo {logo} is not in {}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(plugin_json: &str, binary: Option<(&str, u32)>) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xtask-layout-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("img")).unwrap();
        std::fs::write(dir.join("module.js"), "define([],function(){})").unwrap();
        std::fs::write(dir.join("img/logo.svg"), "<svg/>").unwrap();
        std::fs::write(dir.join("plugin.json"), plugin_json).unwrap();
        if let Some((name, mode)) = binary {
            let path = dir.join(name);
            std::fs::write(&path, "\x7fELF").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    const GOOD: &str = r#"{"id":"herdwatch-fleet-datasource","type":"datasource","backend":true,
        "executable":"gpx_herdwatch","info":{"version":"0.1.0","logos":{"small":"img/logo.svg"}}}"#;

    #[test]
    fn the_source_plugin_json_names_the_id_and_executable_dist_expects() {
        let text = std::fs::read_to_string(plugin_dir().join("src/plugin.json")).unwrap();
        let plugin: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(plugin["id"], PLUGIN_ID);
        assert_eq!(plugin["executable"], EXECUTABLE);
        assert_eq!(plugin["backend"], true);
    }

    #[test]
    fn a_complete_layout_passes() {
        let dir = layout(GOOD, Some(("gpx_herdwatch_linux_amd64", 0o755)));
        check_layout(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn what_grafana_would_refuse_is_named() {
        let cases = [
            (
                layout(GOOD, Some(("gpx_other_linux_amd64", 0o755))),
                "no gpx_herdwatch_linux_amd64",
            ),
            (
                layout(GOOD, Some(("gpx_herdwatch_linux_amd64", 0o644))),
                "is not executable",
            ),
            (
                layout(
                    &GOOD.replace("0.1.0", "%VERSION%"),
                    Some(("gpx_herdwatch_linux_amd64", 0o755)),
                ),
                "placeholders",
            ),
            (
                layout(
                    &GOOD.replace("herdwatch-fleet", "other"),
                    Some(("gpx_herdwatch_linux_amd64", 0o755)),
                ),
                "plugin.json id",
            ),
        ];
        for (dir, expected) in cases {
            let err = check_layout(&dir).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            std::fs::remove_dir_all(dir).unwrap();
        }
        let dir = layout(GOOD, Some(("gpx_herdwatch_linux_amd64", 0o755)));
        std::fs::remove_file(dir.join("module.js")).unwrap();
        assert!(
            check_layout(&dir)
                .unwrap_err()
                .to_string()
                .contains("module.js")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn jest_counts_come_from_its_json_report() {
        let report = r#"{"numPassedTests":20,"numFailedTests":1,"numPendingTests":2,
            "numTodoTests":1,"numRuntimeErrorTestSuites":1,"testResults":[]}"#;
        assert_eq!(
            parse_jest_report(report).unwrap(),
            JestCounts {
                passed: 20,
                failed: 1,
                pending: 3,
                broken_suites: 1
            }
        );
        assert!(parse_jest_report("{}").is_err());
        assert!(parse_jest_report("PASS src/x.test.ts").is_err());
    }
}
