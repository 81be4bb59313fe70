use super::*;
use crate::model::{Latency, QueryStats, RouteStats};

#[test]
fn renders_histograms_cumulatively_and_escapes_labels() {
    let mut ok = crate::model::Latency::default();
    ok.record(3_000_000);
    ok.record(40_000_000);
    let mut unanswered = crate::model::Latency::default();
    unanswered.record(1_000_000_000);
    let snap = Snapshot {
        routes: vec![RouteStats {
            method: "GET".into(),
            route: "/a\"b".into(),
            requests: 3,
            latency_by_status: [(200, ok)].into(),
            unanswered_latency: unanswered,
            ..Default::default()
        }],
        ..Default::default()
    };
    let text = render(&snap, &PoolNaming::default());
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    let ok_series =
        "http_request_method=\"GET\",http_route=\"/a\\\"b\",http_response_status_code=\"200\"";
    assert!(
        text.contains(&format!(
            "http_server_request_duration_seconds_bucket{{{ok_series},le=\"0.005\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "http_server_request_duration_seconds_sum{{{ok_series}}} 0.043"
    )));
    assert!(
            text.contains("http_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"/a\\\"b\"} 1"),
            "unanswered requests: a series without a status"
        );
    assert!(text.contains("le=\"0.05\"} 2"));
    assert!(text.contains("le=\"+Inf\"} 2"));
}

/// `name{labels}` of every sample line; panics on a line without a value.
fn series(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("a value");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn query(id: &str, normalized: &str, calls: &[u64], errors: &[(&str, u64)]) -> QueryStats {
    let mut latency = Latency::default();
    for ms in calls {
        latency.record(ms * 1_000_000);
    }
    QueryStats {
        id: id.into(),
        summary: "SELECT invoices".into(),
        operation: "SELECT".into(),
        normalized: normalized.into(),
        calls: calls.len() as u64,
        total_ns: latency.total_ns,
        latency: latency.histogram,
        errors_by_sqlstate: errors.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        ..Default::default()
    }
}

/// The example: a uvicorn pool's route is labelled with the pool's OTLP
/// `service.name` as `job` and its `service.instance.id` as `instance`, as the
/// OTLP→Prometheus translation labels the same series; `[otlp.services]` renames both.
#[test]
fn a_pools_series_carry_the_job_and_instance_of_its_otlp_resource() {
    let route = RouteStats {
        pool: "uvicorn billing_async:app".into(),
        method: "GET".into(),
        route: "/invoices/{id}".into(),
        cpu_ns: 1_000_000_000,
        ..Default::default()
    };
    let snap = Snapshot {
        routes: vec![route],
        ..Default::default()
    };
    for (services, job) in [
        (std::collections::BTreeMap::new(), "billing_async"),
        (
            [("billing_async:app".to_string(), "billing".to_string())].into(),
            "billing",
        ),
    ] {
        let naming = PoolNaming::on_host(services, "node-a".into());
        let text = render(&snap, &naming);
        let want = format!(
            "herdwatch_route_cpu_time_seconds_total{{job=\"{job}\",instance=\"node-a/uvicorn billing_async:app\",http_request_method=\"GET\",http_route=\"/invoices/{{id}}\"}} 1"
        );
        assert!(text.lines().any(|l| l == want), "{want}\n{text}");
        assert!(!text.contains("service_name"), "{text}");
    }
}

#[test]
fn query_records_the_detectors_missed_reach_the_drops_family() {
    let mut snap = Snapshot::default();
    snap.agent.detector_records_dropped = 5;
    let text = render(&snap, &PoolNaming::default());
    assert!(
        text.lines()
            .any(|l| l.contains("reason=\"detector_queue_full\"") && l.ends_with(" 5")),
        "{text}"
    );
}

#[test]
fn the_agents_memory_and_table_sizes_are_exported() {
    let mut snap = Snapshot::default();
    snap.agent.resident_bytes = 39_000_000;
    snap.agent.tables.connections = 12;
    let text = render(&snap, &PoolNaming::default());
    assert!(
        text.lines()
            .any(|l| l == "herdwatch_agent_memory_resident_bytes 39000000"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "herdwatch_agent_table_entries{table=\"connections\"} 12"),
        "{text}"
    );
    // Every table has its series, so a dashboard sees a zero rather than a gap.
    let tables = text
        .lines()
        .filter(|l| l.starts_with("herdwatch_agent_table_entries{"))
        .count();
    assert_eq!(tables, snap.agent.tables.entries().len());
}

#[test]
fn series_with_one_label_set_are_merged_never_written_twice() {
    let mut route = RouteStats {
        method: "GET".into(),
        route: "/a".into(),
        cpu_ns: 2_000_000_000,
        ..Default::default()
    };
    let mut ok = Latency::default();
    ok.record(3_000_000);
    route.latency_by_status = [(200, ok)].into();
    let snap = Snapshot {
        // The same route seen twice outside any pool: its labels are identical.
        routes: vec![route.clone(), route],
        queries: vec![
            query(
                "00000000000000a1",
                "select count(*) from invoices where id = ?",
                &[3, 40],
                &[("57014", 2)],
            ),
            query(
                "00000000000000a2",
                "select id from invoices where id = ?",
                &[1, 1, 700],
                &[("57014", 1), ("23505", 4)],
            ),
            query("00000000000000a3", "select 1 from invoices", &[60_000], &[]),
        ],
        ..Default::default()
    };
    let text = render(&snap, &PoolNaming::default());
    let all = series(&text);
    let mut seen = std::collections::HashSet::new();
    for (key, _) in &all {
        assert!(seen.insert(key.clone()), "{key} written twice:\n{text}");
    }
    let value = |key: &str| {
        all.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
    };
    let db = "db_operation_name=\"SELECT\",db_query_summary=\"SELECT invoices\",db_system_name=\"postgresql\"";
    // Labels are written in the order given; find the series whatever the order.
    let db_count = all
        .iter()
        .find(|(k, _)| k.starts_with("db_client_operation_duration_seconds_count{"))
        .map(|(_, v)| *v);
    assert_eq!(db_count, Some(6.0), "{db}\n{text}");
    let over = all
        .iter()
        .find(|(k, _)| {
            k.starts_with("db_client_operation_duration_seconds_bucket{") && k.contains("le=\"30\"")
        })
        .map(|(_, v)| *v);
    assert_eq!(over, Some(5.0), "the 60 s call is only in +Inf: {text}");
    let sum = all
        .iter()
        .find(|(k, _)| k.starts_with("db_client_operation_duration_seconds_sum{"))
        .map(|(_, v)| *v)
        .expect("sum");
    assert!((sum - 60.745).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            "herdwatch_db_client_errors_total{db_system_name=\"postgresql\",db_query_summary=\"SELECT invoices\",db_response_status_code=\"57014\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            "herdwatch_db_client_errors_total{db_system_name=\"postgresql\",db_query_summary=\"SELECT invoices\",db_response_status_code=\"23505\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            "herdwatch_route_cpu_time_seconds_total{http_request_method=\"GET\",http_route=\"/a\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            "http_server_request_duration_seconds_count{http_request_method=\"GET\",http_route=\"/a\",http_response_status_code=\"200\"}"
        ),
        2.0
    );
}
