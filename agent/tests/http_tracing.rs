//! HTTP requests traced from the kernel on real gunicorn (sync) and uvicorn workers: request
//! counts per grouped route equal what the load generator sent, and each request carries the
//! CPU its worker spent and the time it waited on PostgreSQL.
mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{postgres::Postgres, *};
use herdwatch::{Config, model::RouteStats, protocol::fingerprint::fingerprint};

/// One request on a fresh connection; returns the status code.
fn get(port: u16, path: &str) -> u16 {
    http_get(port, path)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends every path in `plan` from `concurrency` client threads; returns status counts per path.
fn load(port: u16, plan: Vec<String>, concurrency: usize) -> BTreeMap<String, Vec<u16>> {
    let plan = std::sync::Arc::new(std::sync::Mutex::new(plan));
    let results = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<u16>>::new()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (plan, results) = (plan.clone(), results.clone());
            std::thread::spawn(move || {
                loop {
                    let Some(path) = plan.lock().expect("lock").pop() else {
                        return;
                    };
                    let status = get(port, &path);
                    results
                        .lock()
                        .expect("lock")
                        .entry(path)
                        .or_default()
                        .push(status);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("load thread");
    }
    std::sync::Arc::try_unwrap(results)
        .expect("threads done")
        .into_inner()
        .expect("lock")
}

/// Whether `pid` is blocked in nanosleep or clock_nanosleep (Python's `time.sleep`).
fn in_a_sleep_call(pid: u32) -> bool {
    #[cfg(target_arch = "aarch64")]
    const SLEEP_CALLS: [&str; 2] = ["101", "115"]; // nanosleep, clock_nanosleep
    #[cfg(not(target_arch = "aarch64"))]
    const SLEEP_CALLS: [&str; 2] = ["35", "230"]; // x86_64 nanosleep, clock_nanosleep
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .map(|nr| SLEEP_CALLS.contains(&nr))
        })
        .unwrap_or(false)
}

fn route<'a>(routes: &'a [RouteStats], path: &str) -> Option<&'a RouteStats> {
    routes.iter().find(|r| r.method == "GET" && r.route == path)
}

const CPU_REQUESTS: u64 = 20;
const DB_REQUESTS: u64 = 8;
const ORDER_REQUESTS: u64 = 30;
const BROKEN_REQUESTS: u64 = 5;
const CUSTOMER_REQUESTS: u64 = 12;
const REPORT_REQUESTS: u64 = 6;

fn plan() -> Vec<String> {
    let mut plan = Vec::new();
    plan.extend((0..CUSTOMER_REQUESTS).map(|i| format!("/customers/{}", i % 10)));
    plan.extend((0..REPORT_REQUESTS).map(|_| "/report".to_string()));
    plan.extend((0..CPU_REQUESTS).map(|_| "/cpu".to_string()));
    plan.extend((0..DB_REQUESTS).map(|_| "/db".to_string()));
    plan.extend((0..ORDER_REQUESTS).map(|i| format!("/orders/{}", i * 7)));
    plan.extend((0..BROKEN_REQUESTS).map(|_| "/broken".to_string()));
    plan
}

fn ms(ns: u64, n: u64) -> f64 {
    ns as f64 / n.max(1) as f64 / 1e6
}

/// The shop over PostgreSQL's Unix socket: simple, prepared and pipelined queries, CPU and DB
/// wait per request.
#[test]
fn gunicorn_routes_cpu_and_db_wait_per_request() {
    if !kernel_available("gunicorn_routes_cpu_and_db_wait_per_request") {
        return;
    }
    routes_cpu_and_db_wait(SocketPrograms::PerCall);
}

/// The same with the socket handlers on the raw `sys_enter`/`sys_exit` tracepoints
/// (`raw_syscall_tracepoints = true`): accepts, requests, queries and closes all arrive.
#[test]
fn gunicorn_routes_with_the_raw_syscall_programs() {
    if !kernel_available("gunicorn_routes_with_the_raw_syscall_programs") {
        return;
    }
    routes_cpu_and_db_wait(SocketPrograms::Raw);
}

/// The same with `syscall_trampolines = true`: through fentry/fexit programs where the
/// kernel loads them, else through the per-call tracepoints it falls back to (and the
/// trampoline path is counted as skipped, with the kernel's reason).
#[test]
fn gunicorn_routes_with_syscall_trampolines_or_their_fallback() {
    if !kernel_available("gunicorn_routes_with_syscall_trampolines_or_their_fallback") {
        return;
    }
    routes_cpu_and_db_wait(SocketPrograms::Trampolines);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketPrograms {
    PerCall,
    Raw,
    Trampolines,
}

/// BPF programs of type tracing (fentry/fexit, `BPF_PROG_TYPE_TRACING` = 26) this process
/// holds, from its fds' `fdinfo`.
fn tracing_programs_held() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_to_string(fd.path()).is_ok_and(|info| {
                info.lines()
                    .any(|l| l.split_whitespace().eq(["prog_type:", "26"]))
            })
        })
        .count()
}

fn routes_cpu_and_db_wait(programs: SocketPrograms) {
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let server = gunicorn_shop(4, port, Some(&pg.unix_dsn()));
    wait_http(port);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            raw_syscall_tracepoints: programs == SocketPrograms::Raw,
            syscall_trampolines: programs == SocketPrograms::Trampolines,
            ..test_config()
        })
        .await;
        if programs == SocketPrograms::Trampolines {
            // Entries, exits and the two shared exit handlers, or none at all (the fallback).
            let held = tracing_programs_held();
            eprintln!("fentry/fexit programs held: {held}");
            if held == 0 {
                skip(
                    "http_tracing::gunicorn_routes_with_syscall_trampolines (the trampoline path)",
                    "this kernel refuses fentry/fexit programs (see `herdwatch check`); the per-call fallback was traced instead",
                );
            } else {
                assert_eq!(held, 23, "every socket program through a trampoline, or none");
            }
        }
        let master = server.pid();
        pool_ready(&agent, master, 4).await;
        let sent = tokio::task::spawn_blocking(move || load(port, plan(), 4)).await.expect("load");
        let expected = CPU_REQUESTS + DB_REQUESTS + ORDER_REQUESTS + BROKEN_REQUESTS + CUSTOMER_REQUESTS + REPORT_REQUESTS;
        let snap = wait_for(&agent, Duration::from_secs(30), "every request traced", |s| {
            (s.routes.iter().map(|r| r.requests).sum::<u64>() >= expected).then(|| s.clone())
        })
        .await;
        for r in &snap.routes {
            eprintln!(
                "{} {:<16} {:>3} requests {:?}  mean CPU {:>6.1} ms  mean DB wait {:>6.1} ms  queries {}",
                r.method,
                r.route,
                r.requests,
                r.by_status,
                ms(r.cpu_ns, r.requests),
                ms(r.db_wait_ns, r.requests),
                r.queries
            );
        }
        let cpu = route(&snap.routes, "/cpu").expect("/cpu traced");
        let db = route(&snap.routes, "/db").expect("/db traced");
        let orders = route(&snap.routes, "/orders/{id}").expect("/orders/{id} is one grouped route");
        let broken = route(&snap.routes, "/broken").expect("/broken traced");
        assert_eq!(cpu.requests, CPU_REQUESTS);
        assert_eq!(db.requests, DB_REQUESTS);
        assert_eq!(orders.requests, ORDER_REQUESTS);
        assert_eq!(broken.by_status.get(&500), Some(&BROKEN_REQUESTS));
        assert!(snap.routes.iter().all(|r| !r.route.starts_with("/orders/") || r.route == "/orders/{id}"), "no ungrouped order routes");
        assert_eq!(sent.get("/cpu").map(Vec::len), Some(CPU_REQUESTS as usize));
        // /cpu: ≈ 50 ms CPU per request (±20 %), little DB wait.
        let cpu_ms = ms(cpu.cpu_ns, cpu.requests);
        assert!((40.0..=60.0).contains(&cpu_ms), "/cpu mean CPU {cpu_ms:.1} ms");
        assert!(ms(cpu.db_wait_ns, cpu.requests) < 5.0);
        // /db: ≈ 200 ms DB wait per request, little CPU.
        let wait_ms = ms(db.db_wait_ns, db.requests);
        assert!((190.0..=260.0).contains(&wait_ms), "/db mean DB wait {wait_ms:.1} ms");
        assert!(ms(db.cpu_ns, db.requests) < 20.0, "/db mean CPU {:.1} ms", ms(db.cpu_ns, db.requests));
        assert_eq!(db.queries, DB_REQUESTS);
        // Each statement: one fingerprint, its calls equal to the server's own count, issued
        // from the route that runs it — prepared (/orders), simple with literals (/customers),
        // pipelined (/report).
        let server_calls = pg.statements();
        for (sql, n, from) in [
            ("SELECT id, total FROM orders WHERE id = $1", ORDER_REQUESTS, "/orders/{id}"),
            ("SELECT count(*) FROM orders WHERE customer = 3", CUSTOMER_REQUESTS, "/customers/{id}"),
            ("SELECT sum(total) FROM orders WHERE customer = $1", REPORT_REQUESTS, "/report"),
            ("SELECT max(total) FROM orders WHERE customer = $1", REPORT_REQUESTS, "/report"),
        ] {
            let q = snap.query_like(sql).unwrap_or_else(|| panic!("{sql} traced"));
            let theirs: u64 = server_calls.iter().filter(|(text, _)| fingerprint(text).hex_id() == q.id).map(|(_, c)| c).sum();
            eprintln!("{:<28} agent {} calls, pg_stat_statements {theirs}, from {:?}", q.summary, q.calls, q.routes);
            assert_eq!(q.calls, n, "{sql}");
            assert_eq!(theirs, n, "pg_stat_statements agrees: {sql}");
            let routes: Vec<(&str, u64)> =
                q.routes.iter().map(|r| (r.route.as_str(), r.calls)).collect();
            assert_eq!(routes, vec![(from, n)], "{sql}");
        }
        let route_of = |p: &str| route(&snap.routes, p).map(|r| r.requests);
        assert_eq!(route_of("/customers/{id}"), Some(CUSTOMER_REQUESTS));
        assert_eq!(route_of("/report"), Some(REPORT_REQUESTS));
        let failing = snap.query_like("SELECT * FROM missing_table WHERE id = $1").expect("failing query");
        assert_eq!(failing.errors_by_sqlstate.get("42P01"), Some(&BROKEN_REQUESTS));

        // All four workers waiting on the database for ~1.5 s: the pool's worker time is
        // mostly DB wait in at least one interval.
        let load = tokio::task::spawn_blocking(move || load(port, vec!["/db".to_string(); 28], 4));
        let mut best = 0.0f64;
        while !load.is_finished() {
            let snap = agent.snapshot_now().await.expect("snapshot");
            if let Some(t) = snap.pool_of_master(master).and_then(|p| p.time_share) {
                best = best.max(t.db_wait);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        load.await.expect("load");
        eprintln!("largest DB-wait share of worker time seen: {:.0}%", best * 100.0);
        assert!(best >= 0.5, "workers blocked on pg_sleep showed only {:.0}% DB wait", best * 100.0);
    });
}

/// Workers that connected and prepared their statements before the agent started: the
/// statement is attributed by name, and requests and query counts are still right.
#[test]
fn connections_and_statements_from_before_the_agent_started() {
    if !kernel_available("connections_and_statements_from_before_the_agent_started") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let server = gunicorn_shop(4, port, Some(&pg.tcp_url()));
    wait_http(port);
    // Warm up: every worker opens its connection and prepares the orders statement
    // (psycopg prepares on the first prepare=True execution).
    let warm = load(port, (0..40).map(|i| format!("/orders/{i}")).collect(), 4);
    assert_eq!(warm.values().map(Vec::len).sum::<usize>(), 40);
    let _ = &server;
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            ..test_config()
        })
        .await;
        let master = server.pid();
        pool_ready(&agent, master, 4).await;
        tokio::task::spawn_blocking(move || {
            load(
                port,
                (0..ORDER_REQUESTS)
                    .map(|i| format!("/orders/{}", 100 + i))
                    .collect(),
                4,
            )
        })
        .await
        .expect("load");
        let snap = wait_for(
            &agent,
            Duration::from_secs(30),
            "the orders requests",
            |s| {
                route(&s.routes, "/orders/{id}")
                    .filter(|r| r.requests >= ORDER_REQUESTS)
                    .map(|_| s.clone())
            },
        )
        .await;
        assert_eq!(
            route(&snap.routes, "/orders/{id}").map(|r| r.requests),
            Some(ORDER_REQUESTS)
        );
        // Workers that connected and prepared before the agent started: by name. A worker
        // the warm-up happened to miss connects now, so its calls carry the text.
        let by_name: Vec<_> = snap.queries.iter().filter(|q| q.text_unknown).collect();
        let named: u64 = by_name.iter().map(|q| q.calls).sum();
        let with_text = snap
            .query_like("SELECT id, total FROM orders WHERE id = $1")
            .map_or(0, |q| q.calls);
        eprintln!(
            "attributed by name: {:?}; by text: {with_text}",
            by_name
                .iter()
                .map(|q| (&q.summary, q.calls, &q.routes, &q.pids))
                .collect::<Vec<_>>()
        );
        assert!(
            named > 0,
            "statements prepared before the agent started are attributed"
        );
        assert_eq!(named + with_text, ORDER_REQUESTS, "no execution lost");
        assert!(
            by_name
                .iter()
                .all(|q| q.summary.starts_with("EXECUTE _pg3_")
                    && q.routes.len() == 1
                    && q.routes[0].route == "/orders/{id}")
        );
    });
}

#[test]
fn uvicorn_asyncpg_routes_and_queries() {
    if !kernel_available("uvicorn_asyncpg_routes_and_queries") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let server = uvicorn_api(2, port, Some(&pg.tcp_url()));
    wait_http(port);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            ..test_config()
        })
        .await;
        let master = server.pid();
        pool_ready(&agent, master, 2).await;
        let mut plan: Vec<String> = (0..ORDER_REQUESTS)
            .map(|i| format!("/orders/{}", i * 3))
            .collect();
        plan.extend((0..BROKEN_REQUESTS).map(|_| "/broken".to_string()));
        tokio::task::spawn_blocking(move || load(port, plan, 4))
            .await
            .expect("load");
        let snap = wait_for(
            &agent,
            Duration::from_secs(30),
            "every request traced",
            |s| {
                (s.routes.iter().map(|r| r.requests).sum::<u64>()
                    >= ORDER_REQUESTS + BROKEN_REQUESTS)
                    .then(|| s.clone())
            },
        )
        .await;
        let orders = route(&snap.routes, "/orders/{id}").expect("grouped route");
        assert_eq!(orders.requests, ORDER_REQUESTS);
        assert_eq!(
            route(&snap.routes, "/broken").and_then(|r| r.by_status.get(&500)),
            Some(&BROKEN_REQUESTS)
        );
        let q = snap
            .query_like("SELECT id, total FROM orders WHERE id = $1")
            .expect("asyncpg query (extended protocol)");
        eprintln!(
            "uvicorn: orders query {} calls, routes {:?}; pg_stat_statements {:?}",
            q.calls,
            q.routes,
            pg.statements()
        );
        assert_eq!(q.calls, ORDER_REQUESTS);
        let failing = snap
            .query_like("SELECT * FROM missing_table WHERE id = $1")
            .expect("failing query");
        assert_eq!(
            failing.errors_by_sqlstate.get("42P01"),
            Some(&BROKEN_REQUESTS)
        );
    });
}

#[test]
fn a_worker_killed_mid_request_leaves_an_unanswered_request_and_no_state() {
    if !kernel_available("a_worker_killed_mid_request_leaves_an_unanswered_request_and_no_state") {
        return;
    }
    let port = free_port();
    let server = gunicorn_shop(2, port, None);
    wait_http(port);
    runtime().block_on(async {
        let agent = start_agent().await;
        let master = server.pid();
        pool_ready(&agent, master, 2).await;
        let client = std::thread::spawn(move || get(port, "/sleep?s=20"));
        // The worker serving it is blocked in its sleep with one open connection. "Blocked"
        // alone is not enough: the idle worker's heartbeat can catch it outside its select for
        // an instant, and killing that one leaves nothing unanswered. The victim is the worker
        // whose kernel stack shows the sleep itself.
        let victim = wait_for(
            &agent,
            Duration::from_secs(20),
            "a worker blocked in /sleep",
            |s| {
                (s.agent.connections.open >= 1).then_some(())?;
                s.pool_of_master(master)?
                    .worker_states
                    .iter()
                    .find(|w| {
                        w.state == herdwatch::procs::worker_state::WorkerState::Blocked
                            && in_a_sleep_call(w.pid)
                    })
                    .map(|w| w.pid)
            },
        )
        .await;
        // SAFETY: killing a worker of the server this test started.
        assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
        let snap = wait_for_or_explain(
            &agent,
            Duration::from_secs(20),
            "the unanswered request",
            |s| {
                route(&s.routes, "/sleep")
                    .filter(|r| r.unanswered == 1)
                    .map(|_| s.clone())
            },
            |s| {
                format!(
                    " after killing worker {victim}: routes {:#?}, connections {:?}, workers {:?}",
                    s.routes,
                    s.agent.connections,
                    s.pool_of_master(master).map(|p| &p.worker_states)
                )
            },
        )
        .await;
        assert_eq!(
            snap.agent.connections.open, 0,
            "the dead worker's connection state is gone"
        );
        assert_eq!(
            client.join().expect("client thread"),
            0,
            "the client saw the connection die"
        );
    });
}

/// Regenerates the recorded event stream the pipeline benchmark replays:
/// `HERDWATCH_RECORD_TO=agent/benches/data/socket-events.bin cargo xtask test record_pipeline_trace -- --ignored`
/// (or run this test binary with `--ignored`). A mixed workload on real servers: gunicorn +
/// psycopg and uvicorn + asyncpg, CPU, slow-DB, keyed and failing routes.
#[test]
#[ignore = "regenerates benches/data/socket-events.bin; run on purpose"]
fn record_pipeline_trace() {
    let Some(out) = std::env::var_os("HERDWATCH_RECORD_TO") else {
        skip(
            "record_pipeline_trace",
            "set HERDWATCH_RECORD_TO to the output file",
        );
        return;
    };
    let pg = Postgres::start();
    pg.shop_schema();
    let (gport, uport) = (free_port(), free_port());
    let _gunicorn = gunicorn_shop(4, gport, Some(&pg.tcp_url()));
    let _uvicorn = uvicorn_api(2, uport, Some(&pg.tcp_url()));
    wait_http(gport);
    wait_http(uport);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            record_socket_events: Some(out.into()),
            ..test_config()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await; // pools discovered, HTTP_SERVERS set
        let mut plan = Vec::new();
        for i in 0..400 {
            plan.push(format!("/orders/{}", i % 997));
        }
        plan.extend((0..40).map(|_| "/cpu".to_string()));
        plan.extend((0..10).map(|_| "/db".to_string()));
        plan.extend((0..30).map(|_| "/broken".to_string()));
        tokio::task::spawn_blocking(move || load(gport, plan, 4))
            .await
            .expect("gunicorn load");
        let plan: Vec<String> = (0..400).map(|i| format!("/orders/{}", i % 991)).collect();
        tokio::task::spawn_blocking(move || load(uport, plan, 8))
            .await
            .expect("uvicorn load");
        let snap = agent.snapshot_now().await.expect("snapshot");
        eprintln!(
            "recorded {} socket events",
            snap.agent.socket_events_received
        );
        assert!(snap.agent.socket_events_received > 1000);
    });
}
