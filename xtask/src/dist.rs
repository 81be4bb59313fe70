//! `cargo xtask dist`: the release agent as a `.deb` (cargo-deb, from
//! `[package.metadata.deb]` in agent/Cargo.toml: binary, hardened systemd unit, default config,
//! docs, a postinst creating the `herdwatch` user) and a tarball holding the same files in the
//! same layout, for hosts without dpkg. Both land in `<target>/dist/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::setup::{self, run_checked, workspace_root};

/// Files of the package besides the binary: (source in the repository, path in the package).
const FILES: [(&str, &str); 3] = [
    ("deploy/config/config.toml", "etc/herdwatch/config.toml"),
    (
        "deploy/systemd/herdwatch.service",
        "usr/lib/systemd/system/herdwatch.service",
    ),
    ("README.md", "usr/share/doc/herdwatch/README.md"),
];

/// Where cargo builds: CARGO_TARGET_DIR when set (as on the shared build machines), else
/// the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn run() -> anyhow::Result<()> {
    setup::build_prerequisites()?;
    setup::cargo_deb()?;
    let root = workspace_root();
    run_checked(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--package",
                "herdwatch",
                "--bin",
                "herdwatch",
            ])
            .current_dir(&root),
    )?;
    let target = target_dir();
    let out = target.join("dist");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    run_checked(
        Command::new("cargo")
            // The release profile keeps line tables for profiling (125 MB); the package ships
            // the stripped binary (the tarball keeps them, for `perf` on a host).
            .args([
                "deb",
                "--package",
                "herdwatch",
                "--no-build",
                "--strip",
                "--output",
            ])
            .arg(&out)
            .current_dir(&root),
    )?;
    let tarball = tarball(&root, &target.join("release/herdwatch"), &out)?;
    eprintln!(
        "xtask dist: {} and {}",
        out.join(format!(
            "herdwatch_{}-1_{}.deb",
            env!("CARGO_PKG_VERSION"),
            debian_arch()
        ))
        .display(),
        tarball.display()
    );
    Ok(())
}

/// Debian's name for this machine's architecture (`x86_64` is `amd64` there).
fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `herdwatch-<version>-<arch>.tar.gz`: one directory with the package's files under their
/// installed paths (`usr/bin/herdwatch`, `etc/herdwatch/config.toml`, …).
fn tarball(root: &Path, binary: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let name = format!(
        "herdwatch-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let place = |from: &Path, to: &str| -> anyhow::Result<()> {
        let dest = stage.join(to);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        Ok(())
    };
    place(binary, "usr/bin/herdwatch")?;
    for (from, to) in FILES {
        place(&root.join(from), to)?;
    }
    let manifests = root.join("deploy/kubernetes");
    for entry in
        std::fs::read_dir(&manifests).with_context(|| format!("reading {}", manifests.display()))?
    {
        let path = entry?.path();
        if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
            place(&path, &format!("usr/share/doc/herdwatch/kubernetes/{file}"))?;
        }
    }
    let tarball = out.join(format!("{name}.tar.gz"));
    run_checked(
        Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(out)
            .args(["--owner=0", "--group=0"])
            .arg(&name),
    )?;
    std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(tarball)
}
