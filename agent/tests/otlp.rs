//! OTLP metrics and spans from a real agent tracing a real gunicorn app and PostgreSQL, received by
//! in-test receivers built on `opentelemetry-proto`'s tonic server types (gRPC) and an HTTP
//! handler decoding the same protobufs: names, attributes and counts equal to the load, and
//! every metric the Prometheus endpoint shows has the same name on the OTLP path.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{postgres::Postgres, *};
use herdwatch::Config;
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{Metric, ResourceMetrics, metric::Data},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

/// Spans received, and the `service.name` of each one's resource (same order).
#[derive(Clone, Default)]
struct ReceivedSpans(Arc<Mutex<Vec<Span>>>, Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for ReceivedSpans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl ReceivedSpans {
    fn keep(&self, req: ExportTraceServiceRequest) {
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            let spans: Vec<Span> = rs.scope_spans.into_iter().flat_map(|ss| ss.spans).collect();
            self.1
                .lock()
                .expect("lock")
                .extend(std::iter::repeat_n(service, spans.len()));
            self.0.lock().expect("lock").extend(spans);
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts a gRPC receiver on `port`.
fn grpc_receiver(port: u16, received: Received, spans: ReceivedSpans) {
    tokio::spawn(async move {
        let addr = format!("127.0.0.1:{port}").parse().expect("addr");
        let _ = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(received))
            .add_service(TraceServiceServer::new(spans))
            .serve(addr)
            .await;
    });
}

/// Starts an HTTP/protobuf receiver on `port` (POST /v1/metrics and /v1/traces).
fn http_receiver(port: u16, received: Received, spans: ReceivedSpans) {
    tokio::spawn(async move {
        let traces = axum::routing::post(move |body: axum::body::Bytes| {
            let spans = spans.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        spans.keep(req);
                        (
                            axum::http::StatusCode::OK,
                            ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec(),
                        )
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        });
        let app = axum::Router::new().route("/v1/traces", traces).route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(req) => {
                            received.0.lock().expect("lock").push(req);
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                ExportMetricsServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportMetricsServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let _ = axum::serve(listener, app).await;
    });
}

fn get(port: u16, path: &str) -> String {
    http_get(port, path)
}

fn attr(attrs: &[KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|a| a.key == key)
        .map(|a| text(&a.value))
        .unwrap_or_default()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Each resource's latest export (the agent and every pool export on their own), by
/// `service.instance.id` or else `service.name`.
fn latest_by_resource(received: &Received) -> BTreeMap<String, ResourceMetrics> {
    let mut latest = BTreeMap::new();
    for req in received.0.lock().expect("lock").iter() {
        for rm in &req.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            let instance = attr(&attrs, "service.instance.id");
            let key = if instance.is_empty() {
                attr(&attrs, "service.name")
            } else {
                instance
            };
            latest.insert(key, rm.clone());
        }
    }
    latest
}

/// The latest metrics of every resource, merged.
fn latest_metrics(received: &Received) -> Vec<Metric> {
    latest_by_resource(received)
        .values()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| sm.metrics.clone())
        .collect()
}

/// Histogram count of `name` over points whose attribute `key` equals `value`.
/// Observations in histogram `name`'s points that carry every one of `attrs`.
fn histogram_count(metrics: &[Metric], name: &str, attrs: &[(&str, &str)]) -> u64 {
    metrics
        .iter()
        .filter(|m| m.name == name)
        .filter_map(|m| match &m.data {
            Some(Data::Histogram(h)) => Some(h),
            _ => None,
        })
        .flat_map(|h| &h.data_points)
        .filter(|p| {
            attrs.iter().all(|(key, value)| {
                p.attributes
                    .iter()
                    .any(|a| a.key == *key && text(&a.value) == *value)
            })
        })
        .map(|p| p.count)
        .sum()
}

/// The OTLP→Prometheus name translation, written here independently of the agent's: unit
/// suffix from the metric's own unit, `_total` for monotonic sums.
fn prometheus_name(m: &Metric) -> String {
    let mut name: String = m
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let gauge = matches!(m.data, Some(Data::Gauge(_)));
    let suffix = match m.unit.as_str() {
        "s" => "seconds",
        "By" => "bytes",
        "1" if gauge => "ratio",
        _ => "",
    };
    if !suffix.is_empty() && !name.ends_with(suffix) {
        name = format!("{name}_{suffix}");
    }
    if matches!(&m.data, Some(Data::Sum(s)) if s.is_monotonic) && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// Metric families with at least one sample on `/metrics`.
fn prometheus_families(port: u16) -> BTreeSet<String> {
    let body = get(port, "/metrics");
    let mut families = BTreeSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| body.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(name);
        if !family.contains(':') && !family.starts_with("HTTP/") {
            families.insert(family.to_string());
        }
    }
    families
}

type Labels = BTreeMap<String, String>;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

/// The series the OTLP→Prometheus translation makes of the latest exports, written here from
/// the OpenTelemetry spec ("Prometheus and OpenMetrics Compatibility"), independently of the
/// agent: a resource's `service.name` (behind `service.namespace/` when set) becomes `job`,
/// its `service.instance.id` `instance`, every data-point attribute a label with `.` → `_`.
fn translated_series(received: &Received) -> BTreeSet<(String, Labels)> {
    let mut series = BTreeSet::new();
    for rm in latest_by_resource(received).values() {
        let attrs = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.clone())
            .unwrap_or_default();
        let mut target = Labels::new();
        let (namespace, name) = (
            attr(&attrs, "service.namespace"),
            attr(&attrs, "service.name"),
        );
        let job = if namespace.is_empty() {
            name
        } else {
            format!("{namespace}/{name}")
        };
        target.insert("job".into(), job);
        let instance = attr(&attrs, "service.instance.id");
        if !instance.is_empty() {
            target.insert("instance".into(), instance);
        }
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let points: Vec<&[KeyValue]> = match &m.data {
                Some(Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| &p.attributes[..]).collect()
                }
                Some(Data::Sum(s)) => s.data_points.iter().map(|p| &p.attributes[..]).collect(),
                Some(Data::Gauge(g)) => g.data_points.iter().map(|p| &p.attributes[..]).collect(),
                _ => Vec::new(),
            };
            for point in points {
                let mut labels = target.clone();
                for a in point {
                    labels.insert(a.key.replace('.', "_"), text(&a.value));
                }
                series.insert((prometheus_name(m), labels));
            }
        }
    }
    series
}

/// The series `/metrics` shows as Prometheus stores them with `honor_labels: true` in a scrape
/// job named `herdwatch`: a series without `job` takes the scrape job's. Histograms by family
/// (no `le`, no `_bucket`/`_sum`/`_count`).
fn exposed_series(port: u16) -> BTreeSet<(String, Labels)> {
    let body = get(port, "/metrics");
    let mut series = BTreeSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((name, rest)) = line.split_once('{') else {
            if let Some((name, _)) = line.split_once(' ')
                && !name.starts_with("HTTP/")
                && !name.contains(':')
            {
                let labels = Labels::from([("job".into(), "herdwatch".into())]);
                series.insert((name.to_string(), labels));
            }
            continue;
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| body.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(name);
        let mut labels = parse_labels(rest);
        labels.remove("le");
        labels
            .entry("job".into())
            .or_insert_with(|| "herdwatch".into());
        series.insert((family.to_string(), labels));
    }
    series
}

/// `k="v",…}` of an exposition line, with the format's escapes.
fn parse_labels(text: &str) -> Labels {
    let mut labels = Labels::new();
    let mut chars = text.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || key.starts_with('}') {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "{text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
    }
}

/// The documented differences: the agent's series get `instance` from the scrape target (an
/// address) on one path and none on the other, and OTLP's query histogram also splits failed
/// queries by `db.response.status_code` (semantic conventions) where `/metrics` does not.
fn comparable(series: BTreeSet<(String, Labels)>) -> BTreeSet<(String, Labels)> {
    series
        .into_iter()
        .map(|(family, mut labels)| {
            if labels.get("job").is_some_and(|j| j == "herdwatch") {
                labels.remove("instance");
            }
            if family == "db_client_operation_duration_seconds" {
                labels.remove("db_response_status_code");
            }
            (family, labels)
        })
        .collect()
}

/// Every series, with the labels dashboards and rules select on, is the same on `/metrics` and
/// on OTLP after the translation; the pool's exactly, `instance` included. Values move between
/// an export and a scrape, label sets settle: compare until they agree or 15 s pass.
fn same_series_on_both_paths(received: &Received, metrics_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let translated = translated_series(received);
        let exposed = exposed_series(metrics_port);
        let pool = |s: &BTreeSet<(String, Labels)>| -> BTreeSet<(String, Labels)> {
            s.iter()
                .filter(|(_, l)| l.get("job").is_some_and(|j| j == "shop.app"))
                .cloned()
                .collect()
        };
        let (pool_otlp, pool_scraped) = (pool(&translated), pool(&exposed));
        let (otlp, scraped) = (comparable(translated), comparable(exposed));
        if pool_otlp == pool_scraped && otlp == scraped {
            assert!(
                pool_scraped.len() >= 8,
                "the pool's workers, CPU and routes: {pool_scraped:#?}"
            );
            // `<host>/<pool name>`; the name gains ` on <address>` when another shop.app pool
            // runs on this host (twins told apart).
            let instance = format!("{}/gunicorn shop.app:app", hostname());
            assert!(
                pool_scraped
                    .iter()
                    .all(|(_, l)| l.get("instance").is_some_and(|i| i.starts_with(&instance))),
                "{pool_scraped:#?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "label sets differ.\nthe pool's only on OTLP: {:#?}\nonly on /metrics: {:#?}\n\
             all only on OTLP: {:#?}\nonly on /metrics: {:#?}",
            pool_otlp.difference(&pool_scraped).collect::<Vec<_>>(),
            pool_scraped.difference(&pool_otlp).collect::<Vec<_>>(),
            otlp.difference(&scraped).collect::<Vec<_>>(),
            scraped.difference(&otlp).collect::<Vec<_>>(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// PostgreSQL with the shop schema and the shop under gunicorn with `workers` workers.
fn shop(workers: u32) -> (Postgres, Proc, u16) {
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let app = gunicorn_shop(workers, port, Some(&pg.tcp_dsn()));
    wait_http(port);
    (pg, app, port)
}

fn run(protocol: &str) {
    let test = format!("otlp::metrics_over_{}", protocol.replace('/', "_"));
    if !kernel_available(&test) {
        return;
    }
    let (_pg, app, app_port) = shop(2);
    let app_master = app.pid();
    let (receiver_port, metrics_port) = (free_port(), free_port());
    let mut config = Config {
        interval_ms: 500,
        api_socket: None,
        prometheus_listen: Some(format!("127.0.0.1:{metrics_port}")),
        state_dir: None,
        ..Config::default()
    };
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{receiver_port}"));
    config.otlp.protocol = Some(protocol.to_string());
    config.otlp.interval_ms = 1000;
    config.otlp.trace_ratio = 1.0;
    let received = Received::default();
    let spans = ReceivedSpans::default();
    runtime().block_on(async {
        if protocol == "grpc" {
            grpc_receiver(receiver_port, received.clone(), spans.clone());
        } else {
            http_receiver(receiver_port, received.clone(), spans.clone());
        }
        let agent = start_agent_with(config).await;
        let (orders, broken) = (20u64, 5u64);
        tokio::task::spawn_blocking(move || {
            for i in 0..orders {
                assert!(get(app_port, &format!("/orders/{i}")).starts_with("HTTP/1.1 200"));
            }
            for _ in 0..broken {
                assert!(get(app_port, "/broken").starts_with("HTTP/1.1 500"));
            }
        })
        .await
        .expect("load");
        let deadline = Instant::now() + Duration::from_secs(60);
        // The pool's and the agent's resources export on their own clocks; wait for both.
        let errors_42p01 = |metrics: &[Metric]| {
            metrics.iter().any(|m| {
                m.name == "herdwatch.db.client.errors"
                    && matches!(&m.data, Some(Data::Sum(s)) if s.data_points.iter().any(|p| {
                        p.attributes.iter().any(|a| a.key == "db.response.status_code" && text(&a.value) == "42P01")
                    }))
            })
        };
        let broken_500 = |metrics: &[Metric]| {
            histogram_count(
                metrics,
                "http.server.request.duration",
                &[("http.route", "/broken"), ("http.response.status_code", "500")],
            )
        };
        loop {
            let m = latest_metrics(&received);
            let http = histogram_count(&m, "http.server.request.duration", &[("http.route", "/orders/{id}")]);
            let db = histogram_count(&m, "db.client.operation.duration", &[("db.query.summary", "SELECT orders")]);
            let (status, errors) = (broken_500(&m), errors_42p01(&m));
            if http == orders && db == orders && status == broken && errors {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "OTLP never showed {orders} requests and queries (http {http}, db {db}), {broken} \
                 answered 500 ({status}: status codes ride on the HTTP histogram) and SQLSTATE \
                 42P01 counted ({errors}); {} exports",
                received.0.lock().expect("lock").len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let metrics = latest_metrics(&received);
        // Resources: the agent is one service, the gunicorn pool another, named by its app
        // module and carrying its master process; the pool's requests are recorded there.
        let resources = latest_by_resource(&received);
        let agent_resource = resources
            .values()
            .find(|rm| rm.resource.as_ref().is_some_and(|r| attr(&r.attributes, "service.name") == "herdwatch"))
            .and_then(|rm| rm.resource.clone())
            .expect("the agent's own resource");
        assert_eq!(attr(&agent_resource.attributes, "process.pid"), std::process::id().to_string());
        assert_eq!(attr(&agent_resource.attributes, "service.instance.id"), hostname(), "one agent per host");
        for key in ["host.name", "host.id"] {
            assert!(!attr(&agent_resource.attributes, key).is_empty(), "agent resource lacks {key}");
        }
        // This test's pool by its master (another shop.app may run on the host meanwhile).
        let pool = resources
            .values()
            .find(|rm| rm.resource.as_ref().is_some_and(|r| attr(&r.attributes, "process.pid") == app_master.to_string()))
            .expect("a resource for the gunicorn pool, with its master's pid");
        let pool_attrs = &pool.resource.as_ref().expect("resource").attributes;
        assert_eq!(attr(pool_attrs, "service.name"), "shop.app", "named by its app module");
        assert!(attr(pool_attrs, "process.command_args").contains("shop.app:app"), "{pool_attrs:?}");
        assert!(!attr(pool_attrs, "host.name").is_empty());
        let pool_metrics: Vec<Metric> = pool.scope_metrics.iter().flat_map(|sm| sm.metrics.clone()).collect();
        assert_eq!(
            histogram_count(&pool_metrics, "http.server.request.duration", &[("http.route", "/orders/{id}")]),
            orders,
            "the pool's requests are the pool service's"
        );
        for name in ["process.cpu.time", "herdwatch.worker.busy", "herdwatch.route.cpu.time"] {
            assert!(pool_metrics.iter().any(|m| m.name == name), "{name} on the pool's resource");
        }
        let cpu: BTreeMap<String, f64> = pool_metrics
            .iter()
            .filter(|m| m.name == "process.cpu.time")
            .filter_map(|m| match &m.data {
                Some(Data::Sum(s)) => Some(s),
                _ => None,
            })
            .flat_map(|s| &s.data_points)
            .map(|p| {
                let v = match p.value {
                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v)) => v,
                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => v as f64,
                    None => 0.0,
                };
                (attr(&p.attributes, "cpu.mode"), v)
            })
            .collect();
        assert_eq!(cpu.keys().map(String::as_str).collect::<Vec<_>>(), ["system", "user"], "{cpu:?}");
        assert!(cpu.values().sum::<f64>() > 0.0, "the pool used CPU serving requests: {cpu:?}");
        // Spans: a SERVER span per request, a CLIENT child per query it issued.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = spans
                .0
                .lock()
                .expect("lock")
                .iter()
                .filter(|s| s.kind == SpanKind::Server as i32)
                .count() as u64;
            if n >= orders + broken {
                break;
            }
            assert!(Instant::now() < deadline, "only {n} SERVER spans arrived");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let all = spans.0.lock().expect("lock").clone();
        let servers: Vec<&Span> = all
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32 && attr(&s.attributes, "http.route") == "/orders/{id}")
            .collect();
        assert_eq!(servers.len() as u64, orders, "one SERVER span per request");
        let services = spans.1.lock().expect("lock").clone();
        for (span, service) in all.iter().zip(&services) {
            if span.kind == SpanKind::Server as i32 && attr(&span.attributes, "http.route") == "/orders/{id}" {
                assert_eq!(service, "shop.app", "a request's span belongs to the pool's service");
            }
        }
        for server in &servers {
            assert_eq!(server.name, "GET /orders/{id}");
            assert_eq!(attr(&server.attributes, "http.response.status_code"), "200");
            assert!(server.attributes.iter().any(|a| a.key == "herdwatch.cpu.time"));
            let children: Vec<&Span> = all
                .iter()
                .filter(|c| c.parent_span_id == server.span_id && c.trace_id == server.trace_id)
                .collect();
            assert_eq!(children.len(), 1, "one query per /orders request");
            let child = children[0];
            assert_eq!(child.kind, SpanKind::Client as i32);
            assert_eq!(attr(&child.attributes, "db.system.name"), "postgresql");
            assert_eq!(attr(&child.attributes, "db.query.summary"), "SELECT orders");
            assert!(child.start_time_unix_nano >= server.start_time_unix_nano);
            assert!(child.end_time_unix_nano <= server.end_time_unix_nano);
            assert!(
                !child.attributes.iter().any(|a| text(&a.value).contains("orders WHERE id =")),
                "no query text on spans"
            );
        }
        let failed = all
            .iter()
            .filter(|s| attr(&s.attributes, "db.response.status_code") == "42P01")
            .count() as u64;
        assert_eq!(failed, broken, "each failing query's span carries its SQLSTATE");
        // One set of dashboards and rules for both paths: the same names.
        let otlp: BTreeSet<String> = metrics.iter().map(prometheus_name).collect();
        let scraped = prometheus_families(metrics_port);
        eprintln!("OTLP (translated): {otlp:?}\nPrometheus: {scraped:?}");
        assert_eq!(otlp, scraped, "OTLP and /metrics disagree on names");
        // And on the labels: the pool's series are selected by the same label set on both
        // paths, the agent's too (but for `instance`, the scrape target's address there).
        same_series_on_both_paths(&received, metrics_port);
        // And on the status code of the HTTP histogram, with the pool that served it.
        let body = get(metrics_port, "/metrics");
        // The pool's instance is `<host>/<pool name>`; the name gains ` on <address>` when
        // another shop.app pool runs on this host (twins told apart).
        let instances = [
            format!("{}/gunicorn shop.app:app", hostname()),
            format!("{}/gunicorn shop.app:app on 127.0.0.1:{app_port}", hostname()),
        ];
        let broken_series: Vec<&str> = body
            .lines()
            .filter(|l| {
                instances.iter().any(|i| {
                    l.starts_with(&format!(
                        "http_server_request_duration_seconds_count{{job=\"shop.app\",instance=\"{i}\",http_request_method=\"GET\",http_route=\"/broken\",http_response_status_code=\"500\"}} "
                    ))
                })
            })
            .collect();
        assert_eq!(
            broken_series
                .iter()
                .map(|l| l.rsplit_once(' ').map(|(_, v)| v))
                .collect::<Vec<_>>(),
            [Some(broken.to_string().as_str())],
            "/metrics' /broken series: {:#?}",
            body.lines().filter(|l| l.contains("/broken")).collect::<Vec<_>>()
        );
        drop(agent);
    });
}

#[test]
fn metrics_over_grpc() {
    run("grpc");
}

#[test]
fn metrics_over_http_protobuf() {
    run("http/protobuf");
}

/// Collector down for the first part of the run: the agent keeps tracing (requests counted),
/// nothing panics, and once a receiver appears on the endpoint, metrics flow.
#[test]
fn collector_down_then_up() {
    if !kernel_available("otlp::collector_down_then_up") {
        return;
    }
    let (_pg, _app, app_port) = shop(2);
    let receiver_port = free_port();
    let mut config = Config {
        interval_ms: 500,
        api_socket: None,
        prometheus_listen: None,
        state_dir: None,
        ..Config::default()
    };
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{receiver_port}"));
    config.otlp.interval_ms = 1000;
    config.otlp.timeout_ms = 1000;
    // Every request a span, so span exports fail (and are counted) while the collector is down.
    config.otlp.trace_ratio = 1.0;
    let received = Received::default();
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let send = |n: u64| {
            tokio::task::spawn_blocking(move || {
                for i in 0..n {
                    assert!(get(app_port, &format!("/orders/{i}")).starts_with("HTTP/1.1 200"));
                }
            })
        };
        send(30).await.expect("load");
        // Several export attempts fail meanwhile; tracing goes on.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        let traced: u64 = snap
            .routes
            .iter()
            .filter(|r| r.route == "/orders/{id}")
            .map(|r| r.requests)
            .sum();
        assert_eq!(traced, 30, "tracing continues with the collector down");
        assert!(received.0.lock().expect("lock").is_empty());
        // What could not be delivered is counted where every loss is.
        let drops: std::collections::HashMap<_, _> = snap.agent.drops().into_iter().collect();
        assert!(
            drops["otlp_metric_exports_failed"] >= 1 && drops["otlp_spans_failed"] >= 1,
            "failed OTLP exports are counted as drops: {drops:?}"
        );
        assert_eq!(drops["otlp_span_queue_full"], 0, "30 spans fit the queue");
        // The collector comes up: data flows, with everything counted so far.
        grpc_receiver(receiver_port, received.clone(), ReceivedSpans::default());
        send(10).await.expect("load");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = latest_metrics(&received);
            let n = histogram_count(
                &m,
                "http.server.request.duration",
                &[("http.route", "/orders/{id}")],
            );
            if n == 40 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never flowed after the collector came up ({n} requests seen)"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(agent);
    });
}

/// Peak RSS of the agent (`herdwatch run`, a child process) under the same load with OTLP
/// off and with the collector down for the whole run, side by side. `cargo xtask bench
/// otlp-down` runs it; it prints the figures and checks the collector-down run stays within
/// a bound of the OTLP-off one (queues are bounded, failed exports are dropped).
#[test]
#[ignore = "benchmark: cargo xtask bench otlp-down"]
fn collector_down_peak_rss() {
    if !kernel_available("otlp::collector_down_peak_rss") {
        return;
    }
    let (_pg, _app, app_port) = shop(4);
    let seconds: u64 = std::env::var("HERDWATCH_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut peaks = Vec::new();
    for (label, endpoint) in [
        ("otlp off", None),
        (
            "collector down",
            Some(format!("http://127.0.0.1:{}", free_port())),
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herdwatch"));
        cmd.args(["run", "--json", "--interval-ms", "500"])
            .env("HERDWATCH_API_SOCKET", "")
            .env("HERDWATCH_PROMETHEUS_LISTEN", "")
            .stdout(std::process::Stdio::null());
        match &endpoint {
            Some(e) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            None => cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
        };
        let mut agent = cmd.spawn().expect("herdwatch runs");
        std::thread::sleep(Duration::from_secs(3));
        let load = common::load::Load::start(
            app_port,
            &["GET /orders/7", "GET /customers/3", "GET /broken"],
            4,
            Duration::ZERO,
        );
        std::thread::sleep(Duration::from_secs(seconds));
        let peak_kib = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .expect("VmHWM of the agent");
        let counts = load.stop();
        let requests: u64 = counts.values().flat_map(|s| s.values()).sum();
        let _ = agent.kill();
        let _ = agent.wait();
        println!(
            "{label:>15}: peak RSS {:.1} MiB over {seconds} s, {requests} requests",
            peak_kib as f64 / 1024.0
        );
        peaks.push(peak_kib as f64);
    }
    println!(
        "collector down / otlp off peak RSS ratio: {:.2}",
        peaks[1] / peaks[0]
    );
    assert!(
        peaks[1] < peaks[0] + 128.0 * 1024.0,
        "collector down must not grow memory without bound"
    );
}

/// The standard variables and the downward API shape the agent's own resource, and what the
/// user sets wins over what the agent finds (here `host.name`). `herdwatch run` as a child
/// process, so its environment is its own.
#[test]
fn standard_variables_shape_the_agent_resource() {
    if !kernel_available("otlp::standard_variables_shape_the_agent_resource") {
        return;
    }
    let receiver_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("herdwatch.toml");
    std::fs::write(&config, "[otlp]\ninterval_ms = 1000\n").expect("config");
    let received = Received::default();
    runtime().block_on(async {
        grpc_receiver(receiver_port, received.clone(), ReceivedSpans::default());
        let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_herdwatch"))
            .arg("--config")
            .arg(&config)
            .args(["run", "--json", "--interval-ms", "500"])
            .env("HERDWATCH_API_SOCKET", "")
            .env("HERDWATCH_PROMETHEUS_LISTEN", "")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{receiver_port}"),
            )
            .env("OTEL_SERVICE_NAME", "edge-agent")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=prod,host.name=from-env",
            )
            .env("K8S_NODE_NAME", "node-a")
            .env("K8S_POD_NAME", "herdwatch-x7k2p")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("herdwatch runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        let resource = loop {
            let found = latest_by_resource(&received).into_values().find_map(|rm| {
                rm.resource
                    .filter(|r| attr(&r.attributes, "service.name") == "edge-agent")
            });
            if let Some(r) = found {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics from the agent's resource"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let _ = agent.kill();
        let _ = agent.wait();
        let get = |k: &str| attr(&resource.attributes, k);
        assert_eq!(get("deployment.environment.name"), "prod");
        assert_eq!(get("host.name"), "from-env", "the user's value wins");
        assert_eq!(get("k8s.node.name"), "node-a");
        assert_eq!(get("k8s.pod.name"), "herdwatch-x7k2p");
        assert_eq!(get("process.pid"), agent.id().to_string());
        assert!(!get("host.id").is_empty());
    });
}
