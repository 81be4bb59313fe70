//! The Prometheus exposition: `/metrics` in the text format (served by `http`), rendered from the latest
//! snapshot with the names `names.rs` defines (OTLP→Prometheus translation), so one set of
//! dashboards and rules serves the OTLP and the scrape path.
//!
//! A pool's series carry `job` (its OTLP `service.name`) and `instance` (its
//! `service.instance.id`): the labels the translation makes of the pool's resource. Prometheus
//! keeps them when the scrape job has `honor_labels: true`; the agent's own series carry
//! neither and take the scrape job's (`herdwatch`, the agent's own `service.name`).
use std::{collections::HashMap, fmt::Write as _};

use super::{
    names::{self, Kind, MetricDef, prometheus_name},
    resource::PoolNaming,
};
use crate::model::{Histogram, LATENCY_BUCKETS_MS, Snapshot};

/// One series' value while its family is being assembled.
enum Value {
    Scalar(f64),
    /// Per-bucket counts (not cumulative) and the sum in ns.
    Histogram(Vec<u64>, u64),
}

/// A metric family being assembled: series keyed by their exact label set, written (HELP and
/// TYPE once, then samples) when the family is dropped.
///
/// Several sources can produce one label set — fingerprints that share a `db.query.summary`,
/// two pools with one name — and the text format must never carry a series twice (Prometheus
/// keeps one and drops the rest). Series with identical labels are merged by summing, as the
/// OpenTelemetry SDK aggregates identical attribute sets on the OTLP path, so both paths
/// report the same totals. Every family written here is additive (counters, histograms,
/// counts of workers or requests); a family whose values must not add has unique labels.
struct Family<'a> {
    out: &'a mut String,
    name: String,
    series: Vec<(Vec<(&'static str, String)>, Value)>,
    index: HashMap<Vec<(&'static str, String)>, usize>,
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
        Self {
            out,
            name,
            series: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The slot of `labels`, created with `empty` on first sight.
    fn slot(
        &mut self,
        labels: &[(&'static str, &str)],
        empty: impl FnOnce() -> Value,
    ) -> &mut Value {
        let key: Vec<(&'static str, String)> =
            labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                self.series.push((key.clone(), empty()));
                self.index.insert(key, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        &mut self.series[i].1
    }

    fn sample(&mut self, labels: &[(&'static str, &str)], value: f64) {
        match self.slot(labels, || Value::Scalar(0.0)) {
            Value::Scalar(v) => *v += value,
            Value::Histogram(..) => debug_assert!(false, "{} mixes kinds", self.name),
        }
    }

    fn histogram(&mut self, labels: &[(&'static str, &str)], h: &Histogram, sum_ns: u64) {
        let empty = || Value::Histogram(vec![0; LATENCY_BUCKETS_MS.len() + 1], 0);
        match self.slot(labels, empty) {
            Value::Histogram(buckets, sum) => {
                // Counts past the last bound land in the +Inf bucket.
                for (i, n) in h.0.iter().enumerate() {
                    let last = buckets.len() - 1;
                    buckets[i.min(last)] += n;
                }
                *sum += sum_ns;
            }
            Value::Scalar(_) => debug_assert!(false, "{} mixes kinds", self.name),
        }
    }
}

impl Drop for Family<'_> {
    fn drop(&mut self) {
        for (labels, value) in std::mem::take(&mut self.series) {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match value {
                Value::Scalar(v) => write_sample(self.out, &self.name, "", &labels, v),
                Value::Histogram(buckets, sum_ns) => {
                    write_histogram(self.out, &self.name, &labels, &buckets, sum_ns)
                }
            }
        }
    }
}

fn write_sample(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
    let _ = write!(out, "{name}{suffix}");
    write_labels(out, labels);
    let _ = writeln!(out, " {}", number(value));
}

/// `buckets` holds one count per bound of `LATENCY_BUCKETS_MS` and one past the last.
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    buckets: &[u64],
    sum_ns: u64,
) {
    let mut cumulative = 0u64;
    for (i, bound_ms) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += buckets.get(i).copied().unwrap_or(0);
        let le = number(*bound_ms as f64 / 1000.0);
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        write_sample(out, name, "_bucket", &with_le, cumulative as f64);
    }
    let count: u64 = buckets.iter().sum();
    let mut with_le = labels.to_vec();
    with_le.push(("le", "+Inf"));
    write_sample(out, name, "_bucket", &with_le, count as f64);
    write_sample(out, name, "_sum", labels, sum_ns as f64 / 1e9);
    write_sample(out, name, "_count", labels, count as f64);
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

/// `job` and `instance` of each pool by pool name, as its OTLP resource names it.
struct PoolIds<'n> {
    naming: &'n PoolNaming,
    known: HashMap<String, (String, String)>,
}

impl<'n> PoolIds<'n> {
    fn new(s: &Snapshot, naming: &'n PoolNaming) -> Self {
        let known = s
            .pools
            .iter()
            .map(|p| {
                let ids = (naming.service_name(&p.pool), naming.instance_id(&p.name));
                (p.name.clone(), ids)
            })
            .collect();
        Self { naming, known }
    }

    /// A pool gone from the snapshot (its routes and findings stay) is named from its name.
    fn of(&mut self, pool: &str) -> &(String, String) {
        let naming = self.naming;
        self.known
            .entry(pool.to_string())
            .or_insert_with(|| (naming.service_name_by_name(pool), naming.instance_id(pool)))
    }
}

/// A route's labels: the pool that served it (`job`/`instance`, as on the pool's gauges; none
/// outside a pool, like the agent's own series), method and route.
fn route_labels<'a>(
    r: &'a crate::model::RouteStats,
    ids: Option<&'a (String, String)>,
) -> Vec<(&'static str, &'a str)> {
    let mut labels = Vec::with_capacity(4);
    if let Some((job, instance)) = ids {
        labels.push(("job", job.as_str()));
        labels.push(("instance", instance.as_str()));
    }
    labels.push(("http.request.method", r.method.as_str()));
    labels.push(("http.route", r.route.as_str()));
    labels
}

/// The whole exposition for one snapshot.
pub fn render(s: &Snapshot, naming: &PoolNaming) -> String {
    let mut out = String::new();
    let mut ids = PoolIds::new(s, naming);
    render_routes(&mut out, s, &mut ids);
    render_queries(&mut out, s);
    render_pools(&mut out, s, &mut ids);
    if let Some(u) = s.host.cpu_utilization {
        Family::new(&mut out, &names::HOST_CPU).sample(&[], u);
    }
    render_findings(&mut out, s, &mut ids);
    {
        let mut drops = Family::new(&mut out, &names::AGENT_DROPS);
        for (reason, n) in s.agent.drops() {
            drops.sample(&[("reason", reason)], n as f64);
        }
    }
    Family::new(&mut out, &names::AGENT_MEMORY).sample(&[], s.agent.resident_bytes as f64);
    {
        let mut tables = Family::new(&mut out, &names::AGENT_TABLE_ENTRIES);
        for (table, n) in s.agent.tables.entries() {
            tables.sample(&[("table", table)], n as f64);
        }
    }
    out
}

/// Request latency by route and status, and the routes' CPU and DB wait.
fn render_routes(out: &mut String, s: &Snapshot, ids: &mut PoolIds<'_>) {
    let pools: Vec<Option<(String, String)>> = s
        .routes
        .iter()
        .map(|r| (!r.pool.is_empty()).then(|| ids.of(&r.pool).clone()))
        .collect();
    {
        let mut f = Family::new(out, &names::HTTP_SERVER_DURATION);
        for (r, pool) in s.routes.iter().zip(&pools) {
            // One series per status, as OTLP's histogram has; unanswered requests without.
            for (status, latency) in &r.latency_by_status {
                let status = status.to_string();
                let mut labels = route_labels(r, pool.as_ref());
                labels.push(("http.response.status_code", &status));
                f.histogram(&labels, &latency.histogram, latency.total_ns);
            }
            if r.unanswered_latency.count() > 0 {
                let l = &r.unanswered_latency;
                f.histogram(&route_labels(r, pool.as_ref()), &l.histogram, l.total_ns);
            }
        }
    }
    for (def, ns) in names::ROUTE_TIMES {
        let mut f = Family::new(out, def);
        for (r, pool) in s.routes.iter().zip(&pools) {
            f.sample(&route_labels(r, pool.as_ref()), ns(r) as f64 / 1e9);
        }
    }
}

/// Query latency and errors by statement summary.
fn render_queries(out: &mut String, s: &Snapshot) {
    {
        let mut f = Family::new(out, &names::DB_CLIENT_DURATION);
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
        let mut f = Family::new(out, &names::DB_CLIENT_ERRORS);
        for q in &s.queries {
            for (state, n) in &q.errors_by_sqlstate {
                f.sample(
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
}

/// Worker-pool gauges and cumulative times, one service per pool.
fn render_pools(out: &mut String, s: &Snapshot, ids: &mut PoolIds<'_>) {
    let pools: Vec<(String, String)> = s.pools.iter().map(|p| ids.of(&p.name).clone()).collect();
    for (def, value) in [
        (&names::WORKERS_BUSY, 0usize),
        (&names::WORKERS_IDLE, 1),
        (&names::HTTP_SERVER_ACTIVE, 2),
        (&names::ACCEPT_QUEUE, 3),
    ] {
        let mut f = Family::new(out, def);
        for (p, (job, instance)) in s.pools.iter().zip(&pools) {
            let v = match value {
                0 => p.busy_workers as f64,
                1 => p.worker_states.len().saturating_sub(p.busy_workers) as f64,
                2 => p.active_requests as f64,
                _ => match p.accept_queue() {
                    Some(q) => f64::from(q),
                    None => continue,
                },
            };
            f.sample(&[("job", job), ("instance", instance)], v);
        }
    }
    for (def, samples) in names::POOL_TIMES {
        let mut f = Family::new(out, def);
        for (p, (job, instance)) in s.pools.iter().zip(&pools) {
            for (mode, ns) in samples(p) {
                let mut labels = vec![("job", job.as_str()), ("instance", instance.as_str())];
                labels.extend(mode.map(|m| ("cpu.mode", m)));
                f.sample(&labels, ns as f64 / 1e9);
            }
        }
    }
}

/// Findings: active, occurrences, and the sentence behind each.
fn render_findings(out: &mut String, s: &Snapshot, ids: &mut PoolIds<'_>) {
    let services: Vec<Option<String>> = s
        .findings
        .iter()
        .map(|f| f.subject.pool.as_ref().map(|p| ids.of(p).0.clone()))
        .collect();
    {
        let mut active = Family::new(out, &names::FINDING_ACTIVE);
        for (f, service) in s.findings.iter().zip(&services) {
            let labels = finding_labels(f, service.as_deref());
            active.sample(&labels, if f.active { 1.0 } else { 0.0 });
        }
    }
    {
        let mut occ = Family::new(out, &names::FINDING_OCCURRENCES);
        for (f, service) in s.findings.iter().zip(&services) {
            occ.sample(&finding_labels(f, service.as_deref()), f.occurrences as f64);
        }
    }
    {
        let mut info = Family::new(out, &names::FINDING_INFO);
        for f in &s.findings {
            info.sample(
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
}

/// Labels alert rules route on: stable for the life of a finding (the sentence lives in
/// `herdwatch_finding_info`, so a changing number does not make a new alert). `service` is the
/// finding's pool by its service name, the `job` of the pool's own series; on OTLP it is a
/// data-point attribute on the agent's resource, so it never meets the pool's resource.
pub(crate) fn finding_labels<'a>(
    f: &'a crate::model::Finding,
    service: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut labels = vec![
        ("finding.id", f.id.as_str()),
        ("finding.kind", f.kind.label()),
        ("host", f.subject.host.as_str()),
    ];
    if let Some(p) = service {
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
mod tests;
