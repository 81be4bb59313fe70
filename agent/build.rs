//! Compiles `agent-ebpf` for bpfel-unknown-none with the nightly toolchain (aya-build) and
//! leaves the object in OUT_DIR, where `probes::loader` embeds it with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent dir"))?;
    // aya-build watches agent-ebpf only; the programs also compile in agent-common's types,
    // and a layout changed there alone must rebuild them, or the loader refuses the maps.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("agent-common").display()
    );
    // Cargo keys a build script's output by the package's path relative to its workspace,
    // so two checkouts sharing one target directory share it: a build in one checkout could
    // embed the programs compiled from the other, whose files did not change. The shell's
    // working directory tells the checkouts apart (a build from elsewhere only rebuilds).
    println!("cargo:rerun-if-env-changed=PWD");
    let ebpf_dir = root.join("agent-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("agent-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "herdwatch-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` if the nightly toolchain, rust-src or bpf-linker is missing)")
}
