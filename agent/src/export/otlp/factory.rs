//! Builds one resource's OTLP exporters and SDK providers (metrics, spans, logs) over gRPC or
//! HTTP/protobuf, each wrapped so what it loses is counted.
use std::{sync::Arc, time::Duration};

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry_otlp::{
    RetryPolicy, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::{
    Resource,
    logs::SdkLoggerProvider,
    metrics::{PeriodicReader, SdkMeterProvider, Temporality},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};

use super::{OtlpConfig, Recorder, Signals, Transport};
use crate::{
    error::{Error, Result},
    export::{
        delivery::{
            BoundedSpanProcessor, CountedLogExporter, CountedMetricExporter, CountedSpanExporter,
            ExportCounters,
        },
        names::{self, MetricDef},
        spans::SpanRecorder,
    },
    model::LATENCY_BUCKETS_MS,
};

/// The SDK exports from its own threads, outside tokio, but hyper needs tokio's reactor and
/// timer: this client runs each request on the agent's runtime and awaits it from anywhere.
#[derive(Debug, Clone)]
struct RuntimeHttpClient {
    inner: Arc<dyn opentelemetry_http::HttpClient>,
    pub(super) runtime: tokio::runtime::Handle,
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
pub(super) struct Factory {
    pub(super) config: OtlpConfig,
    pub(super) endpoint: String,
    pub(super) transport: Transport,
    pub(super) counters: Arc<ExportCounters>,
    pub(super) runtime: tokio::runtime::Handle,
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

    pub(super) fn metadata(&self) -> Result<tonic::metadata::MetadataMap> {
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

    pub(super) fn meter_provider(&self, resource: Resource) -> Result<SdkMeterProvider> {
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

    pub(super) fn tracer_provider(&self, resource: Resource) -> Result<SdkTracerProvider> {
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

    pub(super) fn logger_provider(&self, resource: Resource) -> Result<SdkLoggerProvider> {
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

    pub(super) fn signals(&self, meter: &Meter, tracers: &SdkTracerProvider) -> Signals {
        Signals {
            metrics: Recorder {
                http: histogram(meter, &names::HTTP_SERVER_DURATION),
                db: histogram(meter, &names::DB_CLIENT_DURATION),
            },
            spans: SpanRecorder::new(
                tracers,
                self.config.trace_ratio,
                self.config.slow_ms,
                self.config.query_text,
            ),
        }
    }
}

fn histogram(meter: &Meter, def: &MetricDef) -> Histogram<f64> {
    meter
        .f64_histogram(def.name)
        .with_unit(def.unit)
        .with_description(def.help)
        .with_boundaries(boundaries())
        .build()
}
