//! Query identity end to end: statements that share a `db.query.summary` are told apart in
//! findings and merged (never duplicated) on `/metrics`, so a real Prometheus holds every
//! operation; and a herd that recurs every cache expiry is one finding with one occurrence per
//! burst, each reported within 2 s of its onset on the app's clock.
//!
//! The app (apps/invoices, gunicorn sync workers, exact route attribution) runs three
//! different `SELECT … FROM invoices` statements — all summarised `SELECT invoices` — plus a
//! route with no statement.
mod common;

use std::{collections::BTreeMap, collections::HashSet, time::Duration};

use common::{load::Load, postgres::Postgres, *};
use herdwatch::{
    Config,
    detect::naming::{QUERY_TEXT_CHARS, bounded},
    model::FindingKind,
    protocol::fingerprint::fingerprint,
};

const HERD_ROUTES: [&str; 5] = [
    "/api/summary",
    "/api/overdue",
    "/api/revenue",
    "/api/kpis",
    "/api/home",
];

const LOAD: [&str; 9] = [
    "GET /api/summary",
    "GET /api/overdue",
    "GET /api/revenue",
    "GET /api/kpis",
    "GET /api/home",
    "GET /api/invoice/42",
    "GET /api/open-count",
    "GET /health",
    "GET /api/invoice/7",
];

fn invoices(pg: &Postgres, rows: u32) {
    pg.sql(&format!(
        "CREATE TABLE invoices AS SELECT g AS id, g % 5000 AS customer, \
         (ARRAY['paid','overdue','open'])[1 + g % 3] AS status, (g % 1000)::numeric AS amount \
         FROM generate_series(1, {rows}) g"
    ));
    pg.sql("CREATE UNIQUE INDEX ON invoices (id)");
    pg.sql("CREATE INDEX ON invoices (customer)");
    pg.sql("ANALYZE invoices");
    pg.sql("SELECT pg_stat_statements_reset()");
}

fn gunicorn(
    workers: u32,
    port: u16,
    pg: &Postgres,
    ttl_s: u32,
    herd_log: &std::path::Path,
) -> Proc {
    let mut cmd = gunicorn_command("invoices.app:app", workers, port);
    cmd.env("PG_DSN", pg.tcp_dsn())
        .env("HERD_TTL_S", ttl_s.to_string())
        .env("HERD_LOG", herd_log);
    Proc::spawn(&mut cmd)
}

fn stats_sql() -> String {
    std::fs::read_to_string(apps_dir().join("invoices/app.py"))
        .ok()
        .and_then(|s| {
            let start = s.find("STATS_SQL = \"\"\"")? + "STATS_SQL = \"\"\"".len();
            let end = start + s[start..].find("\"\"\"")?;
            Some(s[start..end].to_string())
        })
        .expect("STATS_SQL in invoices/app.py")
}

/// The body of an HTTP GET.
fn get_body(port: u16, path: &str) -> String {
    let response = http_get(port, path);
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// `name{labels}` → value for every sample of a text exposition; panics on a duplicate.
fn unique_series(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("a number");
        assert!(
            out.insert(key.to_string(), value).is_none(),
            "series written twice: {key}"
        );
    }
    out
}

/// One instant-query value from Prometheus' HTTP API (None while it has no sample).
fn prometheus_value(port: u16, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get_body(port, &format!("/api/v1/query?query={encoded}"));
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Three statements summarised `SELECT invoices` (and a route running none): `/metrics` writes
/// no series twice, and a real Prometheus scraping the agent holds every operation the app ran,
/// as PostgreSQL's pg_stat_statements counts them.
#[test]
fn statements_sharing_a_summary_reach_a_real_prometheus_whole() {
    if !kernel_available(
        "query_identity::statements_sharing_a_summary_reach_a_real_prometheus_whole",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (prom_port, metrics_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: herdwatch\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = prometheus(dir.path(), prom_port);
    wait_http(prom_port);
    let pg = Postgres::start();
    invoices(&pg, 200_000);
    let port = free_port();
    let _app = gunicorn(4, port, &pg, 3, &dir.path().join("herd.log"));
    wait_http(port);
    pg.sql("SELECT pg_stat_statements_reset()");
    let config = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: Some(format!("127.0.0.1:{metrics_port}")),
        state_dir: None,
        ..Config::default()
    };
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let load = Load::start(port, &LOAD, 8, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_secs(12)).await;
        let counts = load.stop();
        eprintln!("load: {counts:?}");
        // Ground truth: every execution of a statement on invoices (the app's only table).
        let ran: u64 = pg
            .statements()
            .iter()
            .filter(|(q, _)| q.contains("invoices") && !q.contains("pg_stat_statements"))
            .map(|(q, n)| {
                eprintln!("pg_stat_statements: {n:>6} × {q}");
                n
            })
            .sum();
        let snap = wait_for(
            &agent,
            Duration::from_secs(10),
            "every query counted",
            |s| {
                let seen: u64 = s
                    .queries
                    .iter()
                    .filter(|q| q.summary == "SELECT invoices")
                    .map(|q| q.calls)
                    .sum();
                (seen >= ran).then(|| s.clone())
            },
        )
        .await;
        let sharing: Vec<_> = snap
            .queries
            .iter()
            .filter(|q| q.summary == "SELECT invoices")
            .collect();
        assert!(
            sharing.len() >= 3,
            "three statements share the summary (else this test proves nothing): {sharing:#?}"
        );
        // The live view tells them apart.
        let view = herdwatch::view::render(&snap);
        for q in &sharing {
            assert!(
                view.contains(&bounded(&q.normalized, QUERY_TEXT_CHARS)),
                "{} missing from the view:\n{view}",
                q.normalized
            );
        }
        let exposition = get_body(metrics_port, "/metrics");
        let series = unique_series(&exposition);
        let ours: f64 = series
            .iter()
            .filter(|(k, _)| {
                k.starts_with("db_client_operation_duration_seconds_count{")
                    && k.contains("db_query_summary=\"SELECT invoices\"")
            })
            .map(|(_, v)| v)
            .sum();
        eprintln!("/metrics: {ours} SELECT invoices operations; PostgreSQL ran {ran}");
        assert_eq!(
            ours as u64, ran,
            "the agent's /metrics holds every operation"
        );
        // Prometheus ingests what /metrics wrote, every sample of it.
        let query =
            "sum(db_client_operation_duration_seconds_count{db_query_summary=\"SELECT invoices\"})";
        let mut held = None;
        for _ in 0..40 {
            held = prometheus_value(prom_port, query);
            if held == Some(ran as f64) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Prometheus' own counter of samples it dropped as duplicates (from its /metrics).
        let duplicates = get_body(prom_port, "/metrics")
            .lines()
            .find(|l| l.starts_with("prometheus_target_scrapes_sample_duplicate_timestamp_total "))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok());
        eprintln!("Prometheus holds {held:?} of {ran}; duplicate samples rejected: {duplicates:?}");
        assert_eq!(
            held,
            Some(ran as f64),
            "a real Prometheus holds every DB operation"
        );
        assert_eq!(
            duplicates,
            Some(0.0),
            "Prometheus rejected duplicate series"
        );
    });
}

/// Caches expiring together every 4 s on 6 sync workers, with unrelated routes in the load
/// (other statements on the same table, a route with none), the agent started just before the
/// load with the production herd settings: one herd finding whose occurrences equal the bursts
/// (± 1), each reported ≤ 2 s after the burst began on the app's clock; it names the statement
/// by text and id and only the routes that issued copies, with their counts.
/// The herd log's refills by cache period: (sent at, worker pid), in log order.
fn refills_by_period(log: &str) -> BTreeMap<u64, Vec<(u64, u32)>> {
    let mut periods: BTreeMap<u64, Vec<(u64, u32)>> = BTreeMap::new();
    for line in log.lines() {
        let mut fields = line.split(' ').map(str::parse::<u64>);
        if let (Some(Ok(ms)), Some(Ok(period)), Some(Ok(pid))) =
            (fields.next(), fields.next(), fields.next())
        {
            periods
                .entry(period)
                .or_default()
                .push((ms, u32::try_from(pid).unwrap_or(u32::MAX)));
        }
    }
    periods
}

/// When a period's refills first hold `min_workers` distinct workers within `window_ms`: the
/// detector's own definition of a burst. None when they never do.
fn burst_onset(sent: &[(u64, u32)], min_workers: usize, window_ms: u64) -> Option<u64> {
    let mut sent = sent.to_vec();
    sent.sort_unstable();
    (0..sent.len()).find_map(|i| {
        let workers: HashSet<u32> = sent[i..]
            .iter()
            .take_while(|(ms, _)| *ms <= sent[i].0 + window_ms)
            .map(|(_, pid)| *pid)
            .collect();
        (workers.len() >= min_workers).then_some(sent[i].0)
    })
}

#[test]
fn every_herd_burst_is_an_occurrence_reported_within_two_seconds() {
    if !kernel_available(
        "query_identity::every_herd_burst_is_an_occurrence_reported_within_two_seconds",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let herd_log = dir.path().join("herd.log");
    let pg = Postgres::start();
    invoices(&pg, 1_200_000);
    let port = free_port();
    let ttl_s = 4;
    let _app = gunicorn(6, port, &pg, ttl_s, &herd_log);
    wait_http(port);
    let _ = std::fs::remove_file(&herd_log);
    let stats = fingerprint(&stats_sql());
    let config = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: None,
        state_dir: None,
        ..Config::default()
    };
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let load = Load::start(port, &LOAD, 16, Duration::from_millis(10));
        // Each time the occurrences grow: (occurrences, onset, reported), the agent's clock.
        let mut seen: Vec<(u64, u64, u64)> = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(u64::from(ttl_s) * 5 + 1);
        while std::time::Instant::now() < until {
            let snap = agent.snapshot_now().await.expect("snapshot");
            if let Some(f) = snap.findings.iter().find(|f| f.kind == FindingKind::ThunderingHerd)
                && seen.last().is_none_or(|(n, _, _)| *n < f.occurrences)
            {
                seen.push((f.occurrences, f.onset_unix_ms, f.reported_unix_ms));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let counts = load.stop();
        eprintln!("load: {counts:?}");
        // Let the last burst be decided.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        let herds: Vec<_> = snap
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::ThunderingHerd)
            .collect();
        // App ground truth: a cache period is a burst when enough workers sent their refill
        // within one detector window to be one (the load's first and last periods may catch
        // only a few); its first refill is the burst's onset.
        let herd_config = Config::default().detect.herd;
        let refills = refills_by_period(&std::fs::read_to_string(&herd_log).unwrap_or_default());
        let onsets: Vec<u64> = refills
            .values()
            .filter_map(|sent| burst_onset(sent, herd_config.min_copies, herd_config.window_ms))
            .collect();
        // Each occurrence is timed from its period's first refill, burst or not: a period the
        // agent judged a burst by a millisecond the app's clock did not is still where it began.
        let period_starts: Vec<u64> = refills
            .values()
            .filter_map(|sent| sent.iter().map(|(ms, _)| *ms).min())
            .collect();
        eprintln!(
            "bursts (app clock): {} of {} cache periods",
            onsets.len(),
            refills.len()
        );
        for sent in refills.values() {
            let first = sent.iter().map(|(ms, _)| *ms).min().unwrap_or_default();
            let offsets: Vec<u64> = sent.iter().map(|(ms, _)| ms - first).collect();
            eprintln!("  period from {first}: refills at +{offsets:?} ms");
        }
        for (n, onset, reported) in &seen {
            let app = period_starts.iter().copied().filter(|a| *a <= onset + 1_000).max();
            eprintln!(
                "occurrence {n}: app onset {app:?} → agent onset {onset} (+{} ms) → reported {reported} (+{} ms after the app's onset)",
                app.map_or(0, |a| onset.saturating_sub(a)),
                app.map_or(0, |a| reported.saturating_sub(a)),
            );
        }
        assert_eq!(herds.len(), 1, "one herd pattern, one finding: {herds:#?}");
        let herd = herds[0];
        eprintln!("{}\n  {}", herd.id, herd.root_cause);
        eprintln!("  routes: {:?}", herd.subject.route_copies);
        let k = onsets.len() as u64;
        assert!(
            herd.occurrences + 1 >= k && herd.occurrences <= k + 1,
            "{} occurrences for {k} bursts",
            herd.occurrences
        );
        // Every burst's report within 2 s of its onset on the app's clock (occurrences seen
        // one by one; a poll that skipped one shows only the latest).
        assert!(!seen.is_empty());
        for (_, onset, reported) in &seen {
            let app = period_starts
                .iter()
                .copied()
                .filter(|a| *a <= onset + 1_000)
                .max()
                .expect("an app burst before the agent's onset");
            assert!(
                reported.saturating_sub(app) <= 2_000,
                "reported {} ms after the burst began",
                reported - app
            );
        }
        // Named by its text and id, never by the summary alone.
        let text = bounded(&stats.normalized, QUERY_TEXT_CHARS);
        assert!(herd.root_cause.contains(&text), "{}", herd.root_cause);
        assert!(herd.root_cause.contains(&stats.hex_id()), "{}", herd.root_cause);
        assert_eq!(herd.subject.query_text.as_deref(), Some(text.as_str()));
        assert_eq!(herd.subject.fingerprint.as_deref(), Some(stats.hex_id().as_str()));
        // Only routes that issued copies, each with its count (sync workers: exact routes).
        let herd_routes: HashSet<&str> = HERD_ROUTES.into_iter().collect();
        assert!(
            herd.subject.routes.iter().all(|r| herd_routes.contains(r.as_str())),
            "{:?}",
            herd.subject.routes
        );
        assert!(!herd.subject.route_copies.is_empty());
        assert!(
            herd.subject
                .route_copies
                .iter()
                .all(|c| herd_routes.contains(c.route.as_str()) && c.copies > 0),
            "{:?}",
            herd.subject.route_copies
        );
        let copies: u64 = herd.subject.route_copies.iter().map(|c| c.copies).sum();
        assert_eq!(Some(copies as f64), herd.evidence("concurrent_copies"));
    });
}
