//! OTLP metrics through the OpenTelemetry SDK and `opentelemetry-otlp`, over gRPC (tonic) or
//! HTTP/protobuf. Off unless an endpoint is configured (`[otlp] endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
//!
//! Latency histograms are recorded per request and per query as they finish (`Recorder`, fed
//! by the aggregates); everything else is observed from the latest snapshot when the reader
//! collects, so OTLP and `/metrics` report the same numbers under the same names (`names.rs`).
//! The SDK's periodic reader exports on its own thread with a timeout; when the collector is
//! down each export fails and is dropped (and logged), so memory stays flat.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, Meter, MeterProvider as _},
};
use opentelemetry_otlp::{
    RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    logs::SdkLoggerProvider,
    metrics::{PeriodicReader, SdkMeterProvider, Temporality},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use serde::Deserialize;
use tokio::sync::watch;

use super::{
    delivery::{
        BoundedSpanProcessor, CountedLogExporter, CountedMetricExporter, CountedSpanExporter,
        ExportCounters,
    },
    names::{self, MetricDef},
};
use crate::{
    error::{Error, Result},
    pipeline::{Snapshot, aggregates::LATENCY_BUCKETS_MS},
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// Records request and query latencies into the OTLP histograms as they finish.
#[derive(Clone)]
pub struct Recorder {
    http: Histogram<f64>,
    db: Histogram<f64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    pub fn exchange(&self, method: &str, route: &str, status: Option<u16>, seconds: f64) {
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
        ];
        if let Some(s) = status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        self.http.record(seconds, &attrs);
    }

    pub fn query(&self, operation: &str, summary: &str, sqlstate: Option<&str>, seconds: f64) {
        let mut attrs = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", operation.to_string()),
            KeyValue::new("db.query.summary", summary.to_string()),
        ];
        if let Some(state) = sqlstate {
            attrs.push(KeyValue::new("db.response.status_code", state.to_string()));
        }
        self.db.record(seconds, &attrs);
    }
}

/// What the pipeline records into.
pub struct Exporters {
    pub metrics: Recorder,
    pub spans: super::spans::SpanRecorder,
    pub logs: super::logs::FindingLogger,
    /// What the exporters lost, for `herdwatch.agent.dropped`.
    pub counters: Arc<ExportCounters>,
}

/// The running exporters; dropping them flushes and shuts the SDK down.
pub struct Otlp {
    provider: SdkMeterProvider,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
}

impl Drop for Otlp {
    fn drop(&mut self) {
        // Shutdown exports what is pending (bounded by the export timeout).
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("OTLP metrics shutdown: {e}");
        }
        if let Err(e) = self.tracer_provider.shutdown() {
            tracing::debug!("OTLP spans shutdown: {e}");
        }
        if let Err(e) = self.logger_provider.shutdown() {
            tracing::debug!("OTLP logs shutdown: {e}");
        }
    }
}

/// The SDK exports from its own threads, outside tokio, but hyper needs tokio's reactor and
/// timer: this client runs each request on the agent's runtime and awaits it from anywhere.
#[derive(Debug, Clone)]
struct RuntimeHttpClient {
    inner: Arc<dyn opentelemetry_http::HttpClient>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> std::result::Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

fn boundaries() -> Vec<f64> {
    LATENCY_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect()
}

/// Resource attributes describing this host.
pub fn resource() -> Resource {
    let mut attrs = vec![KeyValue::new(
        "host.name",
        crate::pipeline::host::hostname(),
    )];
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        attrs.push(KeyValue::new("host.id", id.trim().to_string()));
    }
    Resource::builder()
        .with_service_name("herdwatch")
        .with_attributes(attrs)
        .build()
}

/// Builds the exporter and instruments. Must run inside the tokio runtime (tonic needs it).
pub fn start(
    config: &OtlpConfig,
    endpoint: &str,
    transport: Transport,
    latest: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<ExportCounters>,
) -> Result<(Otlp, Exporters)> {
    let fail = |e: String| Error::Config {
        origin: "otlp".into(),
        message: e,
    };
    let temporality = if config.temporality == "delta" {
        Temporality::Delta
    } else {
        Temporality::Cumulative
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let retry = || {
        RetryPolicy::default()
            .with_max_retries(config.max_retries)
            .with_initial_delay(Duration::from_millis(config.retry_initial_ms))
            .with_max_delay(Duration::from_millis(config.retry_max_ms))
    };
    let metadata = || -> Result<tonic::metadata::MetadataMap> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in &config.headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| fail(format!("header {k:?}: {e}")))?;
            let value = v.parse().map_err(|e| fail(format!("header {k:?}: {e}")))?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    };
    let http_client = || RuntimeHttpClient {
        inner: Arc::new(
            opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
        ),
        runtime: tokio::runtime::Handle::current(),
    };
    // The HTTP exporter posts to the URL as given: add the signal path to a base URL.
    let http_url = |signal: &str| {
        let base = endpoint.trim_end_matches('/');
        match base.strip_suffix("/v1/metrics") {
            Some(root) => format!("{root}/v1/{signal}"),
            None => format!("{base}/v1/{signal}"),
        }
    };
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_metadata(metadata()?)
            .with_retry_policy(retry())
            .with_temporality(temporality)
            .build(),
        Transport::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(http_client())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(http_url("metrics"))
            .with_timeout(timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .with_retry_policy(retry())
            .with_temporality(temporality)
            .build(),
    }
    .map_err(|e| {
        fail(format!(
            "building the OTLP metric exporter for {endpoint}: {e}"
        ))
    })?;
    let span_exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_metadata(metadata()?)
            .with_retry_policy(retry())
            .build(),
        Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http_client())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(http_url("traces"))
            .with_timeout(timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .with_retry_policy(retry())
            .build(),
    }
    .map_err(|e| {
        fail(format!(
            "building the OTLP span exporter for {endpoint}: {e}"
        ))
    })?;
    // The span queue is bounded (`span_queue`): a slow or absent collector costs dropped
    // spans, counted, never memory. Batches go out once per metrics interval.
    let batch = BatchSpanProcessor::builder(CountedSpanExporter {
        inner: span_exporter,
        counters: counters.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            // One more than ours, so the SDK's own (uncounted) overflow never triggers.
            .with_max_queue_size(config.span_queue + 1)
            .with_scheduled_delay(Duration::from_millis(config.interval_ms))
            .build(),
    )
    .build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource())
        .with_span_processor(BoundedSpanProcessor::new(
            batch,
            counters.clone(),
            config.span_queue,
        ))
        .build();
    let spans = super::spans::SpanRecorder::new(
        &tracer_provider,
        config.trace_ratio,
        config.slow_ms,
        config.query_text,
    );
    let log_exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_metadata(metadata()?)
            .with_retry_policy(retry())
            .build(),
        Transport::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_http_client(http_client())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(http_url("logs"))
            .with_timeout(timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .with_retry_policy(retry())
            .build(),
    }
    .map_err(|e| {
        fail(format!(
            "building the OTLP log exporter for {endpoint}: {e}"
        ))
    })?;
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource())
        .with_batch_exporter(CountedLogExporter {
            inner: log_exporter,
            counters: counters.clone(),
        })
        .build();
    let logs = super::logs::FindingLogger::new(&logger_provider);
    let reader = PeriodicReader::builder(CountedMetricExporter {
        inner: exporter,
        counters: counters.clone(),
    })
    .with_interval(Duration::from_millis(config.interval_ms))
    .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource())
        .with_reader(reader)
        .build();
    let meter = provider.meter("herdwatch");
    let recorder = Recorder {
        http: histogram(&meter, &names::HTTP_SERVER_DURATION),
        db: histogram(&meter, &names::DB_CLIENT_DURATION),
    };
    observe_snapshots(&meter, latest);
    Ok((
        Otlp {
            provider,
            tracer_provider,
            logger_provider,
        },
        Exporters {
            metrics: recorder,
            spans,
            logs,
            counters,
        },
    ))
}

fn histogram(meter: &Meter, def: &MetricDef) -> Histogram<f64> {
    meter
        .f64_histogram(def.name)
        .with_unit(def.unit)
        .with_description(def.help)
        .with_boundaries(boundaries())
        .build()
}

type Observation = (f64, Vec<KeyValue>);

/// Registers one observable instrument whose values come from the latest snapshot.
fn observable(
    meter: &Meter,
    def: &'static MetricDef,
    latest: &watch::Receiver<Arc<Snapshot>>,
    read: fn(&Snapshot) -> Vec<Observation>,
) {
    let latest = latest.clone();
    let callback = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
        let snap = latest.borrow().clone();
        for (value, attrs) in read(&snap) {
            observer.observe(value, &attrs);
        }
    };
    match def.kind {
        names::Kind::Counter => {
            meter
                .f64_observable_counter(def.name)
                .with_unit(def.unit)
                .with_description(def.help)
                .with_callback(callback)
                .build();
        }
        _ => {
            meter
                .f64_observable_gauge(def.name)
                .with_unit(def.unit)
                .with_description(def.help)
                .with_callback(callback)
                .build();
        }
    }
}

fn kv(k: &'static str, v: &str) -> KeyValue {
    KeyValue::new(k, v.to_string())
}

fn observe_snapshots(meter: &Meter, latest: watch::Receiver<Arc<Snapshot>>) {
    for (def, ns) in names::ROUTE_TIMES {
        let latest = latest.clone();
        meter
            .f64_observable_counter(def.name)
            .with_unit(def.unit)
            .with_description(def.help)
            .with_callback(move |observer| {
                let snap = latest.borrow().clone();
                for r in &snap.routes {
                    let attrs = [
                        kv("http.request.method", &r.method),
                        kv("http.route", &r.route),
                    ];
                    observer.observe(ns(r) as f64 / 1e9, &attrs);
                }
            })
            .build();
    }
    observable(meter, &names::DB_CLIENT_ERRORS, &latest, |s| {
        s.queries
            .iter()
            .flat_map(|q| {
                q.errors_by_sqlstate.iter().map(|(state, n)| {
                    (
                        *n as f64,
                        vec![
                            kv("db.system.name", "postgresql"),
                            kv("db.query.summary", &q.summary),
                            kv("db.response.status_code", state),
                        ],
                    )
                })
            })
            .collect()
    });
    observable(meter, &names::WORKERS_BUSY, &latest, |s| {
        s.pools
            .iter()
            .map(|p| (p.busy_workers as f64, vec![kv("service.name", &p.name)]))
            .collect()
    });
    observable(meter, &names::WORKERS_IDLE, &latest, |s| {
        s.pools
            .iter()
            .map(|p| {
                (
                    p.worker_states.len().saturating_sub(p.busy_workers) as f64,
                    vec![kv("service.name", &p.name)],
                )
            })
            .collect()
    });
    observable(meter, &names::HTTP_SERVER_ACTIVE, &latest, |s| {
        s.pools
            .iter()
            .map(|p| (p.active_requests as f64, vec![kv("service.name", &p.name)]))
            .collect()
    });
    observable(meter, &names::ACCEPT_QUEUE, &latest, |s| {
        s.pools
            .iter()
            .filter_map(|p| {
                p.accept_queue()
                    .map(|q| (f64::from(q), vec![kv("service.name", &p.name)]))
            })
            .collect()
    });
    observable(meter, &names::HOST_CPU, &latest, |s| {
        s.host
            .cpu_utilization
            .map(|u| vec![(u, Vec::new())])
            .unwrap_or_default()
    });
    observable(meter, &names::FINDING_ACTIVE, &latest, |s| {
        s.findings
            .iter()
            .map(|f| (if f.active { 1.0 } else { 0.0 }, finding_attrs(f)))
            .collect()
    });
    observable(meter, &names::FINDING_OCCURRENCES, &latest, |s| {
        s.findings
            .iter()
            .map(|f| (f.occurrences as f64, finding_attrs(f)))
            .collect()
    });
    observable(meter, &names::FINDING_INFO, &latest, |s| {
        s.findings
            .iter()
            .map(|f| {
                (
                    1.0,
                    vec![
                        kv("finding.id", &f.id),
                        kv("root_cause", &f.root_cause),
                        kv("prevention", &f.prevention),
                        kv("remediation", &f.remediation),
                    ],
                )
            })
            .collect()
    });
    observable(meter, &names::AGENT_DROPS, &latest, |s| {
        s.agent
            .drops()
            .into_iter()
            .map(|(reason, n)| (n as f64, vec![kv("reason", reason)]))
            .collect()
    });
}

/// The same labels `/metrics` puts on finding series (`prometheus::finding_labels`).
fn finding_attrs(f: &crate::detect::Finding) -> Vec<KeyValue> {
    super::prometheus::finding_labels(f)
        .into_iter()
        .map(|(k, v)| kv(k, v))
        .collect()
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
