//! The `[otlp]` section: endpoint, transport and export behaviour, resolved against the
//! standard `OTEL_EXPORTER_OTLP_*` variables.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector endpoint, e.g. `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318`
    /// (HTTP). None: `OTEL_EXPORTER_OTLP_ENDPOINT` decides; unset there too, OTLP is off.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else grpc).
    pub protocol: Option<String>,
    /// Extra headers (auth tokens); `OTEL_EXPORTER_OTLP_HEADERS` is honoured too.
    pub headers: BTreeMap<String, String>,
    /// `cumulative` (Prometheus-style backends) or `delta`.
    pub temporality: String,
    /// How often metrics are exported, ms.
    pub interval_ms: u64,
    /// Per-export timeout, ms: a slow collector cannot hold the exporter longer.
    pub timeout_ms: u64,
    /// Share of ordinary requests exported as spans (errors and slow ones always are).
    pub trace_ratio: f64,
    /// A request this slow or slower is always exported as a span, ms.
    pub slow_ms: u64,
    /// Attach `db.query.text` to query spans — normalised, literals replaced by `?`.
    pub query_text: bool,
    /// Retries of a failed export (exponential backoff with jitter, within `timeout_ms`).
    pub max_retries: usize,
    /// Delay before the first retry, ms; it doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Spans waiting for export at most; past this they are dropped and counted
    /// (`herdwatch.agent.dropped{reason="otlp_span_queue_full"}`).
    pub span_queue: usize,
    /// `service.name` per pool, keyed by the pool's name (`gunicorn shop.app:app`) or its
    /// app (`shop.app:app`); without an entry a pool is named by its app module (`shop.app`).
    pub services: BTreeMap<String, String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            temporality: "cumulative".into(),
            interval_ms: 10_000,
            timeout_ms: 5_000,
            trace_ratio: 0.1,
            slow_ms: 500,
            query_text: false,
            max_retries: 3,
            retry_initial_ms: 100,
            retry_max_ms: 1_600,
            span_queue: 2_048,
            services: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

impl OtlpConfig {
    /// The endpoint and transport in effect, from the config then the standard variables.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Option<(String, Transport)>, String> {
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .filter(|e| !e.trim().is_empty());
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        let protocol = self
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".into());
        let transport = match protocol.trim() {
            "grpc" => Transport::Grpc,
            "http/protobuf" => Transport::HttpProtobuf,
            other => {
                return Err(format!(
                    "OTLP protocol {other:?} is not supported; use grpc or http/protobuf"
                ));
            }
        };
        if !matches!(self.temporality.as_str(), "cumulative" | "delta") {
            return Err(format!(
                "otlp.temporality = {:?}: use cumulative or delta",
                self.temporality
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_ratio) {
            return Err(format!(
                "otlp.trace_ratio = {} must be in 0..=1",
                self.trace_ratio
            ));
        }
        if self.interval_ms < 100 || self.timeout_ms < 100 {
            return Err("otlp.interval_ms and otlp.timeout_ms must be at least 100".into());
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err(format!(
                "otlp.retry_initial_ms = {} exceeds otlp.retry_max_ms = {}",
                self.retry_initial_ms, self.retry_max_ms
            ));
        }
        if self.span_queue == 0 {
            return Err("otlp.span_queue must be at least 1".into());
        }
        Ok(Some((endpoint, transport)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_an_endpoint_and_protocols_resolve() {
        let none = |_: &str| None;
        assert_eq!(OtlpConfig::default().resolve(none), Ok(None));
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318".to_string()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_string()),
            _ => None,
        };
        assert_eq!(
            OtlpConfig::default().resolve(env),
            Ok(Some(("http://c:4318".into(), Transport::HttpProtobuf)))
        );
        let bad = OtlpConfig {
            endpoint: Some("http://c:4317".into()),
            protocol: Some("http/json".into()),
            ..OtlpConfig::default()
        };
        assert!(bad.resolve(none).is_err_and(|e| e.contains("http/json")));
    }
}
