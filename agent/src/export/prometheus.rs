//! The Prometheus endpoint: `/metrics` in the text exposition format, rendered from the latest
//! snapshot with the names `names.rs` defines (OTLP→Prometheus translation), so one set of
//! dashboards and rules serves the OTLP and the scrape path.
use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use tokio::sync::watch;

use super::names::{self, Kind, MetricDef, prometheus_name};
use crate::{
    error::{Error, Result},
    pipeline::{
        Snapshot,
        aggregates::{Histogram, LATENCY_BUCKETS_MS},
    },
};

/// Serves `/metrics` on `addr` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    latest: watch::Receiver<Arc<Snapshot>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("binding the Prometheus endpoint on {addr} (set prometheus_listen)"),
            source,
        })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let snap = latest.borrow().clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&snap),
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("Prometheus endpoint stopped: {e}");
        }
    }))
}

/// A metric family being written: HELP and TYPE once, then samples.
struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, def: &MetricDef) -> Self {
        let name = prometheus_name(def);
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", def.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        write_labels(self.out, labels);
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram, sum_ns: u64) {
        let mut cumulative = 0u64;
        for (i, bound_ms) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += h.0.get(i).copied().unwrap_or(0);
            let le = number(*bound_ms as f64 / 1000.0);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample("_bucket", &with_le, cumulative as f64);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let count: u64 = h.0.iter().sum();
        with_le.push(("le", "+Inf"));
        self.sample("_bucket", &with_le, count as f64);
        self.sample("_sum", labels, sum_ns as f64 / 1e9);
        self.sample("_count", labels, count as f64);
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}=\"", names::sanitize(k));
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A route's labels: the pool that served it (`service_name`, as on the pool's gauges; none
/// outside a pool), method and route.
fn route_labels(r: &crate::pipeline::aggregates::RouteStats) -> Vec<(&'static str, &str)> {
    let mut labels = Vec::with_capacity(3);
    if !r.pool.is_empty() {
        labels.push(("service.name", r.pool.as_str()));
    }
    labels.push(("http.request.method", r.method.as_str()));
    labels.push(("http.route", r.route.as_str()));
    labels
}

/// The whole exposition for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    {
        let mut f = Family::new(&mut out, &names::HTTP_SERVER_DURATION);
        for r in &s.routes {
            // One series per status, as OTLP's histogram has; unanswered requests without.
            for (status, latency) in &r.latency_by_status {
                let status = status.to_string();
                let mut labels = route_labels(r);
                labels.push(("http.response.status_code", &status));
                f.histogram(&labels, &latency.histogram, latency.total_ns);
            }
            if r.unanswered_latency.count() > 0 {
                let l = &r.unanswered_latency;
                f.histogram(&route_labels(r), &l.histogram, l.total_ns);
            }
        }
    }
    for (def, ns) in names::ROUTE_TIMES {
        let mut f = Family::new(&mut out, def);
        for r in &s.routes {
            f.sample("", &route_labels(r), ns(r) as f64 / 1e9);
        }
    }
    {
        let mut f = Family::new(&mut out, &names::DB_CLIENT_DURATION);
        for q in &s.queries {
            f.histogram(
                &[
                    ("db.system.name", "postgresql"),
                    ("db.operation.name", &q.operation),
                    ("db.query.summary", &q.summary),
                ],
                &q.latency,
                q.total_ns,
            );
        }
    }
    {
        let mut f = Family::new(&mut out, &names::DB_CLIENT_ERRORS);
        for q in &s.queries {
            for (state, n) in &q.errors_by_sqlstate {
                f.sample(
                    "",
                    &[
                        ("db.system.name", "postgresql"),
                        ("db.query.summary", &q.summary),
                        ("db.response.status_code", state),
                    ],
                    *n as f64,
                );
            }
        }
    }
    for (def, value) in [
        (&names::WORKERS_BUSY, 0usize),
        (&names::WORKERS_IDLE, 1),
        (&names::HTTP_SERVER_ACTIVE, 2),
        (&names::ACCEPT_QUEUE, 3),
    ] {
        let mut f = Family::new(&mut out, def);
        for p in &s.pools {
            let v = match value {
                0 => p.busy_workers as f64,
                1 => p.worker_states.len().saturating_sub(p.busy_workers) as f64,
                2 => p.active_requests as f64,
                _ => match p.accept_queue() {
                    Some(q) => f64::from(q),
                    None => continue,
                },
            };
            f.sample("", &[("service.name", &p.name)], v);
        }
    }
    for (def, samples) in names::POOL_TIMES {
        let mut f = Family::new(&mut out, def);
        for p in &s.pools {
            for (mode, ns) in samples(p) {
                let mut labels = vec![("service.name", p.name.as_str())];
                labels.extend(mode.map(|m| ("cpu.mode", m)));
                f.sample("", &labels, ns as f64 / 1e9);
            }
        }
    }
    if let Some(u) = s.host.cpu_utilization {
        Family::new(&mut out, &names::HOST_CPU).sample("", &[], u);
    }
    {
        let mut active = Family::new(&mut out, &names::FINDING_ACTIVE);
        for f in &s.findings {
            active.sample("", &finding_labels(f), if f.active { 1.0 } else { 0.0 });
        }
    }
    {
        let mut occ = Family::new(&mut out, &names::FINDING_OCCURRENCES);
        for f in &s.findings {
            occ.sample("", &finding_labels(f), f.occurrences as f64);
        }
    }
    {
        let mut info = Family::new(&mut out, &names::FINDING_INFO);
        for f in &s.findings {
            info.sample(
                "",
                &[
                    ("finding.id", &f.id),
                    ("root_cause", &f.root_cause),
                    ("prevention", &f.prevention),
                    ("remediation", &f.remediation),
                ],
                1.0,
            );
        }
    }
    {
        let mut drops = Family::new(&mut out, &names::AGENT_DROPS);
        for (reason, n) in s.agent.drops() {
            drops.sample("", &[("reason", reason)], n as f64);
        }
    }
    out
}

/// Labels alert rules route on: stable for the life of a finding (the sentence lives in
/// `herdwatch_finding_info`, so a changing number does not make a new alert).
pub(crate) fn finding_labels(f: &crate::detect::Finding) -> Vec<(&'static str, &str)> {
    let mut labels = vec![
        ("finding.id", f.id.as_str()),
        ("finding.kind", f.kind.label()),
        ("host", f.subject.host.as_str()),
    ];
    if let Some(p) = &f.subject.pool {
        labels.push(("service.name", p));
    }
    if let Some(r) = &f.subject.route {
        labels.push(("http.route", r));
    }
    if let Some(q) = &f.subject.query_summary {
        labels.push(("db.query.summary", q));
    }
    if let Some(e) = &f.subject.endpoint {
        labels.push(("server.endpoint", e));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::aggregates::RouteStats;

    #[test]
    fn renders_histograms_cumulatively_and_escapes_labels() {
        let mut ok = crate::pipeline::aggregates::Latency::default();
        ok.record(3_000_000);
        ok.record(40_000_000);
        let mut unanswered = crate::pipeline::aggregates::Latency::default();
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
        let text = render(&snap);
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
}
