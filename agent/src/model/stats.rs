//! Statistics the pipeline accumulates and everyone reads: latency histograms, per-query and
//! per-route totals, connection-table and export counters.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::probes::python_code::CallSite;

/// Upper bounds (inclusive, milliseconds) of the latency histogram buckets; one more bucket
/// counts everything slower. They resolve 1 ms … 30 s, the range the exporters publish.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// Counts per latency bucket (`LATENCY_BUCKETS_MS` + overflow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Histogram(pub Vec<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Self(vec![0; LATENCY_BUCKETS_MS.len() + 1])
    }
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        let ms_ceil = ns.div_ceil(1_000_000);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms_ceil <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        if let Some(slot) = self.0.get_mut(i) {
            *slot += 1;
        }
    }

    /// The smallest bucket bound below which `q` (0..=1) of the samples fall; None if empty or
    /// beyond the last bound.
    pub fn quantile_upper_ms(&self, q: f64) -> Option<u64> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= want {
                return LATENCY_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }
}

/// A route or fingerprint id on the per-event path: shared, so handing it to a request, a
/// query record and the detectors costs a reference count, not an allocation.
pub type Label = std::sync::Arc<str>;

/// A latency histogram with its sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub histogram: Histogram,
    pub total_ns: u64,
}

impl Latency {
    pub fn record(&mut self, ns: u64) {
        self.histogram.record(ns);
        self.total_ns += ns;
    }

    pub fn count(&self) -> u64 {
        self.histogram.0.iter().sum()
    }
}

/// The bucket every fingerprint past the limit is counted in.
pub const OTHER_ID: &str = "other";

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryStats {
    /// Fingerprint id (16 hex digits), or `other`.
    pub id: String,
    /// `db.query.summary`, e.g. `SELECT orders`.
    pub summary: String,
    pub operation: String,
    /// The normalised text: literals replaced by `?` (safe to show; raw text never leaves).
    pub normalized: String,
    pub calls: u64,
    pub errors: u64,
    pub errors_by_sqlstate: BTreeMap<String, u64>,
    /// Skipped by the server after an earlier error in the same pipeline.
    pub aborted: u64,
    pub rows: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub latency: Histogram,
    /// Attributed by statement name only: prepared before the agent started watching.
    pub text_unknown: bool,
    /// Processes that issued it (bounded).
    pub pids: Vec<u32>,
    /// Routes whose requests issued it, with how many calls each (bounded).
    pub routes: Vec<RouteCalls>,
    /// The application lines that issued it, with how many calls each (bounded).
    pub call_sites: Vec<SiteCalls>,
    /// Calls paired with their request by the thread heuristic on an asyncio worker whose
    /// interpreter could not be read: their route may be wrong.
    pub heuristic_calls: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteCalls {
    pub route: String,
    pub calls: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteCalls {
    pub site: CallSite,
    pub calls: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteStats {
    /// The pool whose workers served it ("" outside any pool).
    pub pool: String,
    pub method: String,
    pub route: String,
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Closed before a response was written.
    pub unanswered: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub latency: Histogram,
    /// The same latencies split by response status, so `/metrics` carries
    /// `http.response.status_code` as OTLP does (statuses are at most 900 values).
    pub latency_by_status: BTreeMap<u16, Latency>,
    /// Latencies of requests closed without a response.
    pub unanswered_latency: Latency,
    /// CPU the serving threads used for these requests.
    pub cpu_ns: u64,
    /// Time the requests waited on PostgreSQL queries they issued.
    pub db_wait_ns: u64,
    pub queries: u64,
    /// Processes that served it, most recent last (bounded).
    pub pids: Vec<u32>,
}

/// What the connection table has seen and done since start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConnectionStats {
    pub open: usize,
    pub opened: u64,
    pub closed: u64,
    /// Dropped to stay within the bound (their close was never seen).
    pub evicted: u64,
    pub data_events: u64,
    pub bytes_seen: u64,
    pub bytes_captured: u64,
    pub protocol_errors: u64,
    pub postgres_queries: u64,
    pub http_exchanges: u64,
    /// Queries charged to an HTTP request.
    pub queries_in_requests: u64,
    /// Queries of asyncio workers paired with their request through their Task (exact).
    pub queries_by_task: u64,
    /// Queries of asyncio workers sent outside any Task (an event-loop callback): no request.
    pub queries_outside_tasks: u64,
    /// Queries whose Task never answered a request (a background or child task), recorded
    /// without a route.
    pub queries_task_unanswered: u64,
    /// Queries of asyncio workers whose stack could not be read: paired by the thread
    /// heuristic, which may name the wrong route. Each is also marked on its query.
    pub queries_heuristic: u64,
    /// Python stacks received, and those cut short (chain longer than the walk, no thread
    /// state for the thread, or a read that failed).
    pub py_stacks: u64,
    pub py_stacks_truncated: u64,
    pub py_stacks_without_thread: u64,
    pub py_stacks_unreadable: u64,
}

/// What the exporters (OTLP, the API) lost or turned away; a point-in-time copy for the
/// snapshot.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ExportDrops {
    /// Spans dropped because the export queue was full (collector slow or down).
    pub spans_queue_full: u64,
    /// Spans in exports that failed after their retries.
    pub spans_failed: u64,
    /// Log records (finding occurrences and resolutions) in exports that failed.
    pub logs_failed: u64,
    /// Metric exports that failed (each one interval's points; cumulative series recover on
    /// the next success).
    pub metric_exports_failed: u64,
    /// API connections closed at once because the agent already had its limit open.
    pub api_connections_refused: u64,
    /// API watch streams refused because the agent already fed its limit of them.
    pub api_watches_refused: u64,
    /// API watch streams cut off because their client stopped reading and the stream's
    /// bounded buffer filled: that watcher lost data as surely as a full ring loses events.
    pub api_watchers_too_slow: u64,
    /// API calls on the TCP listener refused for a missing or wrong bearer token: a
    /// misconfigured client, or somebody guessing.
    pub api_unauthenticated: u64,
    /// API answers (or Watch stream messages) larger than the API's message limit, refused
    /// instead of sent: that client got nothing for its call.
    pub api_responses_too_large: u64,
    /// Accepts that failed on any listener (API socket, API TCP, `/metrics`), mostly for want
    /// of file descriptors; each is followed by a pause rather than a retry at once.
    pub accept_failed: u64,
    /// `/metrics` connections closed at once because the endpoint had its limit open.
    pub metrics_connections_refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = Histogram::default();
        for ms in [0.5, 1.0, 3.0, 40.0, 40.0, 200.0, 1800.0, 60_000.0] {
            h.record((ms * 1e6) as u64);
        }
        assert_eq!(h.0.iter().sum::<u64>(), 8);
        assert_eq!(h.0[0], 2, "≤ 1 ms");
        assert_eq!(h.0[LATENCY_BUCKETS_MS.len()], 1, "beyond 30 s");
        assert_eq!(h.quantile_upper_ms(0.5), Some(50));
        assert_eq!(h.quantile_upper_ms(0.8), Some(2_500));
        assert_eq!(Histogram::default().quantile_upper_ms(0.99), None);
    }
}
