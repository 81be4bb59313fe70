//! Attribution you can trust: every query is charged to the route whose request issued it —
//! on asyncio workers (uvicorn), gthread and sync workers alike — and names the line of the
//! app that issued it.
//!
//! The apps (agent/tests/apps/attribution) serve mixed traffic: five routes share one
//! aggregate behind caches that expire together (a herd), others run other statements on the
//! same table (same `db.query.summary`) or none. Each response says which statements it ran
//! (`x-statements`); the load sums that truth per (route, statement) and the test compares the
//! agent's per-route call counts with it.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufReader, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{postgres::Postgres, *};
use herdwatch::{
    Config,
    model::FindingKind,
    model::Snapshot,
    protocol::{fingerprint::fingerprint, route::RouteGrouper},
};

/// Statement keys the apps run (agent/tests/apps/attribution/statements.py).
const KEYS: [&str; 5] = ["totals", "by_id", "customer_sum", "insert", "customer"];
const SHARING: [&str; 5] = ["/dashboard", "/summary", "/kpi", "/overview", "/stats"];
/// Seconds between cache expiries (the app's `CACHE_PERIOD_S`).
const PERIOD_S: u64 = 4;

fn app_dir() -> PathBuf {
    apps_dir().join("attribution")
}

fn schema(pg: &Postgres) {
    pg.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 50) i;
         CREATE TABLE invoices (id serial PRIMARY KEY, customer_id int NOT NULL,
                                amount numeric NOT NULL, status text NOT NULL);
         INSERT INTO invoices (customer_id, amount, status)
           SELECT 1 + i % 50, (i % 1000) / 10.0, CASE WHEN i % 3 = 0 THEN 'open' ELSE 'paid' END
           FROM generate_series(1, 500000) i;
         CREATE INDEX ON invoices (customer_id);
         ANALYZE;",
    );
}

/// (route label as the agent groups it, statement key) → calls.
type Tally = BTreeMap<(String, String), u64>;

/// What the load saw: calls per (route, statement), requests answered, and refills of the
/// shared aggregate per cache period (epoch).
#[derive(Debug, Default, Clone)]
struct Truth {
    calls: Tally,
    requests: u64,
    refills: BTreeMap<u64, u64>,
}

/// Clients on keep-alive connections, round-robin over the endpoints, summing each
/// response's `x-statements` per (route, statement).
struct TruthLoad {
    stop: Arc<AtomicBool>,
    truth: Arc<Mutex<Truth>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const ENDPOINTS: [&str; 9] = [
    "GET /dashboard",
    "GET /invoices/{n}",
    "GET /summary",
    "POST /invoices",
    "GET /kpi",
    "GET /customers/{n}",
    "GET /overview",
    "GET /health",
    "GET /stats",
];

impl TruthLoad {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let truth = Arc::new(Mutex::new(Truth::default()));
        let threads = (0..clients)
            .map(|i| {
                let (stop, truth) = (stop.clone(), truth.clone());
                std::thread::spawn(move || {
                    let grouper = RouteGrouper::default();
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let endpoint = ENDPOINTS[n % ENDPOINTS.len()]
                            .replace("{n}", &(1 + n * 7 % 50).to_string());
                        n += 1;
                        let (method, path) = endpoint.split_once(' ').expect("method path");
                        let Some((ran, refill)) = exchange(&mut conn, port, method, path) else {
                            continue;
                        };
                        let mut route = String::new();
                        grouper.route_into(path, &mut route);
                        let mut t = truth.lock().expect("lock");
                        t.requests += 1;
                        for key in ran {
                            *t.calls.entry((route.clone(), key)).or_default() += 1;
                        }
                        if let Some(epoch) = refill {
                            *t.refills.entry(epoch).or_default() += 1;
                        }
                    }
                })
            })
            .collect();
        TruthLoad {
            stop,
            truth,
            threads,
        }
    }

    /// Stops the clients (each finishes its request in flight): what they saw.
    fn stop(mut self) -> Truth {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.truth.lock().expect("lock").clone()
    }
}

impl Drop for TruthLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The statement keys a response says its request ran, and the cache period it refilled.
type Ran = (Vec<String>, Option<u64>);

/// One request; what a 2xx response says it ran, None when it failed.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    port: u16,
    method: &str,
    path: &str,
) -> Option<Ran> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        *conn = Some(BufReader::new(s));
    }
    let c = conn.as_mut()?;
    let sent = write!(
        c.get_mut(),
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    );
    let answer = sent.ok().and_then(|()| read_answer(c));
    if answer.is_none() {
        *conn = None;
    }
    let (status, ran) = answer?;
    (200..300).contains(&status).then_some(ran)
}

fn read_answer(c: &mut BufReader<TcpStream>) -> Option<(u16, Ran)> {
    let (mut ran, mut refill) = (Vec::new(), None);
    let (status, _) = common::load::read_response_with(c, |name, value| match name {
        "x-statements" => {
            ran = value
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect()
        }
        "x-refill-epoch" => refill = value.parse().ok(),
        _ => {}
    })?;
    Some((status, (ran, refill)))
}

/// Statement key → fingerprint id, from the app's own SQL (`GET /statements`).
fn fingerprints(port: u16) -> BTreeMap<String, String> {
    let response = http_get(port, "/statements");
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let sql: BTreeMap<String, String> = serde_json::from_str(body).expect("statements JSON");
    sql.into_iter()
        .map(|(key, text)| (fingerprint(&text).hex_id(), key))
        .map(|(id, key)| (key, id))
        .collect()
}

/// The agent's calls per (route, statement) for the app's statements.
fn charged(snap: &Snapshot, ids: &BTreeMap<String, String>) -> Tally {
    let mut out = Tally::new();
    for (key, id) in ids {
        let Some(q) = snap.queries.iter().find(|q| &q.id == id) else {
            continue;
        };
        for r in &q.routes {
            out.insert((r.route.clone(), key.clone()), r.calls);
        }
    }
    out
}

/// The herd finding on the statement `id`.
fn herd_of<'a>(snap: &'a Snapshot, id: &str) -> Option<&'a herdwatch::model::Finding> {
    snap.findings.iter().find(|f| {
        f.kind == FindingKind::ThunderingHerd && f.subject.fingerprint.as_deref() == Some(id)
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The line of the app marked `# site:<key>`.
fn marked_line(file: &str, key: &str) -> u32 {
    let text = std::fs::read_to_string(app_dir().join(file)).expect("app source");
    let mark = format!("# site:{key}");
    let at = text
        .lines()
        .position(|l| l.trim_end().ends_with(&mark))
        .unwrap_or_else(|| panic!("{file} marks no {mark}"));
    at as u32 + 1
}

fn config() -> Config {
    let mut c = test_config();
    // A small table on a 2-core machine: fewer, cheaper copies than a production herd.
    c.detect.herd.min_wasted_ms = 100.0;
    c.detect.herd.baseline_s = 2 * PERIOD_S;
    c
}

/// Runs the attribution check against a pool whose master is `server`, listening on `port`.
fn check_pool(name: &str, app_file: &str, server: Proc, port: u16, workers: usize, asyncio: bool) {
    let rt = runtime();
    rt.block_on(async {
        let agent = start_agent_with(config()).await;
        wait_http(port);
        pool_ready(&agent, server.pid(), workers).await;
        wait_for(&agent, Duration::from_secs(30), "workers registered for frame walking", |s| {
            (s.agent.python.processes_readable >= workers).then_some(())
        })
        .await;
        let ids = fingerprints(port);
        let load_started_ms = unix_ms();
        let load = TruthLoad::start(port, 16);
        // Each time the herd's occurrences grow, as the agent published it (its periodic
        // snapshots, not ones forced by the test): (occurrences, onset, reported), unix ms.
        let mut seen: Vec<(u64, u64, u64)> = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(5 * PERIOD_S + 1);
        while std::time::Instant::now() < until {
            if let Some(h) = herd_of(&agent.latest(), &ids["totals"])
                && seen.last().is_none_or(|(n, _, _)| *n < h.occurrences)
            {
                seen.push((h.occurrences, h.onset_unix_ms, h.reported_unix_ms));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Truth { calls: truth, requests, refills } = load.stop();
        // Let the last burst be decided. Queries wait for their Task's response: every
        // response was read, so all are in.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        let got = charged(&snap, &ids);
        let c = &snap.agent.connections;
        eprintln!(
            "── {name}: {requests} requests; by task {}, outside tasks {}, task unanswered {}, heuristic {}; stacks {} (truncated {}, no thread {}, unreadable {})",
            c.queries_by_task,
            c.queries_outside_tasks,
            c.queries_task_unanswered,
            c.queries_heuristic,
            c.py_stacks,
            c.py_stacks_truncated,
            c.py_stacks_without_thread,
            c.py_stacks_unreadable
        );
        let pairs: BTreeSet<_> = truth.keys().chain(got.keys()).cloned().collect();
        let (mut off, mut total) = (0u64, 0u64);
        for pair in &pairs {
            let (t, g) = (truth.get(pair).copied().unwrap_or(0), got.get(pair).copied().unwrap_or(0));
            eprintln!("  {:<18} {:<13} issued {t:>5}  charged {g:>5}", pair.0, pair.1);
            assert!(
                t > 0 || g == 0,
                "{name}: {} charged to {} which never runs it ({g} calls)",
                pair.1,
                pair.0
            );
            off += t.abs_diff(g);
            total += t;
        }
        assert!(requests > 200 && total > 200, "{name}: too little load ({requests} requests, {total} queries)");
        let error = off as f64 / total as f64;
        eprintln!("  {name}: {:.2} % of queries charged to the wrong route", 100.0 * error);
        assert!(error <= 0.02, "{name}: {:.1} % misattributed", 100.0 * error);
        assert_eq!(c.queries_heuristic, 0, "{name}: no query may be a guess here");
        if asyncio {
            assert!(c.queries_by_task > 0, "{name}: queries paired by Task");
        }
        // Each worker that served stacks learned its server's request runner (asyncio's
        // Handle._run, gunicorn's handle_request) and its walks stopped there for nearly all
        // of the load: the pairing and call sites above were made from those shorter walks.
        // (The kernel may hand every connection to a few of the workers.)
        let py = &snap.agent.python;
        eprintln!("  walk boundaries known: {} of {workers} workers, missing {}", py.walk_boundaries, py.walk_boundaries_missing);
        assert!(py.walk_boundaries >= 1, "{name}: no walk boundary learned");
        assert_eq!(py.walk_boundaries_missing, 0, "{name}: workers whose stacks showed no request runner");

        // Call sites: the marked line of the app, for every statement.
        for key in KEYS {
            let q = snap
                .queries
                .iter()
                .find(|q| q.id == ids[key])
                .unwrap_or_else(|| panic!("{name}: no calls of {key}"));
            let top = q.call_sites.iter().max_by_key(|s| s.calls).unwrap_or_else(|| panic!("{name}: {key} has no call site"));
            let with_site: u64 = q.call_sites.iter().map(|s| s.calls).sum();
            eprintln!("  {key}: {} ({} of {} calls)", top.site, top.calls, q.calls);
            assert!(top.site.file.ends_with(app_file), "{name}: {key} issued at {}", top.site);
            assert_eq!(top.site.line, marked_line(app_file, key), "{name}: {key} issued at {}", top.site);
            assert_eq!(with_site, top.calls, "{name}: {key} has one call site");
            assert!(top.calls as f64 >= 0.98 * q.calls as f64, "{name}: {key}: {} of {} calls have a call site", top.calls, q.calls);
        }

        // The herd: the shared aggregate, one occurrence per burst (a cache period whose
        // refills are enough copies to be one), each named with exactly the routes whose
        // requests issued copies and the line they were issued from.
        let bursts: Vec<u64> = refills
            .iter()
            .filter(|(_, n)| **n >= 4)
            .map(|(epoch, _)| (epoch * PERIOD_S * 1000).max(load_started_ms))
            .collect();
        let h = herd_of(&snap, &ids["totals"]).unwrap_or_else(|| panic!("{name}: no herd finding for {} bursts", bursts.len()));
        let routes: BTreeSet<&str> = h.subject.routes.iter().map(String::as_str).collect();
        eprintln!("  herd: {} occurrence(s) for {} bursts (refills per period {refills:?}), routes {routes:?}", h.occurrences, bursts.len());
        for (n, onset, reported) in &seen {
            let app = bursts.iter().copied().filter(|b| *b <= onset + 1_000).max();
            eprintln!(
                "    occurrence {n}: burst began {app:?} → agent onset +{} ms → reported +{} ms",
                app.map_or(0, |a| onset.saturating_sub(a)),
                app.map_or(0, |a| reported.saturating_sub(a)),
            );
        }
        let k = bursts.len() as u64;
        assert!(h.occurrences + 1 >= k && h.occurrences <= k + 1, "{name}: {} occurrences for {k} bursts", h.occurrences);
        let (_, first_onset, first_reported) = seen.first().copied().expect("the herd was published while the load ran");
        let first_burst = bursts.iter().copied().filter(|b| *b <= first_onset + 1_000).max().expect("a burst before the agent's onset");
        assert!(first_reported.saturating_sub(first_burst) <= 2_000, "{name}: first reported {} ms after the burst began", first_reported - first_burst);
        // Only routes whose requests issued a copy (each copy's route is exact, so a route
        // that never runs the aggregate can never appear), each with the aggregate's line.
        let sharing: BTreeSet<&str> = SHARING.into_iter().collect();
        assert_eq!(routes, sharing, "{name}: the herd names exactly the routes issuing it");
        for rc in &h.subject.route_copies {
            eprintln!("    {} ×{} at {:?}", rc.route, rc.copies, rc.call_site);
            let site = rc.call_site.as_deref().unwrap_or_default();
            assert!(site.ends_with(&format!("{app_file}:{} in totals()", marked_line(app_file, "totals"))), "{name}: copies of {} issued at {site}", rc.route);
        }
    });
}

/// `python -m uvicorn` serving the asyncio app with 4 workers; `python` None = the venv's
/// (pyenv's CPython: `_PyRuntime` in libpython3.11.so).
fn uvicorn(pg: &Postgres, port: u16, python: Option<&std::path::Path>) -> Command {
    let mut cmd = match python {
        Some(p) => {
            // Another CPython 3.11 build using the venv's packages (same ABI).
            let mut c = Command::new(p);
            c.env("PYTHONPATH", venv().join("lib/python3.11/site-packages"));
            c
        }
        None => Command::new(venv().join("bin/python")),
    };
    cmd.args([
        "-m",
        "uvicorn",
        "asgi:app",
        "--workers",
        "4",
        "--host",
        "127.0.0.1",
    ])
    .args(["--port", &port.to_string(), "--log-level", "warning"])
    .arg("--app-dir")
    .arg(app_dir())
    .env("PG_DSN", pg.tcp_url())
    .env("CACHE_PERIOD_S", PERIOD_S.to_string());
    cmd
}

#[test]
fn asyncio_workers_pair_queries_with_requests_by_task() {
    if !kernel_available("asyncio_workers_pair_queries_with_requests_by_task") {
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let server = Proc::spawn(&mut uvicorn(&pg, port, None));
    check_pool("uvicorn asyncio", "asgi.py", server, port, 4, true);
}

/// Debian's python3.11 is a static build: `_PyRuntime` is in the executable itself.
const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

#[test]
fn asyncio_pairing_on_a_static_python_build() {
    let test = "asyncio_pairing_on_a_static_python_build";
    if !kernel_available(test) {
        return;
    }
    if !std::path::Path::new(DEBIAN_PYTHON).exists() {
        skip(test, "no /usr/bin/python3.11 (Debian's python3.11)");
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let python = std::path::Path::new(DEBIAN_PYTHON);
    let server = Proc::spawn(&mut uvicorn(&pg, port, Some(python)));
    check_pool(
        "uvicorn on Debian's python3.11",
        "asgi.py",
        server,
        port,
        4,
        true,
    );
}

/// A copy of Debian's python3.11 whose `_PyRuntime` is no longer among its dynamic symbols:
/// an interpreter the agent cannot read. Its asyncio queries are paired by the thread
/// heuristic and every one is counted and marked as such; nothing crashes.
#[test]
fn an_unreadable_interpreter_falls_back_to_the_heuristic_and_says_so() {
    let test = "an_unreadable_interpreter_falls_back_to_the_heuristic_and_says_so";
    if !kernel_available(test) {
        return;
    }
    if !std::path::Path::new(DEBIAN_PYTHON).exists() {
        skip(test, "no /usr/bin/python3.11 (Debian's python3.11) to copy");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("python3.11");
    let mut binary = std::fs::read(DEBIAN_PYTHON).expect("read python3.11");
    let name = b"_PyRuntime\0";
    let mut renamed = 0;
    for at in 0..binary.len().saturating_sub(name.len()) {
        if &binary[at..at + name.len()] == name {
            binary[at + name.len() - 2] = b'X';
            renamed += 1;
        }
    }
    assert!(renamed > 0, "python3.11 exports _PyRuntime");
    std::fs::write(&copy, &binary).expect("write the copy");
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&copy, exec).expect("chmod");

    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let mut cmd = uvicorn(&pg, port, Some(&copy));
    // The copy is outside /usr: tell it where its standard library is.
    cmd.env("PYTHONHOME", "/usr");
    let server = Proc::spawn(&mut cmd);
    let rt = runtime();
    rt.block_on(async {
        let agent = start_agent_with(config()).await;
        wait_http(port);
        pool_ready(&agent, server.pid(), 4).await;
        wait_for(&agent, Duration::from_secs(30), "workers known as unreadable", |s| {
            (s.agent.python.processes_unreadable >= 4).then_some(())
        })
        .await;
        let ids = fingerprints(port);
        let load = TruthLoad::start(port, 8);
        tokio::time::sleep(Duration::from_secs(2 * PERIOD_S + 2)).await;
        let requests = load.stop().requests;
        let snap = agent.snapshot_now().await.expect("snapshot");
        let c = &snap.agent.connections;
        let app_calls: u64 = snap
            .queries
            .iter()
            .filter(|q| ids.values().any(|id| *id == q.id))
            .map(|q| q.calls)
            .sum();
        let marked: u64 = snap.queries.iter().map(|q| q.heuristic_calls).sum();
        eprintln!(
            "── unreadable interpreter: {requests} requests, {app_calls} app queries, heuristic {} (marked {marked}), by task {}, stacks {}",
            c.queries_heuristic, c.queries_by_task, c.py_stacks
        );
        assert!(requests > 50 && app_calls > 50, "too little load: {requests} requests, {app_calls} queries");
        assert_eq!(snap.agent.python.processes_readable, 0);
        assert_eq!(c.py_stacks, 0, "no frames are walked in a process the agent cannot read");
        assert_eq!(c.queries_by_task, 0);
        assert!(c.queries_heuristic >= app_calls, "every app query is counted as heuristic");
        assert_eq!(marked, c.queries_heuristic, "and marked on its statement");
    });
}

/// gunicorn serving `app` (`wsgi:app` with psycopg, or `asgi:app` with asyncpg).
fn gunicorn(pg: &Postgres, port: u16, app: &str, extra: &[&str]) -> Proc {
    let dsn = if app.starts_with("asgi") {
        pg.tcp_url()
    } else {
        pg.tcp_dsn()
    };
    let mut cmd = Command::new(venv().join("bin/gunicorn"));
    cmd.args([
        app,
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--log-level",
        "warning",
    ])
    .args(extra)
    .arg("--chdir")
    .arg(app_dir())
    .env("PG_DSN", dsn)
    .env("CACHE_PERIOD_S", PERIOD_S.to_string());
    Proc::spawn(&mut cmd)
}

#[test]
fn gunicorn_uvicorn_workers_pair_queries_with_requests_by_task() {
    if !kernel_available("gunicorn_uvicorn_workers_pair_queries_with_requests_by_task") {
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let worker = [
        "--workers",
        "3",
        "--worker-class",
        "uvicorn.workers.UvicornWorker",
    ];
    let server = gunicorn(&pg, port, "asgi:app", &worker);
    check_pool("gunicorn UvicornWorker", "asgi.py", server, port, 3, true);
}

#[test]
fn gthread_workers_pair_queries_with_requests_by_thread() {
    if !kernel_available("gthread_workers_pair_queries_with_requests_by_thread") {
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let server = gunicorn(
        &pg,
        port,
        "wsgi:app",
        &[
            "--workers",
            "2",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
        ],
    );
    check_pool("gunicorn gthread", "wsgi.py", server, port, 2, false);
}

#[test]
fn sync_workers_pair_queries_with_requests_by_thread() {
    if !kernel_available("sync_workers_pair_queries_with_requests_by_thread") {
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    let server = gunicorn(&pg, port, "wsgi:app", &["--workers", "5"]);
    check_pool("gunicorn sync", "wsgi.py", server, port, 5, false);
}

/// Restart during a replay: the herd's finding, kept in the state directory, comes back after
/// the agent restarts — the same id, its occurrences and first sighting, resolved until seen
/// again — and the next burst counts on from there instead of starting at one.
#[test]
fn findings_keep_their_occurrences_across_an_agent_restart() {
    if !kernel_available("findings_keep_their_occurrences_across_an_agent_restart") {
        return;
    }
    let pg = Postgres::start();
    schema(&pg);
    let port = free_port();
    // Five sync workers: a burst needs more concurrent copies than three could issue.
    let server = gunicorn(&pg, port, "wsgi:app", &["--workers", "5"]);
    let state = tempfile::tempdir().expect("state dir");
    let mut config = config();
    config.state_dir = Some(state.path().to_path_buf());
    runtime().block_on(async {
        wait_http(port);
        let ids = fingerprints(port);
        let agent = start_agent_with(config.clone()).await;
        pool_ready(&agent, server.pid(), 5).await;
        let load = TruthLoad::start(port, 16);
        let before = wait_for(&agent, Duration::from_secs(60), "a herd with two occurrences", |s| {
            herd_of(s, &ids["totals"]).filter(|h| h.occurrences >= 2).cloned()
        })
        .await;
        agent.stop().await.expect("orderly stop");
        let kept = state.path().join("findings.json");
        assert!(kept.exists(), "the finding book is written at shutdown");

        let agent = start_agent_with(config).await;
        let restored = agent.latest();
        let back = herd_of(&restored, &ids["totals"]).expect("the herd finding is restored");
        eprintln!(
            "before the restart: {} occurrence(s), first seen {}; after: {} occurrence(s), active {}",
            before.occurrences, before.first_seen_unix_ms, back.occurrences, back.active
        );
        assert_eq!(back.id, before.id);
        assert_eq!(back.first_seen_unix_ms, before.first_seen_unix_ms);
        assert!(back.occurrences >= before.occurrences, "{back:#?}");
        let at_restart = back.occurrences;
        let next = wait_for(&agent, Duration::from_secs(60), "the herd's next occurrence", |s| {
            herd_of(s, &ids["totals"]).filter(|h| h.occurrences > at_restart).cloned()
        })
        .await;
        let truth = load.stop();
        eprintln!("after the restart: {} occurrence(s); load {} requests", next.occurrences, truth.requests);
        assert_eq!(next.id, before.id, "one pattern, one finding, across the restart");
        assert_eq!(next.first_seen_unix_ms, before.first_seen_unix_ms);
        assert!(next.active);
        let others = next.occurrences - at_restart;
        assert!(others <= 2, "occurrences count on, not again from one: {next:#?}");
        agent.stop().await.expect("orderly stop");
    });
}
