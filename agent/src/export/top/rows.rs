//! The rows of each pane, built from the wire snapshot: one struct per pane with the numbers
//! it shows (kept as numbers, so sorting is by value, not by text), how to sort it by each of
//! its columns, and what text a filter matches.
use std::cmp::Ordering;

use herdwatch_proto::v1 as pb;

use super::model::{Model, RouteKey};
use crate::detect::naming::{QUERY_TEXT_CHARS, bounded};

/// What every pane's rows can do: be told apart across refreshes, sorted, filtered.
pub trait Row {
    /// Names of the columns `s` cycles through, in order.
    const SORTS: &'static [&'static str];
    /// Stable across snapshots, so the selection stays on the same thing as rows move.
    fn key(&self) -> String;
    /// The text a filter is matched against (case-insensitive).
    fn haystack(&self) -> String;
    /// Order by sort column `column` (an index into `SORTS`): biggest numbers first, text A-Z.
    fn order(&self, other: &Self, column: usize) -> Ordering;
}

/// `rows` whose text contains `filter` (any case), sorted by `column`; ties keep the agent's
/// order (most total time first), since the sort is stable.
pub fn visible<R: Row>(mut rows: Vec<R>, filter: &str, column: usize) -> Vec<R> {
    let needle = filter.to_lowercase();
    if !needle.is_empty() {
        rows.retain(|r| r.haystack().to_lowercase().contains(&needle));
    }
    rows.sort_by(|a, b| a.order(b, column % R::SORTS.len()));
    rows
}

/// Descending by a number that may be missing (missing last).
fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => b.total_cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn per(total_ns: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| total_ns as f64 / n as f64 / 1e6)
}

/// The `q` quantile in ms from the agent's histogram: the upper bound of the bucket it falls
/// in, never above the slowest sample seen (which also bounds the open last bucket).
pub fn quantile_ms(h: Option<&pb::LatencyHistogram>, max_ns: u64, q: f64) -> Option<f64> {
    let h = h?;
    let total: u64 = h.counts.iter().sum();
    if total == 0 {
        return None;
    }
    let max_ms = max_ns as f64 / 1e6;
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in h.counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = h.upper_bounds_ms.get(i).map(|b| *b as f64);
            return Some(bound.map_or(max_ms, |b| b.min(max_ms)));
        }
    }
    Some(max_ms)
}

#[derive(Clone, Debug)]
pub struct PoolRow {
    pub name: String,
    pub class: String,
    pub busy: u32,
    pub workers: u32,
    pub idle: u32,
    pub accept_queue: Option<u32>,
    pub cpu_percent: f64,
    /// Shares of the workers' wall time: on CPU, waiting on PostgreSQL, other.
    pub share: Option<(f64, f64, f64)>,
}

impl PoolRow {
    fn of(p: &pb::Pool) -> Self {
        let idle = p
            .workers
            .iter()
            .filter(|w| pb::WorkerState::try_from(w.state) == Ok(pb::WorkerState::Idle))
            .count();
        Self {
            name: p.name.clone(),
            class: p.worker_class.clone(),
            busy: p.busy_workers,
            workers: u32::try_from(p.workers.len()).unwrap_or(u32::MAX),
            idle: u32::try_from(idle).unwrap_or(u32::MAX),
            accept_queue: p.accept_queue,
            cpu_percent: p.cpu_percent,
            share: p
                .time_share
                .as_ref()
                .map(|t| (t.on_cpu, t.db_wait, t.other)),
        }
    }
}

impl Row for PoolRow {
    const SORTS: &'static [&'static str] = &["CPU", "busy", "accept queue", "DB wait", "name"];

    fn key(&self) -> String {
        self.name.clone()
    }

    fn haystack(&self) -> String {
        format!("{} {}", self.name, self.class)
    }

    fn order(&self, other: &Self, column: usize) -> Ordering {
        match column {
            0 => desc(Some(self.cpu_percent), Some(other.cpu_percent)),
            1 => other.busy.cmp(&self.busy),
            2 => other.accept_queue.cmp(&self.accept_queue),
            3 => desc(self.share.map(|s| s.1), other.share.map(|s| s.1)),
            _ => self.name.cmp(&other.name),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouteRow {
    pub key: RouteKey,
    /// Requests per second over the last interval.
    pub rate: Option<f64>,
    pub requests: u64,
    pub p99_ms: Option<f64>,
    pub cpu_ms_per_request: Option<f64>,
    pub db_ms_per_request: Option<f64>,
    pub server_errors: u64,
}

impl RouteRow {
    fn of(r: &pb::Route, model: &Model) -> Self {
        let key = RouteKey::of(r);
        Self {
            rate: model.rate(&key),
            key,
            requests: r.requests,
            p99_ms: quantile_ms(r.latency.as_ref(), r.max_ns, 0.99),
            cpu_ms_per_request: per(r.cpu_ns, r.requests),
            db_ms_per_request: per(r.db_wait_ns, r.requests),
            server_errors: r
                .statuses
                .iter()
                .filter(|s| s.status >= 500)
                .map(|s| s.count)
                .sum(),
        }
    }

    /// The pool that served it, or a dash outside any pool.
    pub fn pool(&self) -> &str {
        if self.key.pool.is_empty() {
            "-"
        } else {
            &self.key.pool
        }
    }
}

impl Row for RouteRow {
    const SORTS: &'static [&'static str] =
        &["rate", "p99", "CPU/req", "DB/req", "requests", "route"];

    fn key(&self) -> String {
        self.key.text()
    }

    fn haystack(&self) -> String {
        format!("{} {} {}", self.key.pool, self.key.method, self.key.route)
    }

    fn order(&self, other: &Self, column: usize) -> Ordering {
        match column {
            0 => desc(self.rate, other.rate),
            1 => desc(self.p99_ms, other.p99_ms),
            2 => desc(self.cpu_ms_per_request, other.cpu_ms_per_request),
            3 => desc(self.db_ms_per_request, other.db_ms_per_request),
            4 => other.requests.cmp(&self.requests),
            _ => (&self.key.route, &self.key.pool).cmp(&(&other.key.route, &other.key.pool)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct QueryRow {
    pub id: String,
    /// The normalised text as the agent sent it (literals already stripped), bounded.
    pub text: String,
    pub call_sites: Vec<(String, u64)>,
    pub calls: u64,
    pub errors: u64,
    pub mean_ms: Option<f64>,
    pub total_ms: f64,
    pub routes: Vec<(String, u64)>,
}

impl QueryRow {
    fn of(q: &pb::Query) -> Self {
        let text = if q.normalized_text.trim().is_empty() {
            // Prepared before the agent watched: only its summary is known, if that.
            format!("({} — text unknown)", q.summary)
        } else {
            bounded(&q.normalized_text, QUERY_TEXT_CHARS)
        };
        let mut call_sites: Vec<(String, u64)> = q
            .call_sites
            .iter()
            .filter_map(|c| Some((c.site.as_ref()?.display.clone(), c.calls)))
            .collect();
        call_sites.sort_by_key(|c| std::cmp::Reverse(c.1));
        let mut routes: Vec<(String, u64)> = q
            .routes
            .iter()
            .map(|r| (r.route.clone(), r.calls))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.1));
        Self {
            id: q.id.clone(),
            text,
            call_sites,
            calls: q.calls,
            errors: q.errors,
            mean_ms: per(q.total_ns, q.calls),
            total_ms: q.total_ns as f64 / 1e6,
            routes,
        }
    }

    /// The call site issuing most of the calls, with how many others there are.
    pub fn call_site(&self) -> String {
        match self.call_sites.as_slice() {
            [] => "-".into(),
            [(one, _)] => one.clone(),
            [(first, _), rest @ ..] => format!("{first} (+{})", rest.len()),
        }
    }

    pub fn routes_text(&self) -> String {
        if self.routes.is_empty() {
            return "-".into();
        }
        let names: Vec<String> = self
            .routes
            .iter()
            .map(|(route, calls)| format!("{route} ×{calls}"))
            .collect();
        names.join(", ")
    }
}

impl Row for QueryRow {
    const SORTS: &'static [&'static str] = &["total time", "calls", "mean", "errors", "text"];

    fn key(&self) -> String {
        self.id.clone()
    }

    fn haystack(&self) -> String {
        let sites: Vec<&str> = self.call_sites.iter().map(|(s, _)| s.as_str()).collect();
        let routes: Vec<&str> = self.routes.iter().map(|(r, _)| r.as_str()).collect();
        format!(
            "{} {} {} {}",
            self.id,
            self.text,
            sites.join(" "),
            routes.join(" ")
        )
    }

    fn order(&self, other: &Self, column: usize) -> Ordering {
        match column {
            0 => desc(Some(self.total_ms), Some(other.total_ms)),
            1 => other.calls.cmp(&self.calls),
            2 => desc(self.mean_ms, other.mean_ms),
            3 => other.errors.cmp(&self.errors),
            _ => self.text.cmp(&other.text),
        }
    }
}

/// A finding kind in a word; a kind from a newer agent by its number, never guessed.
pub fn kind_name(kind: i32) -> String {
    match pb::FindingKind::try_from(kind) {
        Ok(pb::FindingKind::Saturation) => "saturation".into(),
        Ok(pb::FindingKind::Starvation) => "starvation".into(),
        Ok(pb::FindingKind::ThunderingHerd) => "herd".into(),
        Ok(pb::FindingKind::CronAlignment) => "cron".into(),
        Ok(pb::FindingKind::PoolSaturation) => "db pool".into(),
        Ok(pb::FindingKind::Unspecified) | Err(_) => format!("kind {kind}"),
    }
}

pub fn severity_name(severity: i32) -> String {
    match pb::Severity::try_from(severity) {
        Ok(pb::Severity::Info) => "info".into(),
        Ok(pb::Severity::Warning) => "warning".into(),
        Ok(pb::Severity::Critical) => "critical".into(),
        Ok(pb::Severity::Unspecified) | Err(_) => format!("severity {severity}"),
    }
}

/// What a finding is about, in one line: the most specific names first.
pub fn subject_line(s: Option<&pb::Subject>) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(pool) = &s.pool {
        parts.push(pool.clone());
    }
    if let Some(route) = &s.route {
        parts.push(route.clone());
    }
    if let Some(summary) = &s.query_summary {
        parts.push(summary.clone());
    }
    if let Some(endpoint) = &s.endpoint {
        parts.push(endpoint.clone());
    }
    if !s.tasks.is_empty() {
        parts.push(s.tasks.join(", "));
    }
    if parts.is_empty() {
        parts.push(format!("host {}", s.host));
    }
    parts.join(" · ")
}

#[derive(Clone, Debug)]
pub struct FindingRow {
    pub finding: pb::Finding,
    pub kind: String,
    pub severity: String,
    pub subject: String,
}

impl FindingRow {
    fn of(f: &pb::Finding) -> Self {
        Self {
            kind: kind_name(f.kind),
            severity: severity_name(f.severity),
            subject: subject_line(f.subject.as_ref()),
            finding: f.clone(),
        }
    }
}

impl Row for FindingRow {
    const SORTS: &'static [&'static str] = &["active", "last seen", "occurrences", "severity"];

    fn key(&self) -> String {
        self.finding.id.clone()
    }

    fn haystack(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.finding.id, self.kind, self.severity, self.subject, self.finding.root_cause
        )
    }

    fn order(&self, other: &Self, column: usize) -> Ordering {
        let (a, b) = (&self.finding, &other.finding);
        match column {
            0 => b.active.cmp(&a.active),
            1 => b.last_seen_unix_ms.cmp(&a.last_seen_unix_ms),
            2 => b.occurrences.cmp(&a.occurrences),
            _ => b.severity.cmp(&a.severity),
        }
    }
}

pub fn pools(model: &Model) -> Vec<PoolRow> {
    model
        .snapshot()
        .map(|s| s.pools.iter().map(PoolRow::of).collect())
        .unwrap_or_default()
}

pub fn routes(model: &Model) -> Vec<RouteRow> {
    model
        .snapshot()
        .map(|s| s.routes.iter().map(|r| RouteRow::of(r, model)).collect())
        .unwrap_or_default()
}

pub fn queries(model: &Model) -> Vec<QueryRow> {
    model
        .snapshot()
        .map(|s| s.queries.iter().map(QueryRow::of).collect())
        .unwrap_or_default()
}

pub fn findings(model: &Model) -> Vec<FindingRow> {
    model
        .snapshot()
        .map(|s| s.findings.iter().map(FindingRow::of).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_bound_capped_by_the_slowest_sample() {
        let h = pb::LatencyHistogram {
            upper_bounds_ms: vec![1, 10, 100],
            counts: vec![90, 9, 1, 0],
        };
        assert_eq!(quantile_ms(Some(&h), 50_000_000, 0.99), Some(10.0));
        assert_eq!(quantile_ms(Some(&h), 50_000_000, 1.0), Some(50.0));
        let slow = pb::LatencyHistogram {
            upper_bounds_ms: vec![1],
            counts: vec![0, 3],
        };
        assert_eq!(quantile_ms(Some(&slow), 2_500_000_000, 0.99), Some(2500.0));
        let empty = pb::LatencyHistogram::default();
        assert_eq!(quantile_ms(Some(&empty), 0, 0.99), None);
        assert_eq!(quantile_ms(None, 0, 0.99), None);
    }

    #[test]
    fn unknown_kinds_are_shown_by_number() {
        assert_eq!(kind_name(3), "herd");
        assert_eq!(kind_name(42), "kind 42");
        assert_eq!(severity_name(9), "severity 9");
    }
}
