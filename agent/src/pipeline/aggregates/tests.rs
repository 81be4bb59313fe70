use super::*;
use herdwatch_protocol::postgres::QueryProtocol;

/// A finished query of `sql` or the prepared statement `name`: 20 ns waited, 30 ns in all.
pub(crate) fn q(sql: Option<&str>, name: Option<&str>, outcome: Outcome) -> QueryEvent {
    let sql = sql.map(std::sync::Arc::from);
    QueryEvent {
        sql,
        sql_truncated: false,
        statement: name.map(Into::into),
        protocol: QueryProtocol::Simple,
        started_ns: 10,
        first_response_ns: Some(20),
        finished_ns: 30,
        rows: 1,
        command: None,
        outcome,
        sqlstate: (outcome == Outcome::Error).then(|| "42P01".to_string()),
    }
}

#[test]
fn literals_group_and_the_limit_holds() {
    let mut a = Aggregates::new(2, 2, RouteGrouper::default());
    let by_id = |n| {
        q(
            Some(&format!("SELECT * FROM t WHERE id = {n}")),
            None,
            Outcome::Ok,
        )
    };
    a.record_query(
        (1, 3),
        None,
        &by_id(1),
        Caller {
            route: Some(&Label::from("/t/{id}")),
            ..Caller::default()
        },
        Vec::new(),
    );
    let mut failed = by_id(2);
    failed.outcome = Outcome::Error;
    failed.sqlstate = Some("42P01".into());
    a.record_query((2, 3), None, &failed, Caller::default(), Vec::new());
    a.record_query(
        (1, 3),
        None,
        &q(None, Some("_pg3_0"), Outcome::Ok),
        Caller::default(),
        Vec::new(),
    );
    a.record_query(
        (1, 3),
        None,
        &q(Some("DELETE FROM x"), None, Outcome::Ok),
        Caller::default(),
        Vec::new(),
    );
    assert_eq!(a.outbox.len(), 4);
    let v = a.queries();
    assert_eq!(v.len(), 3, "two fingerprints + other: {v:?}");
    let t = v.iter().find(|s| s.summary == "SELECT t").expect("grouped");
    assert_eq!((t.calls, t.errors, t.pids.len()), (2, 1, 2));
    assert_eq!(
        t.routes,
        vec![RouteCalls {
            route: "/t/{id}".to_string(),
            calls: 1
        }]
    );
    assert_eq!(t.errors_by_sqlstate.get("42P01"), Some(&1));
    assert!(
        v.iter()
            .any(|s| s.text_unknown && s.summary == "EXECUTE _pg3_0")
    );
    assert_eq!(
        v.iter().find(|s| s.id == OTHER_ID).map(|s| s.calls),
        Some(1)
    );
    assert!(v.iter().all(|s| !s.normalized.contains("= 1")));
}

#[test]
fn reloaded_route_patterns_group_new_requests_and_leave_counted_routes_alone() {
    use herdwatch_protocol::route::RoutePattern;
    let mut a = Aggregates::new(8, 8, RouteGrouper::default());
    let before = a.route_of("/api/users/alice");
    let pattern = RoutePattern::parse("/api/users/{name}").expect("pattern");
    a.set_route_grouper(RouteGrouper::new(vec![pattern]));
    let after = a.route_of("/api/users/bob");
    assert_eq!(&*after, "/api/users/{name}");
    assert_ne!(
        before, after,
        "the first request was grouped before the reload"
    );
    assert_eq!(
        &*a.route_of("/health"),
        "/health",
        "paths the patterns miss group as before"
    );
}

#[test]
fn prepared_statement_ids_are_computed_once_per_name_and_bounded() {
    let mut a = Aggregates::new(16, 16, RouteGrouper::default());
    assert_eq!(
        &*a.prepared_label("__asyncpg_stmt_1__"),
        prepared_id("__asyncpg_stmt_1__")
    );
    for i in 0..FINGERPRINT_CACHE + 10 {
        a.prepared_label(&format!("stmt{i}"));
    }
    assert!(a.prepared_ids.len() <= FINGERPRINT_CACHE);
    // After the cache started over, a name still gets its one id.
    assert_eq!(&*a.prepared_label("stmt3"), prepared_id("stmt3"));
    assert_eq!(&*a.prepared_label("stmt3"), prepared_id("stmt3"));
}
