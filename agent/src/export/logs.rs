//! OTLP logs: each finding's new occurrence and its resolution as a log record — severity from
//! the finding, body = the root-cause sentence, attributes = the subject and the evidence.
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};

use super::resource::PoolNaming;
use crate::model::{Finding, Transition};

#[derive(Clone)]
pub struct FindingLogger {
    logger: SdkLogger,
    /// A finding's pool goes out under the same `service.name` as the pool's metrics.
    naming: PoolNaming,
}

impl std::fmt::Debug for FindingLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FindingLogger")
    }
}

impl FindingLogger {
    pub fn new(provider: &SdkLoggerProvider, naming: PoolNaming) -> Self {
        Self {
            logger: provider.logger("herdwatch"),
            naming,
        }
    }

    pub fn emit(&self, transition: Transition, f: &Finding) {
        let mut record = self.logger.create_log_record();
        let (number, text) = match (transition, f.severity) {
            (Transition::Resolved, _) => (Severity::Info, "INFO"),
            (_, crate::model::Severity::Critical) => (Severity::Error, "ERROR"),
            (_, crate::model::Severity::Warning) => (Severity::Warn, "WARN"),
            (_, crate::model::Severity::Info) => (Severity::Info, "INFO"),
        };
        record.set_event_name(match transition {
            Transition::Occurred => "herdwatch.finding.occurred",
            Transition::Resolved => "herdwatch.finding.resolved",
        });
        record.set_severity_number(number);
        record.set_severity_text(text);
        record.set_body(AnyValue::from(f.root_cause.clone()));
        record.add_attribute("finding.id", f.id.clone());
        record.add_attribute("finding.kind", f.kind.label());
        record.add_attribute("finding.occurrences", f.occurrences as i64);
        record.add_attribute("finding.prevention", f.prevention.clone());
        record.add_attribute("finding.remediation", f.remediation.clone());
        record.add_attribute("host.name", f.subject.host.clone());
        if let Some(pool) = &f.subject.pool {
            record.add_attribute("service.name", self.naming.service_name_by_name(pool));
        }
        for (key, value) in [
            // The pool as the agent names it (server, app, binds), as `herdwatch findings`
            // shows it.
            ("herdwatch.pool", &f.subject.pool),
            ("http.route", &f.subject.route),
            ("db.query.summary", &f.subject.query_summary),
            // The statement's normalised (literal-free, bounded) text and id, which tell apart
            // statements sharing a summary.
            ("db.query.text", &f.subject.query_text),
            ("herdwatch.query.id", &f.subject.fingerprint),
            ("server.endpoint", &f.subject.endpoint),
        ] {
            if let Some(v) = value {
                record.add_attribute(key, v.clone());
            }
        }
        for e in &f.evidence {
            record.add_attribute(format!("evidence.{}", e.name), e.value);
            record.add_attribute(format!("evidence.{}.unit", e.name), e.unit.clone());
        }
        self.logger.emit(record);
    }
}
