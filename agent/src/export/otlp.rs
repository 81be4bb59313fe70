//! OTLP metrics through the OpenTelemetry SDK and `opentelemetry-otlp`, over gRPC (tonic) or
//! HTTP/protobuf. Off unless an endpoint is configured (`[otlp] endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
//!
//! Latency histograms are recorded per request and per query as they finish (`Recorder`, fed
//! by the aggregates); everything else is observed from the latest snapshot when the reader
//! collects, so OTLP and `/metrics` report the same numbers under the same names (`names.rs`).
//! The SDK's periodic reader exports on its own thread with a timeout; when the collector is
//! down each export fails and is dropped (and logged), so memory stays flat.
use std::sync::Arc;

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
};
use opentelemetry_sdk::{
    logs::SdkLoggerProvider, metrics::SdkMeterProvider, trace::SdkTracerProvider,
};
use tokio::sync::watch;

use super::delivery::ExportCounters;
use crate::{
    error::Result,
    model::{FinishedExchange, FinishedQuery, RecordSink, Snapshot},
};

mod config;
mod factory;
mod observe;

pub use config::{OtlpConfig, Transport};
use factory::Factory;
use observe::{observe_agent, observe_pool};

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
        // On the agent's resource, not the pool's: `/metrics` has one query histogram per
        // host (its statistics are per fingerprint, not per pool), and both paths must
        // select the same series (`job="herdwatch"`).
        self.agent.metrics.query(
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
    let logs = super::logs::FindingLogger::new(
        &logger_provider,
        super::resource::PoolNaming::new(config.services.clone()),
    );
    let meter = provider.meter("herdwatch");
    let agent = factory.signals(&meter, &tracer_provider);
    let naming = Arc::new(super::resource::PoolNaming::new(config.services.clone()));
    observe_agent(&meter, latest.clone(), naming);
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
