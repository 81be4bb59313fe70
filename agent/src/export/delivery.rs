//! Counting what OTLP export loses. The SDK's batch processors drop on a full queue and its
//! exporters give up after their retries, but it only logs either; these wrappers count both
//! so they reach `herdwatch.agent.dropped` (reasons `otlp_*`) like every other loss.
//!
//! The span queue bound is enforced here, in front of the SDK's batch processor: spans ended
//! minus spans handed to the exporter is exactly what waits in that processor, so a span that
//! would overflow it is dropped and counted here instead of silently there.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    logs::{LogBatch, LogExporter},
    metrics::{Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};

/// Losses on the OTLP path, shared by the exporters (writers) and the snapshot (reader).
#[derive(Debug, Default)]
pub struct ExportCounters {
    spans_ended: AtomicU64,
    spans_handed: AtomicU64,
    pub spans_queue_full: AtomicU64,
    pub spans_failed: AtomicU64,
    pub logs_failed: AtomicU64,
    pub metric_exports_failed: AtomicU64,
}

impl ExportCounters {
    pub fn drops(&self) -> crate::model::ExportDrops {
        use crate::model::ExportDrops;
        ExportDrops {
            spans_queue_full: self.spans_queue_full.load(Ordering::Relaxed),
            spans_failed: self.spans_failed.load(Ordering::Relaxed),
            logs_failed: self.logs_failed.load(Ordering::Relaxed),
            metric_exports_failed: self.metric_exports_failed.load(Ordering::Relaxed),
            // The API counts its own (`api::bounds::ApiCounters`).
            ..ExportDrops::default()
        }
    }
}

/// Counts spans handed to the exporter, and those in failed exports.
#[derive(Debug)]
pub struct CountedSpanExporter<E> {
    pub inner: E,
    pub counters: Arc<ExportCounters>,
}

impl<E: SpanExporter> SpanExporter for CountedSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.counters.spans_handed.fetch_add(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.counters.spans_failed.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Keeps the inner (batch) processor's queue below `capacity`, counting what it turns away.
#[derive(Debug)]
pub struct BoundedSpanProcessor<P> {
    inner: P,
    counters: Arc<ExportCounters>,
    capacity: u64,
}

impl<P> BoundedSpanProcessor<P> {
    pub fn new(inner: P, counters: Arc<ExportCounters>, capacity: usize) -> Self {
        Self {
            inner,
            counters,
            capacity: capacity as u64,
        }
    }

    /// Spans ended and not yet handed to the exporter: what waits in the inner queue.
    fn waiting(&self) -> u64 {
        let ended = self.counters.spans_ended.load(Ordering::Relaxed);
        let handed = self.counters.spans_handed.load(Ordering::Relaxed);
        ended.saturating_sub(handed)
    }
}

impl<P: SpanProcessor> SpanProcessor for BoundedSpanProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting() >= self.capacity {
            self.counters
                .spans_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.spans_ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts log records in failed exports.
#[derive(Debug)]
pub struct CountedLogExporter<E> {
    pub inner: E,
    pub counters: Arc<ExportCounters>,
}

impl<E: LogExporter> LogExporter for CountedLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.counters.logs_failed.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts failed metric exports.
#[derive(Debug)]
pub struct CountedMetricExporter<E> {
    pub inner: E,
    pub counters: Arc<ExportCounters>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountedMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        if result.is_err() {
            self.counters
                .metric_exports_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::{error::OTelSdkError, trace::SdkTracerProvider};

    /// An exporter that always fails, as one facing a collector that is down.
    #[derive(Debug)]
    struct Down;

    impl SpanExporter for Down {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("collector down".into()))
        }
    }

    /// A processor that keeps everything it is given (never hands it to an exporter).
    #[derive(Debug, Default)]
    struct Stuck;

    impl SpanProcessor for Stuck {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}
        fn on_end(&self, _span: SpanData) {}
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_beyond_its_capacity() {
        let counters = Arc::new(ExportCounters::default());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedSpanProcessor::new(Stuck, counters.clone(), 5))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..12 {
            tracer.in_span("request", |_| {});
        }
        assert_eq!(counters.drops().spans_queue_full, 7);
        assert_eq!(counters.waiting_for_test(), 5);
    }

    #[test]
    fn failed_exports_count_their_spans() {
        let counters = Arc::new(ExportCounters::default());
        let exporter = CountedSpanExporter {
            inner: Down,
            counters: counters.clone(),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedSpanProcessor::new(
                opentelemetry_sdk::trace::SimpleSpanProcessor::new(exporter),
                counters.clone(),
                100,
            ))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..3 {
            tracer.in_span("request", |_| {});
        }
        let drops = counters.drops();
        assert_eq!((drops.spans_failed, drops.spans_queue_full), (3, 0));
    }

    impl ExportCounters {
        fn waiting_for_test(&self) -> u64 {
            self.spans_ended.load(Ordering::Relaxed) - self.spans_handed.load(Ordering::Relaxed)
        }
    }
}
