//! What the agent loop does with each accounting snapshot the pipeline produces before it is
//! published: the detectors run on it, finding transitions go to the OTLP log, and the
//! exporters' own losses (OTLP's, the API's) join the agent's drop counts.
use std::sync::{Arc, atomic::Ordering};

use crate::{
    config::Config,
    detect::Detectors,
    export::{
        api::ApiCounters, delivery::ExportCounters, listen::ConnectionCounters, logs::FindingLogger,
    },
    model::Snapshot,
    pipeline::state::PipelineState,
};

pub(super) struct Analysis {
    /// Fed by the pipeline as queries and processes come and go; run on every snapshot.
    pub detectors: Detectors,
    /// Finding occurrences and resolutions as OTLP logs, when OTLP is on.
    logs: Option<FindingLogger>,
    /// OTLP export losses, when OTLP is on.
    export_counters: Option<Arc<ExportCounters>>,
    /// Watch streams the API refused or cut off, when the API is on.
    api_counters: Option<Arc<ApiCounters>>,
    /// Connections `/metrics` refused and its failed accepts, when it is on.
    metrics_counters: Option<Arc<ConnectionCounters>>,
}

impl Analysis {
    pub fn new(config: &Config, counters: &super::ExporterCounters) -> Self {
        let mut detectors = Detectors::new(&config.detect);
        if let Some(dir) = config.state_dir() {
            detectors.keep_findings_in(dir);
        }
        Self {
            detectors,
            logs: None,
            // The counters stay zero while their exporter is off.
            export_counters: Some(counters.otlp.clone()),
            api_counters: Some(counters.api.clone()),
            metrics_counters: Some(counters.metrics.clone()),
        }
    }

    /// Finding occurrences and resolutions go to `logs` from now on (None: OTLP is off).
    pub fn log_findings_to(&mut self, logs: Option<FindingLogger>) {
        self.logs = logs;
    }

    /// The pipeline's accounting snapshot, completed: findings, pool events and export
    /// losses.
    pub fn snapshot(&mut self, state: &mut PipelineState) -> Snapshot {
        let mut snap = state.snapshot(&mut self.detectors);
        self.detectors.complete(&mut snap);
        let transitions = self.detectors.take_transitions();
        if let Some(logs) = &self.logs {
            for (t, f) in &transitions {
                logs.emit(*t, f);
            }
        }
        if let Some(counters) = &self.export_counters {
            snap.agent.export = counters.drops();
        }
        if let Some(counters) = &self.api_counters {
            counters.add_to(&mut snap.agent.export);
        }
        if let Some(counters) = &self.metrics_counters {
            let drops = &mut snap.agent.export;
            drops.metrics_connections_refused = counters.refused.load(Ordering::Relaxed);
            drops.accept_failed += counters.accept_failed.load(Ordering::Relaxed);
        }
        snap
    }
}
