//! Replays of the incidents in shared/incidents/, on real services, each proving one detector
//! names the repeating cause — and a healthy workload proving they stay quiet.
//!
//! Every replay starts real PostgreSQL, the app, the agent and a load generator, then waits for
//! the finding and prints it with the time from onset to finding. `cargo xtask demo <name>`
//! runs the same replay for a user to watch. Thresholds are shortened (see `replay_config`) so
//! a replay takes a minute or two instead of an hour; the detectors are the production ones.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{
    load::Load,
    postgres::{PgBouncer, Postgres},
    *,
};
use herdwatch::{
    Config,
    model::{Finding, FindingKind, Snapshot},
    protocol::fingerprint::fingerprint,
};

/// The detectors' production logic with shorter clocks: saturation after 20 s instead of
/// 60 s, a 10 s herd baseline instead of 30 s, cron periods from 20 s (5 s of silence makes a
/// new onset) instead of from 60 s. The healthy replay uses the same settings, so the
/// shortening cannot hide false positives — and lets it see three cron periods in a minute.
fn replay_config() -> Config {
    let mut c = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: None,
        state_dir: None,
        ..Config::default()
    };
    c.detect.herd.baseline_s = 10;
    c.detect.saturation.for_s = 20;
    c.detect.cron.periods_s = vec![CRON_PERIOD_S, 60, 300, 1800, 3600];
    c.detect.cron.quiet_s = 5;
    c
}

/// The shortest cron period the replays look for (the cron replay's schedule period).
const CRON_PERIOD_S: u64 = 20;

/// How long the healthy workload runs under the agent: past the saturation threshold, several
/// herd baselines and three of the shortest cron periods, so every detector had its chance.
const HEALTHY_FOR: Duration = Duration::from_secs(3 * CRON_PERIOD_S + 10);

/// Prints the findings the way `herdwatch findings` does, with onset-to-finding times.
fn print_findings(replay: &str, snap: &Snapshot) {
    eprintln!("── {replay}: {} finding(s)", snap.findings.len());
    for f in &snap.findings {
        eprintln!(
            "{} {:?} {:?} occurrences={} onset→reported {:.1} s\n  cause: {}\n  stop it recurring: {}\n  proposal: {}",
            f.id,
            f.kind,
            f.severity,
            f.occurrences,
            f.reported_unix_ms.saturating_sub(f.onset_unix_ms) as f64 / 1000.0,
            f.root_cause,
            f.prevention,
            f.remediation
        );
        for a in &f.annotations {
            eprintln!("  annotation: {a}");
        }
    }
}

fn findings_of(snap: &Snapshot, kind: FindingKind) -> Vec<&Finding> {
    snap.findings.iter().filter(|f| f.kind == kind).collect()
}

/// Thundering herd: four uvicorn workers serve seven dashboard endpoints that all need the
/// same `count(*) FILTER (...)` over 1.2 M rows, cached per worker until the next 15 s
/// boundary. At every boundary each worker misses and each in-flight request runs the query.
/// Expect one herd finding naming the fingerprint and all seven endpoints, whose occurrences
/// grow with each expiry while its id stays the same.
#[test]
fn herd() {
    if !kernel_available("replays::herd") {
        return;
    }
    let pg = Postgres::start();
    common::herd::payments(&pg);
    let port = free_port();
    let _app = common::herd::uvicorn(&pg, port, 15);
    wait_http(port);
    let stats_sql = std::fs::read_to_string(apps_dir().join("herd/app.py"))
        .ok()
        .and_then(|s| {
            let start = s.find("STATS_SQL = \"\"\"")? + "STATS_SQL = \"\"\"".len();
            let end = start + s[start..].find("\"\"\"")?;
            Some(s[start..end].to_string())
        })
        .expect("STATS_SQL in herd/app.py");
    let herd_fp = fingerprint(&stats_sql).hex_id();
    runtime().block_on(async {
        let agent = start_agent_with(replay_config()).await;
        let load = Load::start(
            port,
            &common::herd::ENDPOINTS,
            14,
            Duration::from_millis(20),
        );
        let first = wait_for(&agent, Duration::from_secs(90), "a herd finding", |s| {
            findings_of(s, FindingKind::ThunderingHerd)
                .first()
                .map(|f| (*f).clone())
        })
        .await;
        print_findings(
            "herd (first occurrence)",
            &agent.snapshot_now().await.expect("snap"),
        );
        let id = first.id.clone();
        let later = wait_for(
            &agent,
            Duration::from_secs(60),
            "the herd's next occurrence",
            |s| {
                s.findings
                    .iter()
                    .find(|f| f.id == id && f.occurrences > first.occurrences)
                    .cloned()
            },
        )
        .await;
        // The routes a fingerprint is issued from accumulate; give them one more expiry.
        tokio::time::sleep(Duration::from_secs(16)).await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        let counts = load.stop();
        print_findings("herd", &snap);
        eprintln!("load: {counts:?}");
        let herds = findings_of(&snap, FindingKind::ThunderingHerd);
        assert_eq!(herds.len(), 1, "one herd pattern, one finding: {herds:#?}");
        let herd = herds[0];
        assert_eq!(herd.id, id, "the id is stable across occurrences");
        assert!(herd.occurrences >= later.occurrences && later.occurrences >= 2);
        assert_eq!(herd.subject.fingerprint.as_deref(), Some(herd_fp.as_str()));
        assert!(
            herd.evidence("distinct_connections").unwrap_or(0.0) >= 4.0,
            "{herd:#?}"
        );
        assert!(herd.evidence("db_time_on_duplicates").unwrap_or(0.0) > 0.0);
        for endpoint in common::herd::ENDPOINTS {
            let route = endpoint.trim_start_matches("GET ");
            assert!(
                herd.subject.routes.iter().any(|r| r == route),
                "{route} missing from the herd's routes {:?}",
                herd.subject.routes
            );
        }
        assert!(herd.prevention.contains("Single-flight"));
        // Nothing else fired: the herd is the only repeating pattern here.
        let others: Vec<_> = snap
            .findings
            .iter()
            .filter(|f| f.kind != FindingKind::ThunderingHerd && f.kind != FindingKind::Saturation)
            .collect();
        assert!(others.is_empty(), "unexpected findings: {others:#?}");
    });
}

/// Healthy: a steady mixed workload (prepared lookups, simple queries, pipelined reports and a
/// little CPU) on gunicorn and uvicorn for `HEALTHY_FOR`, with the replays' settings.
/// Expect zero findings.
#[test]
fn healthy() {
    if !kernel_available("replays::healthy") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let (shop_port, api_port) = (free_port(), free_port());
    let _shop = gunicorn_shop(4, shop_port, Some(&pg.tcp_dsn()));
    let _api = uvicorn_api(2, api_port, Some(&pg.tcp_url()));
    wait_http(shop_port);
    wait_http(api_port);
    // The load runs before the agent starts, as on a real fleet the agent joins.
    let shop = Load::start(
        shop_port,
        &[
            "GET /orders/7",
            "GET /customers/3",
            "GET /report",
            "GET /orders/512",
            "GET /cpu",
            "GET /",
        ],
        3,
        Duration::from_millis(80),
    );
    let api = Load::start(
        api_port,
        &["GET /orders/1", "GET /orders/99", "GET /"],
        3,
        Duration::from_millis(60),
    );
    // Its connections were opened before the agent started, to a port that is not 5432: the
    // agent finds the local server's port itself.
    runtime().block_on(async {
        let agent = start_agent_with(replay_config()).await;
        let started = Instant::now();
        let mut peak_cpu: f64 = 0.0;
        while started.elapsed() < HEALTHY_FOR {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let snap = agent.latest();
            peak_cpu = peak_cpu.max(snap.host.cpu_utilization.unwrap_or(0.0));
            assert!(
                snap.findings.is_empty(),
                "findings on a healthy workload after {:?}: {:#?}",
                started.elapsed(),
                snap.findings
            );
        }
        let snap = agent.snapshot_now().await.expect("snapshot");
        let (shop, api) = (shop.stop(), api.stop());
        print_findings("healthy", &snap);
        let requests: u64 = snap.routes.iter().map(|r| r.requests).sum();
        let queries: u64 = snap.queries.iter().map(|q| q.calls).sum();
        eprintln!(
            "healthy: {requests} requests, {queries} queries traced, peak host CPU {:.0} %",
            100.0 * peak_cpu
        );
        eprintln!("load: {shop:?} {api:?}");
        eprintln!("agent: {:?}", snap.agent);
        for q in &snap.queries {
            eprintln!("  {} calls={} {}", q.id, q.calls, q.normalized);
        }
        // The load runs ~60 requests/s (~4 300 in the 70 s); most of them must be traced.
        let floor = 35 * HEALTHY_FOR.as_secs();
        assert!(
            requests > floor && queries > floor,
            "the workload was traced: {requests} requests, {queries} queries (floor {floor})"
        );
        assert!(snap.findings.is_empty(), "{:#?}", snap.findings);
    });
}

/// Blocked-worker starvation: gunicorn with 4 sync workers serves products and checkout under
/// steady load (10 clients). Then the deploy: v2 is written and the master gets HUP, reloading
/// its workers with a synchronous 1.5 M-row scan inside `POST /api/checkout`. Expect a
/// starvation finding naming `POST /api/checkout` and the scan, its p99 before and after, and
/// the reload annotation; a saturation finding once CPU has been high for the (shortened)
/// threshold; and the starvation resolving after the load stops.
#[test]
fn starvation() {
    if !kernel_available("replays::starvation") {
        return;
    }
    let pg = Postgres::start();
    checkout::schema(&pg, 1_500_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let version = dir.path().join("version");
    std::fs::write(&version, "v1").expect("version file");
    let port = free_port();
    let app = checkout::gunicorn(4, port, &pg.tcp_dsn(), &version, &[]);
    wait_http(port);
    runtime().block_on(async {
        let agent = start_agent_with(replay_config()).await;
        pool_ready(&agent, app.pid(), 4).await;
        // Demand the v1 pool absorbs easily (about a third of the workers busy), and v2 cannot.
        let load = Load::start(port, &checkout::LOAD, 10, Duration::from_millis(50));
        tokio::time::sleep(Duration::from_secs(25)).await;
        let before = agent.snapshot_now().await.expect("snapshot");
        assert!(
            findings_of(&before, FindingKind::Starvation).is_empty(),
            "v1 is healthy: {:#?}",
            before.findings
        );
        // The deploy.
        std::fs::write(&version, "v2").expect("version file");
        // SAFETY: signalling the gunicorn master this test started.
        assert_eq!(unsafe { libc::kill(app.pid() as i32, libc::SIGHUP) }, 0);
        let deployed = Instant::now();
        let mut polls = 0;
        let starved = wait_for(
            &agent,
            Duration::from_secs(120),
            "a starvation finding",
            |s| {
                polls += 1;
                if polls % 10 == 0
                    && let Some(p) = s.pool_of_master(app.pid())
                {
                    // What the detector sees, for the log of a slow or failed replay.
                    eprintln!(
                        "pool: {}/{} busy, accept queue {:?}, time share {:?}",
                        p.busy_workers,
                        p.worker_states.len(),
                        p.accept_queue(),
                        p.time_share
                    );
                }
                findings_of(s, FindingKind::Starvation)
                    .first()
                    .map(|f| (*f).clone())
            },
        )
        .await;
        eprintln!(
            "starvation reported {:.1} s after the deploy",
            deployed.elapsed().as_secs_f64()
        );
        let saturated = wait_for(
            &agent,
            Duration::from_secs(90),
            "a saturation finding",
            |s| {
                findings_of(s, FindingKind::Saturation)
                    .first()
                    .map(|f| (*f).clone())
            },
        )
        .await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        print_findings("starvation", &snap);
        let counts = load.stop();
        eprintln!("load: {counts:?}");
        assert_eq!(
            starved.subject.route.as_deref(),
            Some("POST /api/checkout"),
            "{starved:#?}"
        );
        assert!(
            starved
                .subject
                .query_summary
                .as_deref()
                .is_some_and(|q| q.contains("order_lines")),
            "{starved:#?}"
        );
        assert!(
            starved.annotations.iter().any(|a| a.contains("reloaded")),
            "the reload is linked: {starved:#?}"
        );
        let (p99_before, p99_during) = (
            starved
                .evidence("top_route_p99_before")
                .unwrap_or(f64::INFINITY),
            starved.evidence("top_route_p99_during").unwrap_or(0.0),
        );
        assert!(p99_before < p99_during, "{starved:#?}");
        assert!(starved.root_cause.contains("POST /api/checkout"));
        // The statement by its text, and the line of the app that issued it.
        assert!(
            starved
                .subject
                .query_text
                .as_deref()
                .is_some_and(|t| t.contains("order_lines") && starved.root_cause.contains(t)),
            "{starved:#?}"
        );
        let source = std::fs::read_to_string(apps_dir().join("checkout/app.py")).expect("app");
        let line = source
            .lines()
            .position(|l| l.trim_end().ends_with("# site:scan"))
            .expect("the scan's line is marked")
            + 1;
        let site = format!("issued at checkout/app.py:{line} in checkout()");
        assert!(starved.root_cause.contains(&site), "{site}: {starved:#?}");
        assert!(saturated.root_cause.contains("Host CPU"));
        // After the load stops the pool recovers and the finding resolves.
        let id = starved.id.clone();
        wait_for(
            &agent,
            Duration::from_secs(60),
            "the starvation to resolve",
            |s| {
                s.findings
                    .iter()
                    .find(|f| f.id == id && !f.active)
                    .map(|_| ())
            },
        )
        .await;
    });
}

const CRON_TASKS: [&str; 4] = [
    "nightly_rollup",
    "invoice_sync",
    "search_reindex",
    "metrics_export",
];

/// Cron alignment: four periodic jobs (a new process per run, like cron starts them) all fire
/// at +0 s of a 20 s period through PgBouncer with a pool of 3, while gunicorn serves an API
/// through the same pool. Expect a cron-alignment finding naming the four tasks and the shared
/// offset with a staggered schedule proposed, and a pool-saturation finding on PgBouncer's
/// port; after restaggering the tasks (+0, +5, +10, +15 s), no new occurrences.
#[test]
fn cron() {
    if !kernel_available("replays::cron") {
        return;
    }
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE payments AS SELECT g AS id, \
         (ARRAY['nightly_rollup','invoice_sync','search_reindex','metrics_export'])[1 + g % 4] \
         AS status, (g % 1000)::numeric AS amount FROM generate_series(1, 300000) g",
    );
    checkout::schema(&pg, 1000);
    let bouncer = PgBouncer::start(&pg, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let version = dir.path().join("version");
    std::fs::write(&version, "v1").expect("version file");
    let port = free_port();
    let _api = checkout::gunicorn(2, port, &bouncer.dsn(), &version, &[("PG_NO_PREPARE", "1")]);
    wait_http(port);
    let schedule = dir.path().join("schedule");
    let aligned: String = CRON_TASKS.iter().map(|t| format!("{t} 0\n")).collect();
    std::fs::write(&schedule, aligned).expect("schedule");
    let mut config = replay_config();
    config.postgres_ports = vec![pg.port, bouncer.port];
    config.detect.pool.client_wait_ms = 200.0;
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let load = Load::start(port, &checkout::LOAD, 4, Duration::from_millis(50));
        let mut crond = Command::new(venv().join("bin/python3"));
        crond
            .arg(apps_dir().join("cron/crond.py"))
            .arg(&schedule)
            .arg(CRON_PERIOD_S.to_string())
            .env("PG_DSN", bouncer.dsn());
        let _crond = Proc::spawn(&mut crond);
        // The second firing reveals the period; the third is the pattern repeating.
        let aligned = wait_for(
            &agent,
            Duration::from_secs(150),
            "a cron-alignment finding with two occurrences",
            |s| {
                findings_of(s, FindingKind::CronAlignment)
                    .into_iter()
                    .find(|f| f.occurrences >= 2)
                    .cloned()
            },
        )
        .await;
        let pool = wait_for(
            &agent,
            Duration::from_secs(60),
            "a pool-saturation finding",
            |s| {
                findings_of(s, FindingKind::PoolSaturation)
                    .first()
                    .map(|f| (*f).clone())
            },
        )
        .await;
        print_findings("cron", &agent.snapshot_now().await.expect("snapshot"));
        // Named by their short names (the script and the word that tells them apart, not the
        // interpreter or the venv path), the whole command line kept beside each.
        let mut named: Vec<String> = aligned.subject.tasks.clone();
        named.sort();
        let mut expected: Vec<String> = CRON_TASKS.iter().map(|t| format!("task.py {t}")).collect();
        expected.sort();
        assert_eq!(named, expected, "{aligned:#?}");
        assert_eq!(aligned.subject.commands.len(), CRON_TASKS.len());
        for (name, command) in aligned.subject.tasks.iter().zip(&aligned.subject.commands) {
            let task = name.trim_start_matches("task.py ");
            assert!(
                command.contains("python") && command.ends_with(&format!("cron/task.py {task}")),
                "{name} ↔ {command}"
            );
        }
        for task in CRON_TASKS {
            assert!(
                aligned.root_cause.contains(&format!("task.py {task} (")),
                "the root cause names {task} by its short name: {}",
                aligned.root_cause
            );
        }
        let offset = aligned.evidence("shared_offset").unwrap_or(-1.0);
        assert!(
            (0.0..3.0).contains(&offset) || (17.0..20.0).contains(&offset),
            "the shared offset is the schedule's +0 s: {aligned:#?}"
        );
        assert!(aligned.remediation.contains("Proposed schedule"));
        assert_eq!(
            pool.subject.endpoint.as_deref(),
            Some(format!("port {} (pgbouncer, pool size 3)", bouncer.port).as_str()),
            "{pool:#?}"
        );
        assert!(pool.evidence("client_wait_p95_worst").unwrap_or(0.0) >= 200.0);
        // Restagger; give the change one period to take effect, then watch the next, in which
        // the tasks are periodic again at their new offsets.
        // (Each wait has 5 s more, for a firing that was already under way.)
        let period = Duration::from_secs(CRON_PERIOD_S);
        let margin = Duration::from_secs(5);
        let staggered: String = CRON_TASKS
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{t} {}\n", 5 * i))
            .collect();
        std::fs::write(&schedule, staggered).expect("schedule");
        tokio::time::sleep(period + margin).await;
        let settled = agent.snapshot_now().await.expect("snapshot");
        // Only this replay's tasks: the agent watches the whole host, where other test runs
        // and compilers (CPU bursts) may line up on their own.
        let ours = apps_dir().join("cron/task.py").display().to_string();
        let count = |s: &Snapshot| -> u64 {
            findings_of(s, FindingKind::CronAlignment)
                .iter()
                .filter(|f| f.subject.commands.iter().any(|c| c.contains(&ours)))
                .map(|f| f.occurrences)
                .sum()
        };
        let before = count(&settled);
        tokio::time::sleep(period + margin).await;
        let after = agent.snapshot_now().await.expect("snapshot");
        print_findings("cron (after restaggering)", &after);
        eprintln!("load: {:?}", load.stop());
        assert_eq!(
            count(&after),
            before,
            "no new cron-alignment occurrences after restaggering"
        );
        // Different jobs, different queries: the alignment is the pattern, not a herd.
        assert!(findings_of(&after, FindingKind::ThunderingHerd).is_empty());
    });
}
