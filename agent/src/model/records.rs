//! The records the pipeline hands out as requests and queries happen: query starts, ends and
//! finished queries for the detectors, finished exchanges and queries for exporters, and the
//! trait an exporter implements to receive them.
use crate::{model::Label, probes::python_code::CallSite};

/// One PostgreSQL query just sent, its answer still to come. Times are milliseconds on the
/// kernel's monotonic clock.
#[derive(Debug, Clone)]
pub struct QueryStart {
    pub fingerprint: Label,
    pub pid: u32,
    /// (process, fd) of the client connection.
    pub conn: (u32, u32),
    pub started_ms: f64,
}

/// One PostgreSQL query answered, as soon as it is (its request may be known only later).
#[derive(Debug, Clone)]
pub struct QueryEnd {
    pub fingerprint: Label,
    pub pid: u32,
    pub conn: (u32, u32),
    pub started_ms: f64,
    pub finished_ms: f64,
}

/// One finished PostgreSQL query as the detectors see it (times as for [`QueryStart`]).
#[derive(Debug, Clone)]
pub struct QueryObs {
    pub fingerprint: Label,
    pub pid: u32,
    /// (process, fd) of the client connection.
    pub conn: (u32, u32),
    /// Server port when the connect was seen.
    pub server_port: Option<u16>,
    pub started_ms: f64,
    pub first_response_ms: Option<f64>,
    pub finished_ms: f64,
    pub route: Option<Label>,
    /// Other requests open on the issuing thread (asyncio): candidates for who issued it.
    pub in_flight_routes: Vec<Label>,
    /// The application line that issued it, when its Python stack was read.
    pub call_site: Option<CallSite>,
}

/// A query nested in a request, kept until the request completes.
#[derive(Debug, Clone)]
pub struct QuerySpan {
    pub summary: String,
    pub operation: String,
    pub started_ns: u64,
    pub finished_ns: u64,
    pub rows: u64,
    pub sqlstate: Option<String>,
    pub server_port: Option<u16>,
    /// The application line that issued it (`code.*` attributes).
    pub call_site: Option<CallSite>,
    /// The normalised text (literals replaced by `?`), only when `otlp.query_text` is on.
    pub normalized: Option<String>,
}

/// A finished HTTP exchange as subscribers receive it (kernel monotonic ns), borrowed from the
/// route series it was counted under: handing it out allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct FinishedExchange<'a> {
    /// The pool (by name) whose worker served it; None outside any pool.
    pub pool: Option<&'a str>,
    pub method: &'a str,
    /// The grouped route (`other` past the route limit).
    pub route: &'a str,
    /// None: closed before a response was written.
    pub status: Option<u16>,
    pub started_ns: u64,
    pub finished_ns: u64,
    pub cpu_ns: u64,
    pub db_wait_ns: u64,
    /// The queries it issued, kept only while a subscriber wants them (bounded).
    pub queries: &'a [QuerySpan],
}

/// A finished PostgreSQL query as subscribers receive it, named by its fingerprint's summary.
#[derive(Debug, Clone, Copy)]
pub struct FinishedQuery<'a> {
    /// The pool (by name) of the issuing process; None outside any pool.
    pub pool: Option<&'a str>,
    pub operation: &'a str,
    /// `db.query.summary`, e.g. `SELECT orders`.
    pub summary: &'a str,
    pub sqlstate: Option<&'a str>,
    pub duration_ns: u64,
}

/// A subscriber to the pipeline's finished records (an exporter): the pipeline hands each
/// exchange and query to every subscriber as it finishes and knows nothing else about them.
pub trait RecordSink: Send + std::fmt::Debug {
    fn exchange(&mut self, x: &FinishedExchange<'_>);
    fn query(&mut self, q: &FinishedQuery<'_>);
    /// A worker pool is known under `name` (called again after each pool discovery; the
    /// master's command line is read only if asked for).
    fn pool_found(
        &mut self,
        _name: &str,
        _pool: &crate::procs::Pool,
        _master_cmdline: &dyn Fn() -> Vec<String>,
    ) {
    }
    /// Whether exchanges should carry their queries (spans cost memory per open request).
    fn wants_query_spans(&self) -> bool {
        false
    }
    /// Whether those queries should carry their normalised text.
    fn wants_query_text(&self) -> bool {
        false
    }
}

/// What the detectors follow between snapshots, as it happens: queries sent, answered and
/// finished, and processes exec'ing and exiting. The pipeline calls it; it never learns who
/// listens.
pub trait ActivityObserver {
    fn query_started(&mut self, q: &QueryStart);
    fn query_ended(&mut self, q: &QueryEnd);
    /// `name` resolves a pid to (comm, command line) when the observer needs it.
    fn query_finished(&mut self, q: &QueryObs, name: &dyn Fn(u32) -> Option<(String, String)>);
    /// A process exec'd at `timestamp_ns` (kernel monotonic).
    fn process_exec(&mut self, pid: u32, timestamp_ns: u64, comm: &str, cmdline: &str);
    /// A whole process exited having used `cpu_ns` on CPU.
    fn process_exit(&mut self, pid: u32, cpu_ns: u64);
}
