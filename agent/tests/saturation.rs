//! Saturation at a cgroup's CPU quota: a pool in a container limited to half a CPU is
//! saturated at its quota while the host still has room. The host-wide detector cannot see
//! it; the cgroup one must.
mod common;

use std::time::Duration;

use common::{cgroup::CpuLimitedCgroup, load::Load, *};
use herdwatch::{Config, model::FindingKind};

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
    let app = cgroup.gunicorn_shop(2, port);
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
