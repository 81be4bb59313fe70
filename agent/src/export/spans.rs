//! OTLP spans: one SERVER span per HTTP request with a CLIENT child per PostgreSQL query the
//! request issued, built when the request completes — so sampling can keep every error and
//! every slow request and a configured ratio of the rest. The summary (`db.query.summary`)
//! names the query; its text (`db.query.text`) is attached only when `otlp.query_text` is on,
//! and even then normalised: literals never leave the host.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herdwatch_protocol::fingerprint::fnv1a64;

use crate::model::FinishedExchange;
use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

#[derive(Clone)]
pub struct SpanRecorder {
    tracer: SdkTracer,
    ratio: f64,
    slow_ns: u64,
    /// Attach `db.query.text` (normalised: literals stripped).
    pub query_text: bool,
    /// Wall clock minus the kernel's monotonic clock, ns.
    unix_minus_mono_ns: i128,
}

impl std::fmt::Debug for SpanRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanRecorder")
    }
}

impl SpanRecorder {
    pub fn new(provider: &SdkTracerProvider, ratio: f64, slow_ms: u64, query_text: bool) -> Self {
        use opentelemetry::trace::TracerProvider as _;
        Self {
            tracer: provider.tracer("herdwatch"),
            ratio: ratio.clamp(0.0, 1.0),
            slow_ns: slow_ms * 1_000_000,
            query_text,
            unix_minus_mono_ns: crate::host::unix_minus_monotonic_ns(),
        }
    }

    fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (i128::from(mono_ns) + self.unix_minus_mono_ns).max(0) as u64;
        UNIX_EPOCH + Duration::from_nanos(ns)
    }

    /// Errors and slow requests always; the rest by a ratio decided from the request itself
    /// (no RNG: the same request always gets the same decision).
    pub fn sampled(&self, r: &FinishedExchange) -> bool {
        let error =
            r.status.is_none_or(|s| s >= 500) || r.queries.iter().any(|q| q.sqlstate.is_some());
        let slow = r.finished_ns.saturating_sub(r.started_ns) >= self.slow_ns;
        if error || slow || self.ratio >= 1.0 {
            return true;
        }
        let h = fnv1a64(&r.started_ns.to_le_bytes()) % 10_000;
        (h as f64) < self.ratio * 10_000.0
    }

    pub fn record(&self, r: &FinishedExchange) {
        if !self.sampled(r) {
            return;
        }
        let mut attrs = vec![
            KeyValue::new("http.request.method", r.method.to_string()),
            KeyValue::new("http.route", r.route.to_string()),
            KeyValue::new("herdwatch.cpu.time", r.cpu_ns as f64 / 1e9),
            KeyValue::new("herdwatch.db.wait.time", r.db_wait_ns as f64 / 1e9),
            KeyValue::new("herdwatch.db.queries", r.queries.len() as i64),
        ];
        if let Some(s) = r.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        let mut server = self
            .tracer
            .span_builder(format!("{} {}", r.method, r.route))
            .with_kind(SpanKind::Server)
            .with_start_time(self.wall(r.started_ns))
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &Context::new());
        match r.status {
            Some(s) if s >= 500 => server.set_status(Status::error(format!("HTTP {s}"))),
            None => server.set_status(Status::error("closed before a response")),
            _ => {}
        }
        let parent = Context::new().with_remote_span_context(server.span_context().clone());
        for q in r.queries {
            let mut attrs = vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.query.summary", q.summary.clone()),
                KeyValue::new("db.operation.name", q.operation.clone()),
                KeyValue::new("db.response.returned_rows", q.rows as i64),
            ];
            if let Some(port) = q.server_port {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
            if let Some(state) = &q.sqlstate {
                attrs.push(KeyValue::new("db.response.status_code", state.clone()));
            }
            if let Some(text) = &q.normalized {
                attrs.push(KeyValue::new("db.query.text", text.clone()));
            }
            if let Some(site) = &q.call_site {
                attrs.push(KeyValue::new(
                    "code.function.name",
                    site.function.to_string(),
                ));
                attrs.push(KeyValue::new("code.file.path", site.file.to_string()));
                attrs.push(KeyValue::new("code.line.number", i64::from(site.line)));
            }
            let mut client = self
                .tracer
                .span_builder(q.summary.clone())
                .with_kind(SpanKind::Client)
                .with_start_time(self.wall(q.started_ns))
                .with_attributes(attrs)
                .start_with_context(&self.tracer, &parent);
            if let Some(state) = &q.sqlstate {
                client.set_status(Status::error(format!("SQLSTATE {state}")));
            }
            client.end_with_timestamp(self.wall(q.finished_ns));
        }
        server.end_with_timestamp(self.wall(r.finished_ns));
    }
}
