//! Idempotent machine setup. Every step first checks whether it is already done and says what
//! it did, so a second run is fast and quiet.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache").join("herdwatch")
}

fn say(msg: &str) {
    eprintln!("xtask setup: {msg}");
}

pub fn build_prerequisites() -> anyhow::Result<()> {
    nightly_with_rust_src()?;
    bpf_linker()?;
    tracefs();
    say("ready: nightly + rust-src, bpf-linker, tracefs");
    Ok(())
}

fn nightly_with_rust_src() -> anyhow::Result<()> {
    let has_nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_nightly {
        say("installing the nightly toolchain (minimal profile)");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to nightly (eBPF builds core from source)");
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly toolchain's LLVM: (major version, path of its libLLVM).
fn nightly_llvm() -> anyhow::Result<(String, PathBuf)> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
            })
        })
        .with_context(|| format!("no libLLVM.so* in {}", lib_dir.display()))?;
    Ok((major, lib))
}

fn bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let (major, lib) = nightly_llvm()?;
    // bpf-linker links against `<prefix>/lib/libLLVM.so`; the loader then wants the soname.
    let prefix = cache_dir().join(format!("llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let soname = lib.file_name().context("libLLVM path has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    say(&format!(
        "building bpf-linker against the nightly toolchain's LLVM {major} ({}); about a minute",
        lib.display()
    ));
    run_checked(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Mounts tracefs when we are root and it is absent. The agent would do it itself; doing it
/// here keeps the first run's output clean. Not root: the agent's own check explains.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return;
    }
    let ok = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    say(if ok {
        "mounted tracefs at /sys/kernel/tracing"
    } else {
        "could not mount tracefs (not root?)"
    });
}

/// Debian packages the tests and benchmarks use, by a shell test that proves each is there.
const DEBIAN: &[(&str, &str)] = &[
    ("command -v ss", "iproute2"),
    ("command -v taskset", "util-linux"),
    ("command -v setpriv", "util-linux"),
    ("command -v bpftrace", "bpftrace"),
    ("command -v wrk", "wrk"),
    ("command -v psql", "postgresql-client"),
    ("ls /usr/lib/postgresql/*/bin/postgres", "postgresql"),
    (
        "ls /usr/lib/postgresql/*/lib/pg_stat_statements.so",
        "postgresql-contrib",
    ),
    ("test -x /usr/sbin/pgbouncer", "pgbouncer"),
    ("command -v promtool", "prometheus"),
    (
        "command -v prometheus-alertmanager",
        "prometheus-alertmanager",
    ),
    // tests/deploy.rs: `systemd-analyze verify` on the unit, `dpkg -x` of the package.
    ("command -v systemd-analyze", "systemd"),
    ("command -v dpkg-deb", "dpkg"),
    // tests/deploy.rs builds the Containerfile's runtime stage (FROM scratch, vfs storage).
    ("command -v buildah", "buildah"),
];

pub fn test_prerequisites() -> anyhow::Result<PathBuf> {
    debian_packages(DEBIAN)?;
    cargo_deb()?;
    python_venv()
}

/// Installs the Debian packages whose shell check (`command -v x`) fails.
pub fn debian_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(check, _)| {
            !Command::new("sh")
                .args(["-c", &format!("{check} >/dev/null 2>&1")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .map(|(_, pkg)| *pkg)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        say(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// The oldest Node.js the datasource frontend's toolchain (webpack via ts-node, Jest) runs on.
const NODE_MAJOR_MIN: u32 = 20;

/// `npm ci` in datasource/ when its node_modules was not installed from the current
/// package-lock.json (a copy of the lockfile it was installed from is kept beside it).
pub fn datasource_node_modules() -> anyhow::Result<()> {
    let version = output(Command::new("node").arg("--version"))
        .context("the datasource frontend needs Node.js (node and npm on PATH)")?;
    let major = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("unreadable `node --version`: {version:?}"))?;
    if major < NODE_MAJOR_MIN {
        bail!(
            "node {} is older than the {NODE_MAJOR_MIN} the datasource frontend needs",
            version.trim()
        );
    }
    let dir = workspace_root().join("datasource");
    let lock = std::fs::read(dir.join("package-lock.json"))
        .context("reading datasource/package-lock.json")?;
    let stamp = dir.join("node_modules/.herdwatch-installed-lock.json");
    if std::fs::read(&stamp).ok().as_deref() == Some(lock.as_slice()) {
        return Ok(());
    }
    say("npm ci in datasource/ (the frontend's toolchain, from package-lock.json)");
    let started = std::time::Instant::now();
    run_checked(
        Command::new("npm")
            // The lock pins every package by integrity hash: what the cache holds needs no
            // second look at the registry.
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(&dir),
    )?;
    say(&format!(
        "npm ci took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    std::fs::write(&stamp, lock).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// The cargo-deb `[package.metadata.deb]` in agent/Cargo.toml is written for.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-deb, which `cargo xtask dist` and tests/deploy.rs package the agent with.
pub fn cargo_deb() -> anyhow::Result<()> {
    let installed = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if installed.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION) {
        return Ok(());
    }
    say(&format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (packages the agent as a .deb); a minute or two"
    ));
    run_checked(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// A venv with the pinned test-app requirements, rebuilt when the requirements file changes.
fn python_venv() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let requirements = root.join("agent/tests/apps/requirements.txt");
    let text = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = cache_dir().join("venv");
    let stamp = venv.join(".requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(text.as_str()) {
        return Ok(venv);
    }
    say(&format!("building the test venv at {}", venv.display()));
    let _ = std::fs::remove_dir_all(&venv);
    run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_checked(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, text)?;
    Ok(venv)
}

pub fn workspace_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process it starts; prefer it to the
    // compile-time value, which goes stale when clones share one CARGO_TARGET_DIR (cargo may
    // reuse an xtask binary built in another clone whose sources had the same mtimes).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}
