//! Alerting end to end, with real parts: the agent's `/metrics` scraped by Debian's Prometheus
//! loading the shipped rules (with `for:` shortened), alerts routed by Debian's Alertmanager to
//! a webhook receiver in this test. The starvation replay must make HerdwatchStarvation arrive
//! with the route and query labels and the root-cause description, and resolve after the load
//! stops. The same run exports OTLP to an in-test receiver: the finding's occurrence and
//! resolution must arrive as OTLP log records.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{checkout, load::Load, postgres::Postgres, *};
use herdwatch::Config;
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::any_value,
    logs::v1::LogRecord,
};

#[derive(Clone, Default)]
struct ReceivedLogs(Arc<Mutex<Vec<LogRecord>>>);

#[tonic::async_trait]
impl LogsService for ReceivedLogs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let records = request
            .into_inner()
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records);
        self.0.lock().expect("lock").extend(records);
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

fn body(r: &LogRecord) -> String {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

fn has_attr(r: &LogRecord, key: &str, value: &str) -> bool {
    r.attributes.iter().any(|a| {
        a.key == key
            && matches!(a.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::StringValue(s)) if s == value)
    })
}

type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// Accepts Alertmanager's webhook POSTs and keeps their JSON bodies.
fn webhook_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received: Received = Arc::default();
    let store = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(json) = serde_json::from_slice(&body)
            {
                store.lock().expect("lock").push(json);
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, received)
}

/// The shipped rules with every `for:` shortened, so the test need not wait minutes.
fn rules_for_test(dir: &Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/alerts/herdwatch.rules.yml"),
    )
    .expect("rules");
    let text: String = shipped
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 2s\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = dir.join("rules.yml");
    std::fs::write(&path, text).expect("rules copy");
    path
}

fn alert<'a>(
    received: &'a [serde_json::Value],
    name: &str,
    status: &str,
) -> Option<&'a serde_json::Value> {
    received
        .iter()
        .flat_map(|n| n["alerts"].as_array().into_iter().flatten())
        .find(|a| a["labels"]["alertname"] == name && a["status"] == status)
}

fn wait_alert(
    received: &Received,
    name: &str,
    status: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = alert(&received.lock().expect("lock"), name, status) {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {status} {name} at the webhook; received: {:#?}",
            received.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn starvation_alert_fires_through_alertmanager_and_resolves() {
    if !kernel_available("alerting::starvation_alert_fires_through_alertmanager_and_resolves") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (hook_port, received) = webhook_receiver();
    let (am_port, prom_port, metrics_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        format!(
            "route:\n  receiver: test\n  group_by: [alertname, finding_id]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/alerts\n        \
             send_resolved: true\n"
        ),
    )
    .expect("alertmanager.yml");
    let rules = rules_for_test(dir.path());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: herdwatch\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            rules.display()
        ),
    )
    .expect("prometheus.yml");
    let _alertmanager = Proc::spawn(
        Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}/alertmanager.yml",
                dir.path().display()
            ))
            .arg(format!("--storage.path={}/am", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address="),
    );
    let _prometheus = prometheus(dir.path(), prom_port);
    wait_http(am_port);
    wait_http(prom_port);

    let pg = Postgres::start();
    checkout::schema(&pg, 1_500_000);
    let version = dir.path().join("version");
    std::fs::write(&version, "v1").expect("version");
    let port = free_port();
    let app = checkout::gunicorn(4, port, &pg.tcp_dsn(), &version, &[]);
    wait_http(port);
    let otlp_port = free_port();
    let mut config = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: Some(format!("127.0.0.1:{metrics_port}")),
        state_dir: None,
        ..Config::default()
    };
    config.otlp.endpoint = Some(format!("http://127.0.0.1:{otlp_port}"));
    config.otlp.interval_ms = 2000;
    let logs = ReceivedLogs::default();
    runtime().block_on(async {
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                let addr = format!("127.0.0.1:{otlp_port}").parse().expect("addr");
                let _ = tonic::transport::Server::builder()
                    .add_service(LogsServiceServer::new(logs))
                    .serve(addr)
                    .await;
            });
        }
        let agent = start_agent_with(config).await;
        pool_ready(&agent, app.pid(), 4).await;
        let load = Load::start(port, &checkout::LOAD, 10, Duration::from_millis(50));
        tokio::time::sleep(Duration::from_secs(15)).await;
        std::fs::write(&version, "v2").expect("version");
        // SAFETY: signalling the gunicorn master this test started.
        assert_eq!(unsafe { libc::kill(app.pid() as i32, libc::SIGHUP) }, 0);
        let deployed = Instant::now();
        let firing = tokio::task::spawn_blocking({
            let received = received.clone();
            move || {
                wait_alert(
                    &received,
                    "HerdwatchStarvation",
                    "firing",
                    Duration::from_secs(150),
                )
            }
        })
        .await
        .expect("waiter");
        eprintln!(
            "HerdwatchStarvation at the webhook {:.1} s after the deploy:\n{firing:#}",
            deployed.elapsed().as_secs_f64()
        );
        assert_eq!(
            firing["labels"]["route"], "POST /api/checkout",
            "{firing:#}"
        );
        assert_eq!(firing["labels"]["severity"], "critical");
        // The pool by its service name, the `job` of its series (docs/metrics.md), and the
        // dashboard that shows it.
        assert_eq!(firing["labels"]["pool"], "checkout.app", "{firing:#}");
        assert_eq!(
            firing["annotations"]["dashboard_url"],
            "/d/herdwatch-pool-detail?var-pool=checkout.app"
        );
        assert!(
            firing["labels"]["query"]
                .as_str()
                .is_some_and(|q| q.contains("order_lines")),
            "{firing:#}"
        );
        let description = firing["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("workers of gunicorn checkout.app:app were busy")
                && description.contains("POST /api/checkout"),
            "the root cause reaches the receiver: {description}"
        );
        assert!(
            firing["annotations"]["runbook_url"]
                .as_str()
                .is_some_and(|u| u.ends_with("runbooks/starvation.md"))
        );
        let counts = load.stop();
        eprintln!("load: {counts:?}");
        let resolved = tokio::task::spawn_blocking({
            let received = received.clone();
            move || {
                wait_alert(
                    &received,
                    "HerdwatchStarvation",
                    "resolved",
                    Duration::from_secs(120),
                )
            }
        })
        .await
        .expect("waiter");
        eprintln!("resolved: {}", resolved["endsAt"]);
        // The finding's occurrence and resolution as OTLP log records.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = logs.0.lock().expect("lock").clone();
            let occurred = records.iter().find(|r| {
                r.event_name == "herdwatch.finding.occurred"
                    && has_attr(r, "finding.kind", "starvation")
            });
            let resolved = records.iter().any(|r| {
                r.event_name == "herdwatch.finding.resolved"
                    && has_attr(r, "finding.kind", "starvation")
            });
            if let Some(o) = occurred
                && resolved
            {
                assert_eq!(o.severity_text, "ERROR");
                assert!(body(o).contains("POST /api/checkout"), "{}", body(o));
                assert!(has_attr(o, "http.route", "POST /api/checkout"));
                // The pool under the service name its metrics carry (the `job`).
                assert!(has_attr(o, "service.name", "checkout.app"), "{o:#?}");
                assert!(o.attributes.iter().any(|a| a.key == "evidence.busy_share"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no starvation occurred+resolved log records; got {:#?}",
                records
                    .iter()
                    .map(|r| (&r.event_name, body(r)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(agent);
    });
}
