//! Session-level tests: byte streams as psycopg, asyncpg and psql send them.
use super::{messages::*, *};
use crate::Chunk;

pub fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn startup(user: &str, db: &str) -> Vec<u8> {
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    body.extend(cstrs(&["user", user, "database", db, ""]));
    let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

fn query(sql: &str) -> Vec<u8> {
    typed(b'Q', &cstrs(&[sql]))
}
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstrs(&[name, sql]);
    b.extend(0i16.to_be_bytes());
    typed(b'P', &b)
}
fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = cstrs(&[portal, stmt]);
    b.extend([0, 0, 0, 0, 0, 0]); // no formats, no params, no result formats
    typed(b'B', &b)
}
fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstrs(&[portal]);
    b.extend(0i32.to_be_bytes());
    typed(b'E', &b)
}
fn sync() -> Vec<u8> {
    typed(b'S', b"")
}
fn complete(tag: &str) -> Vec<u8> {
    typed(b'C', &cstrs(&[tag]))
}
fn ready() -> Vec<u8> {
    typed(b'Z', b"I")
}
fn data_row() -> Vec<u8> {
    typed(b'D', &[0, 1, 0, 0, 0, 1, b'1'])
}
fn error(sqlstate: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (code, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', sqlstate),
        (b'M', "relation \"nope\" does not exist"),
    ] {
        b.push(code);
        b.extend(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    typed(b'E', &b)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn queries(events: Vec<SessionEvent>) -> Vec<QueryEvent> {
    events
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::Query(q) => Some(q),
            _ => None,
        })
        .collect()
}

#[test]
fn startup_then_simple_query_with_rows() {
    let mut s = PgSession::new();
    let ev = s.on_frontend(Chunk::whole(&startup("shop", "shopdb"), 1));
    assert_eq!(
        ev,
        vec![SessionEvent::Startup {
            user: Some("shop".into()),
            database: Some("shopdb".into())
        }]
    );
    s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'R', &[0, 0, 0, 0]),
            typed(b'S', &cstrs(&["a", "b"])),
            ready(),
        ]),
        2,
    ));
    s.on_frontend(Chunk::whole(
        &query("SELECT id FROM orders WHERE id = 7"),
        10,
    ));
    assert_eq!(s.in_flight(), 1);
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'T', &[0, 0]),
            data_row(),
            data_row(),
            complete("SELECT 2"),
            ready(),
        ]),
        25,
    )));
    assert_eq!(q.len(), 1);
    let q = &q[0];
    assert_eq!(q.sql.as_deref(), Some("SELECT id FROM orders WHERE id = 7"));
    assert_eq!(
        (q.rows, q.command.as_deref(), q.outcome),
        (2, Some("SELECT"), Outcome::Ok)
    );
    assert_eq!(
        (q.started_ns, q.first_response_ns, q.finished_ns),
        (10, Some(25), 25)
    );
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn pipelined_extended_queries_complete_in_order() {
    let mut s = PgSession::mid_stream();
    let front = cat(&[
        parse("", "SELECT $1::int"),
        bind("", ""),
        execute(""),
        parse("s2", "UPDATE orders SET paid = true WHERE id = $1"),
        bind("", "s2"),
        execute(""),
        sync(),
    ]);
    s.on_frontend(Chunk::whole(&front, 100));
    assert_eq!(s.in_flight(), 2);
    let back = cat(&[
        typed(b'1', b""),
        typed(b'2', b""),
        data_row(),
        complete("SELECT 1"),
        typed(b'1', b""),
        typed(b'2', b""),
        complete("UPDATE 3"),
        ready(),
    ]);
    let q = queries(s.on_backend(Chunk::whole(&back, 150)));
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].sql.as_deref(), Some("SELECT $1::int"));
    assert_eq!(q[0].rows, 1);
    assert_eq!(q[1].statement.as_deref(), Some("s2"));
    assert_eq!((q[1].rows, q[1].command.as_deref()), (3, Some("UPDATE")));
    assert!(
        q.iter()
            .all(|q| q.protocol == QueryProtocol::Extended && q.outcome == Outcome::Ok)
    );
}

#[test]
fn an_error_aborts_the_rest_of_the_pipeline_until_sync() {
    let mut s = PgSession::mid_stream();
    let front = cat(&[
        parse("", "SELECT * FROM nope"),
        bind("", ""),
        execute(""),
        parse("", "SELECT 1"),
        bind("", ""),
        execute(""),
        sync(),
    ]);
    s.on_frontend(Chunk::whole(&front, 1));
    let q = queries(s.on_backend(Chunk::whole(&cat(&[error("42P01"), ready()]), 2)));
    assert_eq!(q.len(), 2);
    assert_eq!(
        (q[0].outcome, q[0].sqlstate.as_deref()),
        (Outcome::Error, Some("42P01"))
    );
    assert_eq!(q[1].outcome, Outcome::Aborted);
    // The next pipeline is clean again.
    s.on_frontend(Chunk::whole(&cat(&[bind("", ""), execute(""), sync()]), 3));
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[typed(b'2', b""), complete("SELECT 1"), ready()]),
        4,
    )));
    assert_eq!(q[0].outcome, Outcome::Ok);
}

#[test]
fn simple_query_error_carries_sqlstate() {
    let mut s = PgSession::mid_stream();
    s.on_frontend(Chunk::whole(&query("SELECT 1/0"), 1));
    let q = queries(s.on_backend(Chunk::whole(&cat(&[error("22012"), ready()]), 2)));
    assert_eq!(
        (q[0].outcome, q[0].sqlstate.as_deref()),
        (Outcome::Error, Some("22012"))
    );
}

#[test]
fn statements_prepared_before_we_started_are_attributed_by_name_then_by_text() {
    let mut s = PgSession::mid_stream();
    s.on_frontend(Chunk::whole(
        &cat(&[bind("", "_pg3_0"), execute(""), sync()]),
        1,
    ));
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[typed(b'2', b""), data_row(), complete("SELECT 1"), ready()]),
        2,
    )));
    assert_eq!(q.len(), 1, "never silently dropped");
    assert_eq!(
        (q[0].sql.as_deref(), q[0].statement.as_deref()),
        (None, Some("_pg3_0"))
    );
    // Once the client prepares it again (e.g. after DEALLOCATE), the text is known.
    s.on_frontend(Chunk::whole(
        &cat(&[
            parse("_pg3_0", "SELECT * FROM orders WHERE id = $1"),
            bind("", "_pg3_0"),
            execute(""),
            sync(),
        ]),
        3,
    ));
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'1', b""),
            typed(b'2', b""),
            complete("SELECT 0"),
            ready(),
        ]),
        4,
    )));
    assert_eq!(
        q[0].sql.as_deref(),
        Some("SELECT * FROM orders WHERE id = $1")
    );
}

#[test]
fn a_learned_statement_gives_its_text_to_executes_and_a_parse_overrides_it() {
    let mut s = PgSession::mid_stream();
    assert!(s.learn_statement("_pg3_4", "select * from orders where id = ?".into(), false));
    assert!(
        !s.learn_statement("", "select 1".into(), false),
        "unnamed: never learned"
    );
    s.on_frontend(Chunk::whole(
        &cat(&[bind("", "_pg3_4"), execute(""), sync()]),
        1,
    ));
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[typed(b'2', b""), complete("SELECT 1"), ready()]),
        2,
    )));
    assert_eq!(
        (q[0].sql.as_deref(), q[0].statement.as_deref()),
        (Some("select * from orders where id = ?"), Some("_pg3_4"))
    );
    assert!(
        !s.has_prepared(),
        "learned statements are not handed back as new"
    );
    // The connection's own Parse is the truth, and is handed over once.
    s.on_frontend(Chunk::whole(
        &cat(&[
            parse("_pg3_4", "SELECT 2"),
            parse("", "SELECT 3"),
            bind("", "_pg3_4"),
            execute(""),
            sync(),
        ]),
        3,
    ));
    assert!(s.has_prepared());
    let mut taken = Vec::new();
    s.take_prepared(|name, sql, truncated| {
        taken.push((name.to_string(), sql.to_string(), truncated))
    });
    assert_eq!(
        taken,
        [("_pg3_4".to_string(), "SELECT 2".to_string(), false)]
    );
    assert!(!s.has_prepared());
    assert!(
        !s.learn_statement("_pg3_4", "stale".into(), false),
        "a parsed name keeps its text"
    );
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'1', b""),
            typed(b'1', b""),
            typed(b'2', b""),
            complete("SELECT 1"),
            ready(),
        ]),
        4,
    )));
    assert_eq!(q[0].sql.as_deref(), Some("SELECT 2"));
    // A reused session forgets both.
    s.reuse(false);
    assert!(!s.has_prepared());
    assert!(s.learn_statement("_pg3_4", "x".into(), false));
}

#[test]
fn the_latest_operations_name_an_unknown_statement_until_another_is_sent() {
    let mut s = PgSession::mid_stream();
    assert_eq!(*s.latest_ops(), LatestOps::default());
    s.on_frontend(Chunk::whole(&cat(&[query("SELECT 1")]), 10));
    s.on_frontend(Chunk::whole(
        &cat(&[bind("", "_pg3_9"), execute(""), sync()]),
        20,
    ));
    let latest = s.latest_ops().clone();
    assert_eq!((latest.started_ns, latest.previous_started_ns), (20, 10));
    assert_eq!(latest.unknown_statement.as_deref(), Some("_pg3_9"));
    // A statement whose text is known is not "unknown"; nor is the next operation.
    s.learn_statement("_pg3_9", "select ?".into(), false);
    s.on_frontend(Chunk::whole(
        &cat(&[bind("", "_pg3_9"), execute(""), sync()]),
        30,
    ));
    assert_eq!(s.latest_ops().unknown_statement, None);
    assert_eq!(s.latest_ops().previous_started_ns, 20);
}

#[test]
fn byte_at_a_time_delivery_gives_the_same_result() {
    // Wire order: startup, auth + ReadyForQuery, query, result.
    let turns = [
        (true, startup("u", "d")),
        (false, cat(&[typed(b'R', &[0, 0, 0, 0]), ready()])),
        (true, query("SELECT 1")),
        (false, cat(&[data_row(), complete("SELECT 1"), ready()])),
    ];
    let mut s = PgSession::new();
    let mut events = Vec::new();
    for (frontend, bytes) in &turns {
        for (i, b) in bytes.iter().enumerate() {
            let chunk = Chunk::whole(std::slice::from_ref(b), i as u64);
            events.extend(if *frontend {
                s.on_frontend(chunk)
            } else {
                s.on_backend(chunk)
            });
        }
    }
    let q = queries(events);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].rows, 1);
}

#[test]
fn ssl_accepted_stops_parsing_and_ssl_refused_continues() {
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend(SSL_REQUEST.to_be_bytes());
    let mut s = PgSession::new();
    s.on_frontend(Chunk::whole(&ssl, 1));
    assert_eq!(
        s.on_backend(Chunk::whole(b"S", 2)),
        vec![SessionEvent::Encrypted]
    );
    assert!(
        s.on_frontend(Chunk::whole(&[0x16, 0x03, 0x01, 0x02, 0x00], 3))
            .is_empty()
    );

    let mut s = PgSession::new();
    s.on_frontend(Chunk::whole(&ssl, 1));
    assert!(s.on_backend(Chunk::whole(b"N", 2)).is_empty());
    let ev = s.on_frontend(Chunk::whole(&startup("u", "d"), 3));
    assert!(matches!(ev[0], SessionEvent::Startup { .. }));
}

#[test]
fn a_long_query_only_partly_captured_is_marked_truncated() {
    let long = format!("SELECT {} FROM t", "x, ".repeat(500));
    let msg = query(&long);
    let mut s = PgSession::mid_stream();
    s.on_frontend(Chunk {
        data: &msg[..512],
        total_len: msg.len(),
        timestamp_ns: 1,
        tail: &[],
    });
    let q = queries(s.on_backend(Chunk::whole(&cat(&[complete("SELECT 0"), ready()]), 2)));
    assert!(q[0].sql_truncated);
    assert!(
        q[0].sql
            .as_deref()
            .is_some_and(|t| t.starts_with("SELECT x, x,"))
    );
}

#[test]
fn garbage_never_panics_and_is_reported() {
    let mut s = PgSession::new();
    let mut errors = 0;
    for seed in 0u32..200 {
        let bytes: Vec<u8> = (0..64)
            .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 13) as u8)
            .collect();
        for e in s
            .on_frontend(Chunk::whole(&bytes, 1))
            .into_iter()
            .chain(s.on_backend(Chunk::whole(&bytes, 2)))
        {
            if matches!(e, SessionEvent::Error(_)) {
                errors += 1;
            }
        }
    }
    assert!(errors > 0 || s.skipped_chunks() > 0);
}

#[test]
fn an_error_at_parse_is_a_failed_call_of_that_statement() {
    // asyncpg: Parse + Describe + Sync first; the server rejects the Parse.
    let mut s = PgSession::mid_stream();
    s.on_frontend(Chunk::whole(
        &cat(&[
            parse("__asyncpg_stmt_1__", "SELECT * FROM nope WHERE id = $1"),
            typed(b'D', &cstrs(&["S__asyncpg_stmt_1__"])[..]),
            sync(),
        ]),
        1,
    ));
    let q = queries(s.on_backend(Chunk::whole(&cat(&[error("42P01"), ready()]), 2)));
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].outcome, q[0].sqlstate.as_deref(), q[0].sql.as_deref()),
        (
            Outcome::Error,
            Some("42P01"),
            Some("SELECT * FROM nope WHERE id = $1")
        )
    );
    assert_eq!(s.in_flight(), 0);
    // A successful prepare + execute yields exactly one call.
    s.on_frontend(Chunk::whole(
        &cat(&[parse("s", "SELECT 1"), bind("", "s"), execute(""), sync()]),
        3,
    ));
    let q = queries(s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'1', b""),
            typed(b'2', b""),
            data_row(),
            complete("SELECT 1"),
            ready(),
        ]),
        4,
    )));
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].outcome, Outcome::Ok);
}

/// A conversation: startup, a prepared statement executed on the unnamed portal, a simple
/// query. Returns every event.
fn conversation(s: &mut PgSession) -> Vec<SessionEvent> {
    let mut ev = s.on_frontend(Chunk::whole(&startup("shop", "shopdb"), 1));
    ev.extend(s.on_backend(Chunk::whole(&ready(), 2)));
    ev.extend(s.on_frontend(Chunk::whole(
        &cat(&[
            parse("s1", "SELECT 1"),
            sync(),
            bind("", "s1"),
            execute(""),
            sync(),
        ]),
        3,
    )));
    ev.extend(s.on_backend(Chunk::whole(
        &cat(&[
            typed(b'1', b""),
            ready(),
            typed(b'2', b""),
            data_row(),
            complete("SELECT 1"),
            ready(),
        ]),
        4,
    )));
    ev.extend(s.on_frontend(Chunk::whole(&query("SELECT 2"), 5)));
    ev.extend(s.on_backend(Chunk::whole(&cat(&[complete("SELECT 1"), ready()]), 6)));
    ev
}

#[test]
fn a_reused_session_is_a_new_session() {
    let fresh = conversation(&mut PgSession::new());
    assert_eq!(queries(fresh.clone()).len(), 2);
    // A session left mid-query, with statements and portals...
    let mut used = PgSession::new();
    conversation(&mut used);
    used.on_frontend(Chunk::whole(&cat(&[bind("p", "s1"), execute("p")]), 7));
    assert_eq!(used.in_flight(), 1);
    // ...serves the next connection exactly as a new one would.
    used.reuse(true);
    assert_eq!(used.in_flight(), 0);
    assert_eq!(conversation(&mut used), fresh);
    // So does one whose connection switched to TLS.
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend(SSL_REQUEST.to_be_bytes());
    let mut encrypted = PgSession::new();
    encrypted.on_frontend(Chunk::whole(&ssl, 1));
    encrypted.on_backend(Chunk::whole(b"S", 2));
    assert!(encrypted.encrypted());
    encrypted.reuse(true);
    assert!(!encrypted.encrypted());
    assert_eq!(conversation(&mut encrypted), fresh);
    // And joining a connection mid-stream, as `mid_stream()` does.
    let mut joined = PgSession::mid_stream();
    let expected = joined.on_frontend(Chunk::whole(&query("SELECT 3"), 1));
    used.reuse(false);
    assert_eq!(
        used.on_frontend(Chunk::whole(&query("SELECT 3"), 1)),
        expected
    );
    assert_eq!(used.in_flight(), joined.in_flight());
}
