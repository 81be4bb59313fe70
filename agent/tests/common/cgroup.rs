//! A CPU-limited cgroup made for a test (cgroup v2, or v1 `cpu` + `cpuacct`): a pool inside
//! it saturates at its quota while the host still has room. Shared by the saturation test
//! and the datasource harness.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

/// A CPU-limited cgroup made for the test (cgroup v2, or v1 `cpu` + `cpuacct`), removed on
/// drop.
pub struct CpuLimitedCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` files a process must join.
    pub procs: Vec<PathBuf>,
}

impl CpuLimitedCgroup {
    pub fn create(name: &str, cpus: f64) -> Option<Self> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let quota = (cpus * 100_000.0) as u64;
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(name);
            std::fs::create_dir(&dir).ok()?;
            std::fs::write(dir.join("cpu.max"), format!("{quota} 100000")).ok()?;
            return Some(Self {
                procs: vec![dir.join("cgroup.procs")],
                dirs: vec![dir],
            });
        }
        let cpu = root.join("cpu").join(name);
        let acct = root.join("cpuacct").join(name);
        std::fs::create_dir(&cpu).ok()?;
        std::fs::create_dir(&acct).ok()?;
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000").ok()?;
        std::fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string()).ok()?;
        Some(Self {
            procs: vec![cpu.join("cgroup.procs"), acct.join("cgroup.procs")],
            dirs: vec![cpu, acct],
        })
    }
}

impl CpuLimitedCgroup {
    /// A gunicorn serving the test apps' `shop.app:app` with `workers` workers on
    /// 127.0.0.1:`port`, inside this cgroup: the shell joins it, then becomes gunicorn, so
    /// the workers are forked inside.
    pub fn gunicorn_shop(&self, workers: u32, port: u16) -> super::Proc {
        let joins: String = self
            .procs
            .iter()
            .map(|p| format!("echo $$ > {} && ", p.display()))
            .collect();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "{joins}exec {} --workers {workers} --bind 127.0.0.1:{port} --chdir {} shop.app:app",
            super::venv().join("bin/gunicorn").display(),
            super::apps_dir().display()
        ));
        super::Proc::spawn(&mut cmd)
    }
}

impl Drop for CpuLimitedCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Killed members take a moment to leave.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
