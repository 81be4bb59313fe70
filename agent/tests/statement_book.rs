//! The statement book across agent restarts, on real PostgreSQL with real drivers: psycopg
//! (`prepare=True`) and asyncpg (its statement cache) prepare each statement once per
//! connection and execute it by name for as long as the connection lives. An agent restarted
//! with the same state directory still knows their text; one without the book does not. And
//! an agent that never saw the Parse reads the text from PostgreSQL (`monitor_dsn`).
mod common;

use std::{io::Write as _, path::Path, process::Command, time::Duration};

use common::{postgres::Postgres, *};
use herdwatch::Config;

const N: u64 = 20;

/// The statements the clients run (as psycopg sends its `%s`: `$1`).
const STATEMENTS: [&str; 4] = [
    "SELECT id, total FROM orders WHERE customer = $1",
    "SELECT count(*) FROM orders WHERE total > $1",
    "SELECT customer FROM orders WHERE id = $1",
    "SELECT max(total) FROM orders WHERE customer = $1",
];

fn config(pg: &Postgres, state: &Path) -> Config {
    Config {
        postgres_ports: vec![pg.port],
        state_dir: Some(state.to_path_buf()),
        ..test_config()
    }
}

/// One round of traffic: every statement N times on the clients' long-lived connections.
fn round(clients: &mut Proc) {
    clients
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("signal the clients");
    clients.wait_line("done");
}

/// Waits until every statement has N calls (with its text) or, if some never get their
/// text, until the clients' executions are all accounted for; returns the snapshot.
async fn round_seen(
    agent: &herdwatch::Agent,
    pid: u32,
) -> std::sync::Arc<herdwatch::model::Snapshot> {
    wait_for(
        agent,
        Duration::from_secs(30),
        "the round's executions",
        |s| {
            let calls: u64 = s
                .queries
                .iter()
                .filter(|q| q.pids.contains(&pid))
                .map(|q| q.calls)
                .sum();
            (calls >= N * STATEMENTS.len() as u64).then(|| s.clone())
        },
    )
    .await
}

#[test]
fn a_restarted_agent_knows_statements_prepared_before_it_started() {
    if !kernel_available("a_restarted_agent_knows_statements_prepared_before_it_started") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let mut clients = Proc::spawn(
        Command::new(venv().join("bin/python"))
            .arg(apps_dir().join("prepared_clients.py"))
            .args([&pg.tcp_dsn(), &pg.tcp_url(), &N.to_string()]),
    );
    clients.wait_line("ready");
    let pid = clients.pid();
    let state = tempfile::tempdir().expect("state dir");
    let state_dir = state.path().join("herdwatch"); // created by the agent
    runtime().block_on(async {
        // First run: sees every Parse, keeps the texts in the book, writes it at stop.
        let agent = start_agent_with(config(&pg, &state_dir)).await;
        round(&mut clients);
        let first = round_seen(&agent, pid).await;
        for sql in STATEMENTS {
            let q = first
                .query_like(sql)
                .unwrap_or_else(|| panic!("first run: {sql}"));
            assert!(q.calls >= N, "first run: {sql}: {} calls", q.calls);
        }
        agent.stop().await.expect("orderly stop");
        let file = std::fs::read_to_string(state_dir.join("statements.json"))
            .expect("the book is written at stop");
        assert!(
            file.contains("\"_pg3_") && file.contains("__asyncpg_stmt_"),
            "{file}"
        );

        // Second run, same state directory: the connections are seen mid-stream, their
        // statements executed by name only, and every call has its text.
        let agent = start_agent_with(config(&pg, &state_dir)).await;
        round(&mut clients);
        let second = round_seen(&agent, pid).await;
        let unknown: Vec<&str> = second
            .queries
            .iter()
            .filter(|q| q.pids.contains(&pid) && q.text_unknown)
            .map(|q| q.summary.as_str())
            .collect();
        assert!(
            unknown.is_empty(),
            "texts unknown after the restart: {unknown:?}"
        );
        for sql in STATEMENTS {
            let q = second
                .query_like(sql)
                .unwrap_or_else(|| panic!("second run: {sql} has no text"));
            eprintln!("after restart: {:<52} {} calls", q.normalized, q.calls);
            assert_eq!(q.calls, N, "second run: every call of {sql} has its text");
        }
        agent.stop().await.expect("orderly stop");

        // Control: a run with an empty state directory is blind to the same statements, so
        // the book (not something else) is what gave the second run their text.
        let fresh = tempfile::tempdir().expect("state dir");
        let agent = start_agent_with(config(&pg, fresh.path())).await;
        round(&mut clients);
        let third = round_seen(&agent, pid).await;
        let unknown = third
            .queries
            .iter()
            .filter(|q| q.pids.contains(&pid) && q.text_unknown)
            .count();
        assert_eq!(
            unknown,
            STATEMENTS.len(),
            "without the book: {:#?}",
            third.queries
        );
        agent.stop().await.expect("orderly stop");
    });
}

/// Calls per statement: (with text, by name only), for the clients' pid.
fn calls(snap: &herdwatch::model::Snapshot, pid: u32) -> (u64, u64) {
    let mine = snap.queries.iter().filter(|q| q.pids.contains(&pid));
    let (known, unknown): (Vec<_>, Vec<_>) = mine.partition(|q| !q.text_unknown);
    (
        known.iter().map(|q| q.calls).sum(),
        unknown.iter().map(|q| q.calls).sum(),
    )
}

#[test]
fn an_agent_that_never_saw_the_parse_reads_the_text_from_postgres() {
    if !kernel_available("an_agent_that_never_saw_the_parse_reads_the_text_from_postgres") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    pg.sql("CREATE ROLE hw_monitor LOGIN");
    pg.sql("GRANT pg_monitor TO hw_monitor");
    // 20 ms between statements: a connection idles between requests.
    let mut clients = Proc::spawn(
        Command::new(venv().join("bin/python"))
            .arg(apps_dir().join("prepared_clients.py"))
            .args([&pg.tcp_dsn(), &pg.tcp_url(), &N.to_string(), "20"]),
    );
    clients.wait_line("ready");
    let pid = clients.pid();
    // Every statement prepared (and executed) before the agent starts.
    round(&mut clients);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            postgres_ports: vec![pg.port],
            postgres: herdwatch::config::PostgresConfig {
                monitor_dsn: Some(format!(
                    "host=127.0.0.1 port={} user=hw_monitor dbname=postgres",
                    pg.port
                )),
            },
            ..test_config()
        })
        .await;
        // The first executions are by name only; each is looked up in pg_stat_activity.
        round(&mut clients);
        let first = round_seen(&agent, pid).await;
        let (known_before, unknown_before) = calls(&first, pid);
        eprintln!("round seen first: {known_before} calls with text, {unknown_before} by name");
        round(&mut clients);
        let second = wait_for(&agent, Duration::from_secs(30), "the second round", |s| {
            let (k, u) = calls(s, pid);
            (k + u >= known_before + unknown_before + N * STATEMENTS.len() as u64)
                .then(|| s.clone())
        })
        .await;
        let (known_after, unknown_after) = calls(&second, pid);
        eprintln!("after the second round: {known_after} with text, {unknown_after} by name");
        assert_eq!(
            unknown_after, unknown_before,
            "every call of the second round has its text: {:#?}",
            second.queries
        );
        for sql in STATEMENTS {
            let q = second
                .query_like(sql)
                .unwrap_or_else(|| panic!("{sql}: text never recovered"));
            eprintln!(
                "recovered from PostgreSQL: {:<52} {} calls",
                q.normalized, q.calls
            );
            assert!(q.calls >= N, "{sql}: {} calls with text", q.calls);
        }
        agent.stop().await.expect("orderly stop");
    });
}
