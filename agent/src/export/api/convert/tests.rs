//! Every message built from a model value with one of everything, sent through the protobuf
//! encoding and back; and what a newer peer's unknown values do (an error naming them).
use std::collections::BTreeMap;

use herdwatch_proto::v1 as pb;
use prost::Message as _;

use super::finding_kind;
use crate::{
    error::Error,
    model::{
        self, Finding, FindingKind, Histogram, PoolChange, PoolEvent, PoolView, QueryStats,
        RouteCalls, RouteStats, Severity, SiteCalls, Snapshot, TimeShare, WorkerView,
        finding::{Evidence, RouteCopies, Subject},
    },
    net::{Listener, Transport},
    probes::python_code::CallSite,
    procs::{CpuTotals, Pool, PoolKind, worker_state::WorkerState},
};

fn finding() -> Finding {
    Finding {
        id: "herd-1f2e".into(),
        kind: FindingKind::ThunderingHerd,
        severity: Severity::Critical,
        active: true,
        occurrences: 3,
        first_seen_unix_ms: 10,
        last_seen_unix_ms: 40,
        onset_unix_ms: 30,
        reported_unix_ms: 31,
        subject: Subject {
            host: "vm".into(),
            pool: Some("uvicorn herd.app:app".into()),
            route: None,
            query_summary: Some("SELECT payments".into()),
            fingerprint: Some("00ff00ff00ff00ff".into()),
            query_text: Some("SELECT count(*) FROM payments WHERE status = ?".into()),
            endpoint: Some("port 6432 (pgbouncer)".into()),
            tasks: vec!["rollup".into()],
            commands: vec!["python rollup.py --all".into()],
            routes: vec!["/api/home".into(), "/api/kpis".into()],
            route_copies: vec![RouteCopies {
                route: "/api/home".into(),
                copies: 4,
                call_site: Some("herd/app.py:40 in stats()".into()),
            }],
        },
        evidence: vec![Evidence::new("distinct_connections", 8.0, "connections")],
        root_cause: "8 copies of SELECT payments".into(),
        prevention: "Single-flight the cache refill".into(),
        remediation: "wrap stats() in a lock".into(),
        annotations: vec!["master 10 reloaded".into()],
        recent_onsets_unix_ms: vec![1_000, 61_000],
    }
}

fn snapshot() -> Snapshot {
    let mut latency = Histogram::default();
    latency.record(3_000_000);
    latency.record(40_000_000);
    let totals = CpuTotals {
        on_cpu_ns: 1,
        sleep_ns: 2,
        blocked_ns: 3,
        other_off_ns: 4,
        run_delay_ns: 5,
        run_delay_count: 6,
        run_delay_max_ns: 7,
        voluntary_switches: 8,
        involuntary_switches: 9,
    };
    let mut snap = Snapshot {
        taken_at_unix_ms: 1_700_000_000_000,
        interval_ms: 1000,
        ..Snapshot::default()
    };
    snap.host.cpus = 2;
    snap.host.cpu_utilization = Some(0.91);
    snap.pools.push(PoolView {
        name: "gunicorn shop.app:app".into(),
        pool: Pool {
            kind: PoolKind::Gunicorn,
            master: 10,
            workers: vec![11, 12],
            app: Some("shop.app:app".into()),
            worker_class: "sync".into(),
            configured_workers: Some(2),
            configured_binds: vec!["127.0.0.1:8000".into()],
            distinct_by: None,
        },
        listeners: vec![
            Listener {
                inode: 99,
                transport: Transport::Tcp,
                address: "127.0.0.1:8000".into(),
                port: Some(8000),
                accept_queue: Some(5),
            },
            Listener {
                inode: 98,
                transport: Transport::Unix,
                address: "unix:/run/shop.sock".into(),
                port: None,
                accept_queue: None,
            },
        ],
        worker_states: vec![WorkerView {
            pid: 11,
            state: WorkerState::Serving,
            cpu_percent: 55.5,
            totals,
            db_wait_ns: 4_200,
            user_system_ticks: None,
        }],
        busy_workers: 1,
        active_requests: 3,
        busy_history: vec![0, 1, 2],
        cpu_percent: 60.0,
        cpu_time_ns: 100,
        cpu_user_ns: 70,
        cpu_system_ns: 30,
        run_delay_ns: 5,
        time_share: Some(TimeShare {
            on_cpu: 0.25,
            db_wait: 0.7,
            other: 0.05,
        }),
        cgroup: None,
    });
    snap.routes.push(RouteStats {
        pool: "gunicorn shop.app:app".into(),
        method: "GET".into(),
        route: "/orders/{id}".into(),
        requests: 35,
        by_status: BTreeMap::from([(200, 30), (500, 5)]),
        unanswered: 1,
        total_ns: 900,
        max_ns: 300,
        latency: latency.clone(),
        cpu_ns: 400,
        db_wait_ns: 500,
        queries: 35,
        pids: vec![11, 12],
        ..RouteStats::default()
    });
    snap.queries.push(QueryStats {
        id: "00ff00ff00ff00ff".into(),
        summary: "SELECT orders".into(),
        operation: "SELECT".into(),
        normalized: "SELECT id FROM orders WHERE id = $1".into(),
        calls: 35,
        errors: 5,
        errors_by_sqlstate: BTreeMap::from([("42P01".to_string(), 5)]),
        aborted: 1,
        rows: 30,
        total_ns: 700,
        max_ns: 70,
        latency,
        text_unknown: false,
        pids: vec![11],
        routes: vec![RouteCalls {
            route: "/orders/{id}".into(),
            calls: 35,
        }],
        call_sites: vec![SiteCalls {
            site: CallSite {
                file: "/srv/shop/orders.py".into(),
                line: 88,
                function: "load_order".into(),
            },
            calls: 35,
        }],
        heuristic_calls: 0,
    });
    snap.findings.push(finding());
    snap.pool_events = vec![
        PoolEvent {
            at_unix_ms: 5,
            pool: "gunicorn shop.app:app".into(),
            master: 10,
            change: PoolChange::WorkerExited { pid: 13 },
        },
        PoolEvent {
            at_unix_ms: 6,
            pool: "gunicorn shop.app:app".into(),
            master: 10,
            change: PoolChange::Reload {
                replaced: 2,
                workers: 2,
            },
        },
    ];
    snap.agent.events_received = 1234;
    snap.agent.connections.postgres_queries = 35;
    snap.agent.export.api_watchers_too_slow = 2;
    snap
}

/// Through the protobuf encoding and back.
fn wire<M: prost::Message + Default>(message: &M) -> M {
    M::decode(message.encode_to_vec().as_slice()).expect("decodes what it encoded")
}

#[test]
fn a_snapshot_with_one_of_everything_survives_the_wire() {
    let model = snapshot();
    let sent = pb::Snapshot::from(&model);
    assert_eq!(wire(&sent), sent);

    let host = sent.host.as_ref().expect("host");
    assert_eq!((host.cpus, host.cpu_utilization), (2, Some(0.91)));

    let pool = &sent.pools[0];
    assert_eq!(pool.kind(), pb::PoolKind::Gunicorn);
    assert_eq!(
        (pool.master_pid, pool.busy_workers, pool.active_requests),
        (10, 1, 3)
    );
    assert_eq!(pool.accept_queue, Some(5), "the TCP listeners' sum");
    assert_eq!(pool.listeners[1].transport(), pb::Transport::Unix);
    assert_eq!(pool.listeners[1].accept_queue, None);
    assert_eq!(pool.workers[0].state(), pb::WorkerState::Serving);
    assert_eq!(pool.workers[0].db_wait_ns, 4_200);
    let worker_totals = pool.workers[0].totals.as_ref().expect("totals");
    assert_eq!(worker_totals.involuntary_switches, 9);
    assert_eq!(pool.time_share.as_ref().map(|t| t.db_wait), Some(0.7));
    assert_eq!(pool.cgroup, None);

    let route = &sent.routes[0];
    let statuses: Vec<(u32, u64)> = route.statuses.iter().map(|s| (s.status, s.count)).collect();
    assert_eq!(statuses, [(200, 30), (500, 5)]);
    let latency = route.latency.as_ref().expect("latency");
    assert_eq!(latency.upper_bounds_ms.len() + 1, latency.counts.len());
    assert_eq!(latency.counts.iter().sum::<u64>(), 2);
    assert_eq!((route.cpu_ns, route.db_wait_ns), (400, 500));

    let query = &sent.queries[0];
    assert_eq!(query.normalized_text, "SELECT id FROM orders WHERE id = $1");
    assert_eq!(query.errors_by_sqlstate[0].sqlstate, "42P01");
    let site = query.call_sites[0].site.as_ref().expect("site");
    assert_eq!(
        (site.line, site.display.as_str()),
        (88, "shop/orders.py:88 in load_order()")
    );

    match &sent.pool_events[1].change {
        Some(pb::pool_event::Change::Reload(r)) => assert_eq!((r.replaced, r.workers), (2, 2)),
        other => panic!("a reload, not {other:?}"),
    }
    assert!(sent.pool_events[0].description.contains("worker 13 exited"));

    let agent = sent.agent.as_ref().expect("agent stats");
    assert_eq!(agent.events_received, 1234);
    let reasons: Vec<&str> = agent.drops.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(
        reasons.len(),
        model.agent.drops().len(),
        "every loss is on the wire"
    );
    let too_slow = agent
        .drops
        .iter()
        .find(|d| d.reason == "api_watcher_too_slow");
    assert_eq!(too_slow.map(|d| d.count), Some(2));
    assert_eq!(agent.tables.len(), model.agent.tables.entries().len());
}

#[test]
fn a_finding_reads_back_as_it_was_sent() {
    let original = finding();
    let received = wire(&pb::Finding::from(&original));
    assert_eq!(received.kind(), pb::FindingKind::ThunderingHerd);
    assert_eq!(received.severity(), pb::Severity::Critical);
    let back = Finding::try_from(received).expect("a known finding reads back");
    assert_eq!(back, original);
    // What `herdwatch findings --json` prints is the model's JSON, as before the gRPC API.
    assert_eq!(
        serde_json::to_value(&back).expect("json"),
        serde_json::to_value(&original).expect("json")
    );
}

#[test]
fn unknown_enum_values_from_a_newer_peer_are_errors_that_name_them() {
    let mut newer = pb::Finding::from(&finding());
    newer.kind = 42;
    // prost keeps the number: decoding never fails or panics on it.
    let received = wire(&newer);
    assert_eq!(received.kind, 42);
    assert_eq!(
        received.kind(),
        pb::FindingKind::Unspecified,
        "prost's getter defaults"
    );
    let err = Finding::try_from(received).expect_err("kind 42 is not known here");
    assert!(matches!(
        err,
        Error::UnknownEnumValue {
            field: "Finding.kind",
            value: 42
        }
    ));
    assert!(err.to_string().contains("Finding.kind = 42"), "{err}");

    let mut newer = pb::Finding::from(&finding());
    newer.severity = 9;
    assert!(matches!(
        Finding::try_from(newer),
        Err(Error::UnknownEnumValue {
            field: "Finding.severity",
            value: 9
        })
    ));
    // Unspecified (0) is no kind at all.
    assert!(finding_kind(0, "kinds").is_err());
    assert_eq!(
        finding_kind(3, "kinds").ok(),
        Some(FindingKind::ThunderingHerd)
    );
}

#[test]
fn garbage_bytes_are_a_decode_error_not_a_panic() {
    for garbage in [
        &b"\xff\xff\xff\xff"[..],
        b"\x0a\x05ab",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(pb::Snapshot::decode(garbage).is_err(), "{garbage:?}");
    }
}

#[test]
fn an_empty_model_snapshot_converts() {
    let sent = pb::Snapshot::from(&model::Snapshot::default());
    assert!(sent.pools.is_empty() && sent.findings.is_empty());
    assert_eq!(sent.host.and_then(|h| h.cpu_utilization), None);
}
