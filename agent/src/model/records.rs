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
