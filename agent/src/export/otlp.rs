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
    model::{FinishedExchange, FinishedQuery, LATENCY_BUCKETS_MS, RecordSink, Snapshot},
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
    pub telemetry: Telemetry,
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

/// Shuts providers down, which exports what is pending (bounded by the export timeout).
fn shut_down(whose: &str, meters: &SdkMeterProvider, tracers: &SdkTracerProvider) {
    if let Err(e) = meters.shutdown() {
        tracing::debug!("OTLP {whose} metrics shutdown: {e}");
    }
    if let Err(e) = tracers.shutdown() {
        tracing::debug!("OTLP {whose} spans shutdown: {e}");
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        shut_down("agent", &self.provider, &self.tracer_provider);
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

/// One signal's exporter over the configured transport: `$builder` is the signal's
/// `…Exporter::builder()`, `$path` its HTTP path, then builder calls both transports take.
macro_rules! otlp_exporter {
    ($factory:expr, $builder:expr, $path:literal $(, $method:ident($arg:expr))*) => {
        match $factory.transport {
            Transport::Grpc => $builder
                .with_tonic()
                .with_endpoint(&$factory.endpoint)
                .with_timeout($factory.timeout())
                .with_metadata($factory.metadata()?)
                .with_retry_policy($factory.retry())
                $(.$method($arg))*
                .build(),
            Transport::HttpProtobuf => $builder
                .with_http()
                .with_http_client($factory.http_client())
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint($factory.http_url($path))
                .with_timeout($factory.timeout())
                .with_headers($factory.headers())
                .with_retry_policy($factory.retry())
                $(.$method($arg))*
                .build(),
        }
    };
}

/// Builds one resource's exporters and providers. Kept for the agent's life: pools found later
/// get theirs from it.
struct Factory {
    config: OtlpConfig,
    endpoint: String,
    transport: Transport,
    counters: Arc<ExportCounters>,
    runtime: tokio::runtime::Handle,
}

impl Factory {
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Config {
            origin: "otlp".into(),
            message: format!(
                "building the OTLP {what} exporter for {}: {e}",
                self.endpoint
            ),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy::default()
            .with_max_retries(self.config.max_retries)
            .with_initial_delay(Duration::from_millis(self.config.retry_initial_ms))
            .with_max_delay(Duration::from_millis(self.config.retry_max_ms))
    }

    fn metadata(&self) -> Result<tonic::metadata::MetadataMap> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in &self.config.headers {
            let bad = |e: &dyn std::fmt::Display| Error::Config {
                origin: "otlp".into(),
                message: format!("header {k:?}: {e}"),
            };
            let key =
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|e| bad(&e))?;
            let value = v.parse().map_err(|e| bad(&e))?;
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    fn http_client(&self) -> RuntimeHttpClient {
        RuntimeHttpClient {
            inner: Arc::new(
                opentelemetry_http::hyper::HyperClient::with_default_connector(
                    self.timeout(),
                    None,
                ),
            ),
            runtime: self.runtime.clone(),
        }
    }

    /// The HTTP exporter posts to the URL as given: add the signal path to a base URL.
    fn http_url(&self, signal: &str) -> String {
        let base = self.endpoint.trim_end_matches('/');
        match base.strip_suffix("/v1/metrics") {
            Some(root) => format!("{root}/v1/{signal}"),
            None => format!("{base}/v1/{signal}"),
        }
    }

    fn headers(&self) -> std::collections::HashMap<String, String> {
        self.config.headers.clone().into_iter().collect()
    }

    fn meter_provider(&self, resource: Resource) -> Result<SdkMeterProvider> {
        // tonic builds its (lazy) channel on the runtime.
        let _runtime = self.runtime.enter();
        let temporality = if self.config.temporality == "delta" {
            Temporality::Delta
        } else {
            Temporality::Cumulative
        };
        let exporter = otlp_exporter!(
            self,
            opentelemetry_otlp::MetricExporter::builder(),
            "metrics",
            with_temporality(temporality)
        )
        .map_err(|e| self.fail("metric", e))?;
        let reader = PeriodicReader::builder(CountedMetricExporter {
            inner: exporter,
            counters: self.counters.clone(),
        })
        .with_interval(Duration::from_millis(self.config.interval_ms))
        .build();
        Ok(SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build())
    }

    fn tracer_provider(&self, resource: Resource) -> Result<SdkTracerProvider> {
        let _runtime = self.runtime.enter();
        let exporter = otlp_exporter!(self, opentelemetry_otlp::SpanExporter::builder(), "traces")
            .map_err(|e| self.fail("span", e))?;
        // The span queue is bounded (`span_queue`, over all services together): a slow or
        // absent collector costs dropped spans, counted, never memory. Batches go out once
        // per metrics interval.
        let batch = BatchSpanProcessor::builder(CountedSpanExporter {
            inner: exporter,
            counters: self.counters.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                // One more than ours, so the SDK's own (uncounted) overflow never triggers.
                .with_max_queue_size(self.config.span_queue + 1)
                .with_scheduled_delay(Duration::from_millis(self.config.interval_ms))
                .build(),
        )
        .build();
        Ok(SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(BoundedSpanProcessor::new(
                batch,
                self.counters.clone(),
                self.config.span_queue,
            ))
            .build())
    }

    fn logger_provider(&self, resource: Resource) -> Result<SdkLoggerProvider> {
        let _runtime = self.runtime.enter();
        let exporter = otlp_exporter!(self, opentelemetry_otlp::LogExporter::builder(), "logs")
            .map_err(|e| self.fail("log", e))?;
        Ok(SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(CountedLogExporter {
                inner: exporter,
                counters: self.counters.clone(),
            })
            .build())
    }

    fn signals(&self, meter: &Meter, tracers: &SdkTracerProvider) -> Signals {
        Signals {
            metrics: Recorder {
                http: histogram(meter, &names::HTTP_SERVER_DURATION),
                db: histogram(meter, &names::DB_CLIENT_DURATION),
            },
            spans: super::spans::SpanRecorder::new(
                tracers,
                self.config.trace_ratio,
                self.config.slow_ms,
                self.config.query_text,
            ),
        }
    }
}

/// Where one service's requests and queries are recorded: its histograms and its spans.
#[derive(Debug, Clone)]
pub struct Signals {
    pub metrics: Recorder,
    pub spans: super::spans::SpanRecorder,
}

/// A pool's own service: its providers, shut down (flushed) when it is dropped.
struct PoolService {
    signals: Signals,
    meters: SdkMeterProvider,
    tracers: SdkTracerProvider,
}

impl Drop for PoolService {
    fn drop(&mut self) {
        shut_down("pool", &self.meters, &self.tracers);
    }
}

/// Pools with a service of their own at most; a pool beyond (a host running hundreds of apps)
/// reports under the agent's resource.
const MAX_POOL_SERVICES: usize = 64;

/// Telemetry by service: one per pool (its resource names the app), the agent's for the rest
/// (processes outside any pool, such as cron jobs).
pub struct Telemetry {
    factory: Factory,
    latest: watch::Receiver<Arc<Snapshot>>,
    agent: Signals,
    pools: std::collections::HashMap<String, PoolService>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Each pool's shutdown flushes within the export timeout; side by side, a down
        // collector costs one timeout at exit, not one per pool.
        let pools: Vec<PoolService> = self.pools.drain().map(|(_, p)| p).collect();
        std::thread::scope(|scope| {
            for pool in pools {
                scope.spawn(move || drop(pool));
            }
        });
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Telemetry({} pool services)", self.pools.len())
    }
}

/// The OTLP recorder subscribes to the pipeline's finished records: latencies go into the
/// histograms and requests (with their queries) into spans, under the service of the pool
/// that served or issued them.
impl RecordSink for Telemetry {
    fn exchange(&mut self, x: &FinishedExchange<'_>) {
        let signals = self.signals(x.pool);
        let seconds = x.finished_ns.saturating_sub(x.started_ns) as f64 / 1e9;
        signals
            .metrics
            .exchange(x.method, x.route, x.status, seconds);
        signals.spans.record(x);
    }

    fn query(&mut self, q: &FinishedQuery<'_>) {
        self.signals(q.pool).metrics.query(
            q.operation,
            q.summary,
            q.sqlstate,
            q.duration_ns as f64 / 1e9,
        );
    }

    fn pool_found(
        &mut self,
        name: &str,
        pool: &crate::procs::Pool,
        master_cmdline: &dyn Fn() -> Vec<String>,
    ) {
        self.add_pool(name, pool, master_cmdline);
    }

    fn wants_query_spans(&self) -> bool {
        true
    }

    fn wants_query_text(&self) -> bool {
        self.query_text()
    }
}

impl Telemetry {
    /// The signals of `pool` (by pool name), or the agent's.
    pub fn signals(&self, pool: Option<&str>) -> &Signals {
        pool.and_then(|p| self.pools.get(p))
            .map_or(&self.agent, |s| &s.signals)
    }

    /// Whether query spans carry their normalised text.
    pub fn query_text(&self) -> bool {
        self.factory.config.query_text
    }

    /// Gives a newly seen pool its service (once; bounded): named by `[otlp.services]` or its
    /// app module, described by its master's command line and cgroup (read only when new).
    pub fn add_pool(
        &mut self,
        pool_name: &str,
        pool: &crate::procs::pools::Pool,
        master_cmdline: &dyn Fn() -> Vec<String>,
    ) {
        if self.pools.contains_key(pool_name) || self.pools.len() >= MAX_POOL_SERVICES {
            return;
        }
        let service = super::resource::pool_service_name(pool, &self.factory.config.services);
        let cgroup = crate::procs::cgroup::of_pid(pool.master).map(|c| c.path);
        let env = |k: &str| std::env::var(k).ok();
        let resource =
            super::resource::pool(pool, &service, &master_cmdline(), cgroup.as_deref(), &env);
        let built = self
            .factory
            .meter_provider(resource.clone())
            .and_then(|meters| {
                let tracers = self.factory.tracer_provider(resource)?;
                Ok((meters, tracers))
            });
        let (meters, tracers) = match built {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("no OTLP service for pool {pool_name}: {e}");
                return;
            }
        };
        let meter = meters.meter("herdwatch");
        observe_pool(&meter, &self.latest, pool_name);
        let signals = self.factory.signals(&meter, &tracers);
        self.pools.insert(
            pool_name.to_string(),
            PoolService {
                signals,
                meters,
                tracers,
            },
        );
    }
}

/// Builds the agent's exporters and instruments; pools get theirs as they are found
/// (`Telemetry::add_pool`). Must run inside the tokio runtime (tonic needs it).
pub fn start(
    config: &OtlpConfig,
    endpoint: &str,
    transport: Transport,
    latest: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<ExportCounters>,
) -> Result<(Otlp, Exporters)> {
    let factory = Factory {
        config: config.clone(),
        endpoint: endpoint.to_string(),
        transport,
        counters: counters.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    // Validate the headers once, here, so a bad one is a start-up error.
    factory.metadata()?;
    let env = |k: &str| std::env::var(k).ok();
    let resource = super::resource::agent(&env);
    let provider = factory.meter_provider(resource.clone())?;
    let tracer_provider = factory.tracer_provider(resource.clone())?;
    let logger_provider = factory.logger_provider(resource)?;
    let logs = super::logs::FindingLogger::new(&logger_provider);
    let meter = provider.meter("herdwatch");
    let agent = factory.signals(&meter, &tracer_provider);
    observe_agent(&meter, latest.clone());
    Ok((
        Otlp {
            provider,
            tracer_provider,
            logger_provider,
        },
        Exporters {
            telemetry: Telemetry {
                factory,
                latest,
                agent,
                pools: std::collections::HashMap::new(),
            },
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
    read: impl Fn(&Snapshot) -> Vec<Observation> + Send + Sync + 'static,
) {
    let latest = latest.clone();
    let callback = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
        let snap = latest.borrow().clone();
        for (value, attrs) in merge_observations(read(&snap)) {
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

/// Sums observations with the same attribute set. The SDK keeps only the last of several
/// observations of one set in a callback (observable instruments are precomputed values), so
/// two fingerprints sharing a `db.query.summary` would lose all but one count; `/metrics`
/// sums them the same way, so both paths agree. Order of first appearance is kept.
fn merge_observations(observations: Vec<Observation>) -> Vec<Observation> {
    let mut merged: Vec<Observation> = Vec::with_capacity(observations.len());
    let mut index: std::collections::HashMap<Vec<(String, String)>, usize> =
        std::collections::HashMap::with_capacity(observations.len());
    for (value, attrs) in observations {
        let mut key: Vec<(String, String)> = attrs
            .iter()
            .map(|kv| (kv.key.as_str().to_string(), kv.value.as_str().into_owned()))
            .collect();
        key.sort();
        match index.get(&key) {
            Some(i) => merged[*i].0 += value,
            None => {
                index.insert(key, merged.len());
                merged.push((value, attrs));
            }
        }
    }
    merged
}

fn kv(k: &'static str, v: &str) -> KeyValue {
    KeyValue::new(k, v.to_string())
}

/// Route CPU and DB-wait counters for the routes `keep` selects (a pool's, or those outside
/// any pool).
fn observe_route_times(
    meter: &Meter,
    latest: &watch::Receiver<Arc<Snapshot>>,
    keep: impl Fn(&crate::model::RouteStats) -> bool + Clone + Send + Sync + 'static,
) {
    for (def, ns) in names::ROUTE_TIMES {
        let keep = keep.clone();
        observable(meter, def, latest, move |s| {
            s.routes
                .iter()
                .filter(|r| keep(r))
                .map(|r| {
                    let attrs = vec![
                        kv("http.request.method", &r.method),
                        kv("http.route", &r.route),
                    ];
                    (ns(r) as f64 / 1e9, attrs)
                })
                .collect()
        });
    }
}

/// A pool's own instruments, on its service's meter: its workers, its requests in flight,
/// its CPU and run-queue delay, its routes' CPU and DB wait.
fn observe_pool(meter: &Meter, latest: &watch::Receiver<Arc<Snapshot>>, pool: &str) {
    let owned = pool.to_string();
    observe_route_times(meter, latest, move |r| r.pool == owned);
    type PoolValue = fn(&crate::model::PoolView) -> Option<f64>;
    let gauges: [(&'static MetricDef, PoolValue); 4] = [
        (&names::WORKERS_BUSY, |p| Some(p.busy_workers as f64)),
        (&names::WORKERS_IDLE, |p| {
            Some(p.worker_states.len().saturating_sub(p.busy_workers) as f64)
        }),
        (&names::HTTP_SERVER_ACTIVE, |p| {
            Some(p.active_requests as f64)
        }),
        (&names::ACCEPT_QUEUE, |p| p.accept_queue().map(f64::from)),
    ];
    for (def, value) in gauges {
        let pool = pool.to_string();
        observable(meter, def, latest, move |s| {
            // Pools with one name are one service: their values add up, as on `/metrics`.
            let values: Vec<f64> = s
                .pools
                .iter()
                .filter(|p| p.name == pool)
                .filter_map(value)
                .collect();
            if values.is_empty() {
                Vec::new()
            } else {
                vec![(values.iter().sum(), Vec::new())]
            }
        });
    }
    for (def, samples) in names::POOL_TIMES {
        let pool = pool.to_string();
        observable(meter, def, latest, move |s| {
            s.pools
                .iter()
                .filter(|p| p.name == pool)
                .flat_map(samples)
                .map(|(mode, ns)| {
                    let attrs = mode.map(|m| kv("cpu.mode", m)).into_iter().collect();
                    (ns as f64 / 1e9, attrs)
                })
                .collect()
        });
    }
}

/// The agent's own instruments: host, findings, drops, query errors, and the routes of
/// processes outside any pool.
fn observe_agent(meter: &Meter, latest: watch::Receiver<Arc<Snapshot>>) {
    observe_route_times(meter, &latest, |r| r.pool.is_empty());
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
fn finding_attrs(f: &crate::model::Finding) -> Vec<KeyValue> {
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

    #[test]
    fn observations_with_one_attribute_set_are_summed_in_any_attribute_order() {
        let a = vec![
            kv("db.query.summary", "SELECT invoices"),
            kv("db.response.status_code", "57014"),
        ];
        let b = vec![
            kv("db.response.status_code", "57014"),
            kv("db.query.summary", "SELECT invoices"),
        ];
        let c = vec![
            kv("db.query.summary", "SELECT orders"),
            kv("db.response.status_code", "57014"),
        ];
        let merged = merge_observations(vec![(2.0, a.clone()), (5.0, c.clone()), (1.0, b)]);
        assert_eq!(merged, vec![(3.0, a), (5.0, c)]);
    }
}
