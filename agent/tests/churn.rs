//! Churn leaves the agent where it was: 20 000 short-lived processes, and 20 000 connections
//! (HTTP to a gunicorn pool, and PostgreSQL connections its workers open and close), must not
//! grow the agent's tables, kernel maps or resident memory — read from the agent's own
//! counters (`agent.tables`, `agent.resident_bytes`) — by more than 10 %.
//!
//! And a loss is still counted when the socket ring is full: the agent is stopped (SIGSTOP)
//! while a client writes records into a 16 KiB ring, so the kernel side must count every
//! record it could not write, with most records written without waking the reader.
mod common;

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::{postgres::Postgres, *};
use herdwatch::{Config, model::Snapshot};

const PROCESSES: u32 = 20_000;
const THREADS: u32 = 2_000;
const CONNECTIONS: u32 = 20_000;
/// Of the connections, those whose request also opens a PostgreSQL connection (each one a
/// PostgreSQL backend started: slower, so fewer).
const DB_CONNECTIONS: u32 = 1_000;
/// Allowed growth of any table or of resident memory.
const GROWTH: f64 = 0.10;

/// Processes and threads alive on the host now, from /proc.
fn host_tasks() -> (usize, usize) {
    let mut processes = 0;
    let mut threads = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        processes += 1;
        threads += std::fs::read_dir(entry.path().join("task"))
            .map(|d| d.count())
            .unwrap_or(0);
    }
    (processes, threads)
}

/// Tables keyed by the host's threads. They hold the threads that ran since the agent
/// started, so they also grow while idle threads of the host (a timer, a daemon) wake for the
/// first time: up to the threads alive, never past them unless exited threads are kept.
const PER_HOST_THREAD: [&str; 2] = ["kernel_threads", "thread_groups"];
/// Threads that may have exited after the last sweep and not been forgotten yet.
const EXITING_SLACK: usize = 8;

/// Every table of `after` is within GROWTH of `before` (plus `allowance` entries for what the
/// host itself started meanwhile), and so is resident memory. Per-thread tables may instead
/// reach the `live_threads` of the host, which a table keeping dead threads soon exceeds.
fn assert_where_they_were(
    before: &Snapshot,
    after: &Snapshot,
    (allowance, live_threads): (usize, usize),
    what: &str,
) {
    let (b, a) = (&before.agent, &after.agent);
    for ((name, was), (_, now)) in b.tables.entries().iter().zip(a.tables.entries()) {
        let mut limit = (*was as f64 * (1.0 + GROWTH)).ceil() as usize + allowance;
        if PER_HOST_THREAD.contains(name) {
            limit = limit.max(live_threads + EXITING_SLACK);
        }
        eprintln!("{what}: {name:<22} {was:>6} -> {now:>6} (limit {limit})");
        assert!(now <= limit, "{what}: {name} grew {was} -> {now}");
    }
    let limit = b.resident_bytes as f64 * (1.0 + GROWTH);
    eprintln!(
        "{what}: resident memory {:.1} -> {:.1} MiB (limit {:.1})",
        b.resident_bytes as f64 / 1048576.0,
        a.resident_bytes as f64 / 1048576.0,
        limit / 1048576.0
    );
    assert!(
        b.resident_bytes > 0,
        "the agent reports its resident memory"
    );
    assert!(
        a.resident_bytes as f64 <= limit,
        "{what}: resident memory grew {} -> {}",
        b.resident_bytes,
        a.resident_bytes
    );
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_churn(processes: u32, threads: u32) {
    run(
        Command::new(venv().join("bin/python"))
            .arg(apps_dir().join("churn/spawn.py"))
            .args([processes.to_string(), threads.to_string()]),
        "spawn churn",
    );
}

fn connection_churn(port: u16, connections: u32, db: u32) {
    run(
        Command::new(venv().join("bin/python"))
            .arg(apps_dir().join("churn/client.py"))
            .args([
                port.to_string(),
                (connections - db).to_string(),
                db.to_string(),
                "4".into(),
            ]),
        "connection churn client",
    );
}

/// A snapshot once everything the churn sent has been applied and the exits swept (two
/// snapshots later, each of which drains the rings).
async fn settled(agent: &herdwatch::Agent) -> Arc<Snapshot> {
    tokio::time::sleep(Duration::from_millis(600)).await;
    agent.snapshot_now().await.expect("snapshot");
    tokio::time::sleep(Duration::from_millis(600)).await;
    agent.snapshot_now().await.expect("snapshot")
}

#[test]
fn process_churn_leaves_tables_and_memory_where_they_were() {
    if !kernel_available("process_churn_leaves_tables_and_memory_where_they_were") {
        return;
    }
    runtime().block_on(async {
        let agent = start_agent().await;
        // Warm up: caches and allocator arenas reach the size churn gives them.
        spawn_churn(PROCESSES / 10, THREADS / 10);
        let before = settled(&agent).await;
        let (host_processes, host_threads) = host_tasks();
        spawn_churn(PROCESSES, THREADS);
        let after = settled(&agent).await;
        let (now_processes, now_threads) = host_tasks();
        // Each process is at least a fork, an exec and an exit.
        let events = after.agent.events_received - before.agent.events_received;
        assert!(
            events >= 3 * u64::from(PROCESSES),
            "the agent saw the churn: {events} process events"
        );
        // What the host itself started meanwhile is not the agent's growth.
        let allowance =
            now_processes.saturating_sub(host_processes) + now_threads.saturating_sub(host_threads);
        assert_where_they_were(&before, &after, (allowance, now_threads), "process churn");
        // Exact, not only bounded: the table holds the processes alive now.
        let tracked = after.agent.processes_tracked;
        assert!(
            tracked <= now_processes + 8,
            "{tracked} processes tracked, {now_processes} alive"
        );
        agent.stop().await.expect("stop");
    });
}

#[test]
fn connection_churn_leaves_tables_and_memory_where_they_were() {
    if !kernel_available("connection_churn_leaves_tables_and_memory_where_they_were") {
        return;
    }
    let pg = Postgres::start();
    let port = free_port();
    let mut server = gunicorn_command("churn.app:app", 2, port);
    server.env("PG_DSN", pg.tcp_dsn());
    let _server = Proc::spawn(&mut server);
    wait_http(port);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            ..test_config()
        })
        .await;
        // Warm up, so the connection table's spares and the allocator reach their size.
        connection_churn(port, CONNECTIONS / 10, DB_CONNECTIONS / 10);
        let before = settled(&agent).await;
        let (host_processes, host_threads) = host_tasks();
        connection_churn(port, CONNECTIONS, DB_CONNECTIONS);
        let after = settled(&agent).await;
        let (now_processes, now_threads) = host_tasks();
        let (b, a) = (&before.agent.connections, &after.agent.connections);
        let opened = a.opened - b.opened;
        let closed = a.closed - b.closed;
        eprintln!(
            "connections opened {opened}, closed {closed}, http exchanges {}, queries {}",
            a.http_exchanges - b.http_exchanges,
            a.postgres_queries - b.postgres_queries
        );
        // Each request is one HTTP connection, each /db one PostgreSQL connection more.
        assert!(
            opened >= u64::from(CONNECTIONS + DB_CONNECTIONS),
            "the agent traced the churn: {opened} connections opened"
        );
        assert!(
            closed + 4 >= opened,
            "closes seen for the connections opened: {closed} of {opened}"
        );
        assert_eq!(
            a.evicted, b.evicted,
            "no connection was dropped to stay bounded"
        );
        // Threads the host (this test's own runtime included) started meanwhile.
        let allowance =
            now_processes.saturating_sub(host_processes) + now_threads.saturating_sub(host_threads);
        assert_where_they_were(
            &before,
            &after,
            (allowance, now_threads),
            "connection churn",
        );
        agent.stop().await.expect("stop");
    });
}

/// The kernel side counts every record it could not write while the reader is stopped, under
/// the no-wakeup scheme: `received + dropped` covers every record the client caused.
#[test]
fn a_full_socket_ring_counts_every_record_it_could_not_write() {
    if !kernel_available("a_full_socket_ring_counts_every_record_it_could_not_write") {
        return;
    }
    const QUERIES: u32 = 3_000;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herdwatch.toml");
    std::fs::write(
        &config,
        format!(
            "interval_ms = 300\nsocket_ring_bytes = 16384\npostgres_ports = [{}]\n\
             prometheus_listen = \"127.0.0.1:{}\"\napi_socket = \"{}\"\nstate_dir = \"\"\n",
            pg.port,
            free_port(),
            dir.path().join("api.sock").display()
        ),
    )
    .expect("config written");
    let mut agent = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_herdwatch"))
            .arg("--config")
            .arg(&config)
            .args(["run", "--json"])
            .stderr(Stdio::inherit()),
    );
    let mut lines = agent.stdout.take().expect("stdout").lines();
    let mut next_snapshot = move || -> serde_json::Value {
        let line = lines
            .next()
            .expect("the agent prints snapshots")
            .expect("readable");
        serde_json::from_str(&line).expect("a JSON snapshot")
    };
    next_snapshot();
    let before = next_snapshot();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    run(
        Command::new(venv().join("bin/python"))
            .arg(apps_dir().join("churn/select_one.py"))
            .args([pg.tcp_dsn(), QUERIES.to_string()]),
        "query client",
    );
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    next_snapshot();
    let after = next_snapshot();
    let field = |snap: &serde_json::Value, path: &[&str]| -> u64 {
        path.iter()
            .fold(snap, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in the snapshot"))
    };
    let received = field(&after, &["agent", "socket_events_received"])
        - field(&before, &["agent", "socket_events_received"]);
    let dropped = field(&after, &["agent", "kernel", "socket_events_dropped"])
        - field(&before, &["agent", "kernel", "socket_events_dropped"]);
    eprintln!(
        "{QUERIES} queries while the agent was stopped: {received} records read, {dropped} counted as lost"
    );
    assert!(
        dropped > 0,
        "a 16 KiB ring overflowed and the loss was counted"
    );
    assert!(received > 0, "what fit in the ring was read after SIGCONT");
    // Each query is one write and at least one read on the client's connection.
    assert!(
        received + dropped >= 2 * u64::from(QUERIES),
        "every record is either read or counted as lost: {received} + {dropped}"
    );
}
