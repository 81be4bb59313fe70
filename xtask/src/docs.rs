//! `cargo xtask docs`: regenerates `docs/configuration.md` from the config struct (the agent
//! prints it: `herdwatch config --reference`). A unit test in the agent fails while the
//! checked-in file differs.
use std::process::Command;

use anyhow::Context as _;

use crate::setup;

pub fn run() -> anyhow::Result<()> {
    setup::build_prerequisites()?;
    let root = setup::workspace_root();
    let output = Command::new("cargo")
        .args(["run", "--quiet", "--package", "herdwatch", "--"])
        .args(["config", "--reference"])
        .current_dir(&root)
        .output()
        .context("running cargo run -p herdwatch -- config --reference")?;
    if !output.status.success() {
        anyhow::bail!(
            "herdwatch config --reference failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = root.join("docs/configuration.md");
    std::fs::create_dir_all(root.join("docs")).context("creating docs/")?;
    std::fs::write(&path, &output.stdout).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
