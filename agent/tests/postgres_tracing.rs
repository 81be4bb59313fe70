//! PostgreSQL queries traced from the kernel: per-fingerprint call counts against the server's
//! own pg_stat_statements, over TCP and the Unix socket; SQLSTATEs of failing queries; and
//! statements prepared before the agent started, on a connection opened before it started.
mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::{postgres::Postgres, *};
use herdwatch::{Config, protocol::fingerprint::fingerprint};

const N: u64 = 25;

/// pg_stat_statements calls summed per our fingerprint of its normalised text.
fn server_calls_by_fingerprint(pg: &Postgres) -> HashMap<String, u64> {
    let mut by_id = HashMap::new();
    for (query, calls) in pg.statements() {
        *by_id.entry(fingerprint(&query).hex_id()).or_default() += calls;
    }
    by_id
}

/// Waits until every TRACKED statement has N successful calls; returns that snapshot.
async fn all_tracked_queries(
    agent: &herdwatch::Agent,
    what: &str,
) -> std::sync::Arc<herdwatch::model::Snapshot> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = agent.snapshot_now().await.expect("snapshot");
        let done = |q: &&str| {
            s.query_like(q)
                .is_some_and(|st| st.calls - st.errors - st.aborted >= N)
        };
        if TRACKED.iter().all(done) {
            return s;
        }
        if std::time::Instant::now() >= deadline {
            // Say what fell short, and whether records were lost on the way.
            for q in TRACKED {
                let seen = s.query_like(q).map(|st| (st.calls, st.errors, st.aborted));
                eprintln!("  {q}: (calls, errors, aborted) {seen:?} of {N}");
            }
            eprintln!("  connections {:?}", s.agent.connections);
            eprintln!("  drops {:?}", s.agent.drops());
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn run_client(dsn: &str) {
    let venv = venv();
    let out = Command::new(venv.join("bin/python"))
        .arg(apps_dir().join("pg_client.py"))
        .args([dsn, &N.to_string()])
        .output()
        .expect("client runs");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TRACKED: [&str; 5] = [
    "SELECT id, total FROM orders WHERE id = 1",
    "SELECT count(*) FROM orders WHERE total > $1",
    "SELECT id, total FROM orders WHERE customer = $1",
    "UPDATE orders SET total = total + 1 WHERE id = $1",
    "SELECT total FROM orders WHERE id = $1",
];

fn assert_counts_match(transport: &str, raw_syscall_tracepoints: bool) {
    let pg = &Postgres::start();
    let dsn = if transport == "tcp" {
        pg.tcp_dsn()
    } else {
        pg.unix_dsn()
    };
    pg.shop_schema();
    runtime().block_on(async {
        // The test server listens on a free port, not 5432.
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            raw_syscall_tracepoints,
            ..test_config()
        })
        .await;
        run_client(&dsn);
        // Every tracked fingerprint reaches N successful calls (the client has finished).
        let snap = all_tracked_queries(&agent, "all queries traced").await;
        let server = server_calls_by_fingerprint(pg);
        for q in TRACKED {
            let ours = snap.query_like(q).expect("traced");
            let theirs = server.get(&ours.id).copied().unwrap_or(0);
            eprintln!(
                "{transport}: {:<50} agent {} calls ({} errors), pg_stat_statements {theirs}",
                ours.summary, ours.calls, ours.errors
            );
            assert_eq!(
                ours.calls - ours.errors - ours.aborted,
                theirs,
                "{transport}: {q}"
            );
            assert_eq!(
                theirs, N,
                "{transport}: the server saw each statement N times: {q}"
            );
        }
        let failing = snap
            .query_like("SELECT * FROM missing_table WHERE id = $1")
            .expect("failing query traced");
        assert_eq!(
            failing.errors, N,
            "{transport}: every failing query counted"
        );
        assert_eq!(
            failing.errors_by_sqlstate.get("42P01"),
            Some(&N),
            "{transport}: SQLSTATE 42P01"
        );
        // Literals never reach the normalised text.
        assert!(
            snap.queries.iter().all(|q| !q.normalized.contains("= 7 ")),
            "literals stripped"
        );
        assert_eq!(snap.agent.kernel.socket_events_dropped, 0);
    });
}

#[test]
fn query_counts_match_pg_stat_statements_over_tcp() {
    if !kernel_available("query_counts_match_pg_stat_statements_over_tcp") {
        return;
    }
    assert_counts_match("tcp", false);
}

#[test]
fn query_counts_match_pg_stat_statements_over_the_unix_socket() {
    if !kernel_available("query_counts_match_pg_stat_statements_over_the_unix_socket") {
        return;
    }
    assert_counts_match("unix", false);
}

/// The same handlers attached the other way: two programs on the raw `sys_enter`/`sys_exit`
/// tracepoints, dispatching on the call's number (`raw_syscall_tracepoints = true`).
#[test]
fn query_counts_match_pg_stat_statements_with_the_raw_syscall_programs() {
    if !kernel_available("query_counts_match_pg_stat_statements_with_the_raw_syscall_programs") {
        return;
    }
    assert_counts_match("tcp", true);
}

#[test]
fn statements_prepared_before_the_agent_started_are_attributed() {
    if !kernel_available("statements_prepared_before_the_agent_started_are_attributed") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let venv = venv();
    let mut client = Proc::spawn(
        Command::new(venv.join("bin/python"))
            .arg(apps_dir().join("pg_client.py"))
            .args([&pg.tcp_dsn(), &N.to_string(), "--wait"]),
    );
    client.wait_line("ready");
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            ..test_config()
        })
        .await;
        use std::io::Write as _;
        client
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("signal client");
        client.wait_line("done");
        let stats = wait_for(
            &agent,
            Duration::from_secs(30),
            "the prepared statement's executions",
            |s| {
                s.queries
                    .iter()
                    .find(|q| q.text_unknown && q.calls >= N)
                    .cloned()
            },
        )
        .await;
        eprintln!(
            "prepared before start: {} → {} calls, pid(s) {:?}",
            stats.summary, stats.calls, stats.pids
        );
        assert_eq!(
            stats.calls, N,
            "every execution of the statement prepared before we started"
        );
        assert!(
            stats.summary.starts_with("EXECUTE _pg3_"),
            "{}",
            stats.summary
        );
        assert_eq!(stats.pids, vec![client.pid()]);
    });
}

/// PostgreSQL on a port nobody configured is still recognised, from the StartupMessage its
/// clients send first.
#[test]
fn postgres_on_an_unconfigured_port_is_recognised_by_its_first_bytes() {
    if !kernel_available("postgres_on_an_unconfigured_port_is_recognised_by_its_first_bytes") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    assert!(!Config::default().postgres_ports.contains(&pg.port));
    runtime().block_on(async {
        let agent = start_agent().await; // default ports: 5432 and 6432 only
        run_client(&pg.tcp_dsn());
        let snap = all_tracked_queries(&agent, "queries on the unconfigured port").await;
        assert_every_tracked_statement_matches_the_server(&snap, &pg);
        assert_eq!(snap.agent.socket_events_malformed, 0);
    });
}

/// A TCP destination whose first connection did not speak PostgreSQL is learnt once: the
/// kernel side stops treating further connections to it as candidates (no tracking, no
/// first-write test), and PostgreSQL on the same address is still traced.
#[test]
fn a_destination_that_is_not_postgres_is_learnt_once() {
    if !kernel_available("a_destination_that_is_not_postgres_is_learnt_once") {
        return;
    }
    const CONNECTIONS: u64 = 20;
    let pg = Postgres::start();
    pg.shop_schema();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for _ in 0..CONNECTIONS {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 64];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"bye\n");
        }
    });
    runtime().block_on(async {
        let agent = start_agent().await;
        let before = agent
            .snapshot_now()
            .await
            .expect("snapshot")
            .agent
            .connects_known_not_postgres;
        // One client process, one connection after the other: the first is a candidate
        // until its first write; every later one goes to a destination known not to be
        // PostgreSQL.
        let client = format!(
            "import socket\nfor _ in range({CONNECTIONS}):\n    s = socket.create_connection(('127.0.0.1', {port}))\n    s.sendall(b'hello\\n')\n    s.recv(16)\n    s.close()\n"
        );
        let status = Command::new(venv().join("bin/python"))
            .args(["-c", &client])
            .status()
            .expect("python client");
        assert!(status.success());
        server.join().expect("server thread");
        run_client(&pg.tcp_dsn());
        let snap = all_tracked_queries(&agent, "queries after the non-PostgreSQL client").await;
        let skipped = snap.agent.connects_known_not_postgres - before;
        assert!(
            skipped >= CONNECTIONS - 1,
            "{skipped} of {CONNECTIONS} connections to 127.0.0.1:{port} skipped the candidate path"
        );
        assert_every_tracked_statement_matches_the_server(&snap, &pg);
    });
}

/// Each TRACKED statement's successful calls, as traced, equal the server's own count.
fn assert_every_tracked_statement_matches_the_server(
    snap: &herdwatch::model::Snapshot,
    pg: &Postgres,
) {
    let server = server_calls_by_fingerprint(pg);
    for q in TRACKED {
        let ours = snap.query_like(q).expect("traced");
        assert_eq!(
            ours.calls - ours.errors - ours.aborted,
            server.get(&ours.id).copied().unwrap_or(0),
            "{q}"
        );
    }
}
