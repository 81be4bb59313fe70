//! Saturation at a cgroup's CPU quota: a pool in a container limited to half a CPU is
//! saturated at its quota while the host still has room. The host-wide detector cannot see
//! it; the cgroup one must.
mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{load::Load, *};
use herdwatch::{Config, model::FindingKind};

/// A CPU-limited cgroup made for the test (cgroup v2, or v1 `cpu` + `cpuacct`), removed on
/// drop.
struct CpuLimitedCgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` files a process must join.
    procs: Vec<PathBuf>,
}

impl CpuLimitedCgroup {
    fn create(name: &str, cpus: f64) -> Option<Self> {
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

#[test]
fn a_pool_at_its_cgroup_quota_is_a_saturation_finding() {
    let test = "saturation::a_pool_at_its_cgroup_quota_is_a_saturation_finding";
    if !kernel_available(test) {
        return;
    }
    let name = format!("herdwatch-test-{}", std::process::id());
    let Some(cgroup) = CpuLimitedCgroup::create(&name, 0.5) else {
        skip(
            test,
            "cannot create a CPU-limited cgroup (no cpu controller here)",
        );
        return;
    };
    let port = free_port();
    // The shell joins the cgroup, then becomes gunicorn: its workers are forked inside.
    let joins: String = cgroup
        .procs
        .iter()
        .map(|p| format!("echo $$ > {} && ", p.display()))
        .collect();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "{joins}exec {} --workers 2 --bind 127.0.0.1:{port} --chdir {} shop.app:app",
        venv().join("bin/gunicorn").display(),
        apps_dir().display()
    ));
    let app = Proc::spawn(&mut cmd);
    wait_http(port);
    let mut config = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: None,
        state_dir: None,
        ..Config::default()
    };
    config.detect.saturation.for_s = 10;
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let pool = pool_ready(&agent, app.pid(), 2).await;
        let load = Load::start(port, &["GET /cpu"], 3, Duration::ZERO);
        let finding = wait_for(
            &agent,
            Duration::from_secs(90),
            "a cgroup saturation finding",
            |s| {
                s.findings
                    .iter()
                    .find(|f| f.kind == FindingKind::Saturation && f.root_cause.contains(&name))
                    .cloned()
            },
        )
        .await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        load.stop();
        eprintln!("{}\n{:?}", finding.root_cause, finding.evidence);
        let view = snap
            .pool_of_master(pool.pool.master)
            .and_then(|p| p.cgroup.clone())
            .expect("the pool's cgroup is known");
        assert_eq!(view.limit_cpus, Some(0.5));
        assert_eq!(finding.subject.pool.as_deref(), Some(pool.name.as_str()));
        assert!(finding.evidence("cpu_utilization").unwrap_or(0.0) >= 0.8);
        assert_eq!(finding.evidence("capacity"), Some(0.5));
        assert!(
            finding.root_cause.contains("GET /cpu"),
            "{}",
            finding.root_cause
        );
    });
    drop(app);
    drop(cgroup);
}
