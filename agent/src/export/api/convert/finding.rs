//! Findings both ways: the agent sends them, and `herdwatch findings` reads them back into the
//! model to print them as it always has. Reading is where a newer agent's values meet an older
//! CLI, so an enum value this side does not know is an error naming it, never a guess.
use herdwatch_proto::v1 as pb;

use crate::{
    error::Error,
    model::{
        Finding, FindingKind, Severity,
        finding::{Evidence, RouteCopies, Subject},
    },
};

impl From<FindingKind> for pb::FindingKind {
    fn from(kind: FindingKind) -> Self {
        match kind {
            FindingKind::Saturation => Self::Saturation,
            FindingKind::Starvation => Self::Starvation,
            FindingKind::ThunderingHerd => Self::ThunderingHerd,
            FindingKind::CronAlignment => Self::CronAlignment,
            FindingKind::PoolSaturation => Self::PoolSaturation,
        }
    }
}

/// A finding kind off the wire (`field` names where it came from, for the error).
pub fn finding_kind(value: i32, field: &'static str) -> Result<FindingKind, Error> {
    let unknown = Error::UnknownEnumValue { field, value };
    match pb::FindingKind::try_from(value).map_err(|_| unknown)? {
        pb::FindingKind::Saturation => Ok(FindingKind::Saturation),
        pb::FindingKind::Starvation => Ok(FindingKind::Starvation),
        pb::FindingKind::ThunderingHerd => Ok(FindingKind::ThunderingHerd),
        pb::FindingKind::CronAlignment => Ok(FindingKind::CronAlignment),
        pb::FindingKind::PoolSaturation => Ok(FindingKind::PoolSaturation),
        pb::FindingKind::Unspecified => Err(Error::UnknownEnumValue { field, value }),
    }
}

impl From<Severity> for pb::Severity {
    fn from(severity: Severity) -> Self {
        match severity {
            Severity::Info => Self::Info,
            Severity::Warning => Self::Warning,
            Severity::Critical => Self::Critical,
        }
    }
}

fn severity(value: i32) -> Result<Severity, Error> {
    let field = "Finding.severity";
    match pb::Severity::try_from(value).map_err(|_| Error::UnknownEnumValue { field, value })? {
        pb::Severity::Info => Ok(Severity::Info),
        pb::Severity::Warning => Ok(Severity::Warning),
        pb::Severity::Critical => Ok(Severity::Critical),
        pb::Severity::Unspecified => Err(Error::UnknownEnumValue { field, value }),
    }
}

impl From<&Subject> for pb::Subject {
    fn from(s: &Subject) -> Self {
        Self {
            host: s.host.clone(),
            pool: s.pool.clone(),
            route: s.route.clone(),
            query_summary: s.query_summary.clone(),
            fingerprint: s.fingerprint.clone(),
            query_text: s.query_text.clone(),
            endpoint: s.endpoint.clone(),
            tasks: s.tasks.clone(),
            commands: s.commands.clone(),
            routes: s.routes.clone(),
            route_copies: s
                .route_copies
                .iter()
                .map(|r| pb::RouteCopies {
                    route: r.route.clone(),
                    copies: r.copies,
                    call_site: r.call_site.clone(),
                })
                .collect(),
        }
    }
}

impl From<pb::Subject> for Subject {
    fn from(s: pb::Subject) -> Self {
        Self {
            host: s.host,
            pool: s.pool,
            route: s.route,
            query_summary: s.query_summary,
            fingerprint: s.fingerprint,
            query_text: s.query_text,
            endpoint: s.endpoint,
            tasks: s.tasks,
            commands: s.commands,
            routes: s.routes,
            route_copies: s
                .route_copies
                .into_iter()
                .map(|r| RouteCopies {
                    route: r.route,
                    copies: r.copies,
                    call_site: r.call_site,
                })
                .collect(),
        }
    }
}

impl From<&Finding> for pb::Finding {
    fn from(f: &Finding) -> Self {
        Self {
            id: f.id.clone(),
            kind: pb::FindingKind::from(f.kind).into(),
            severity: pb::Severity::from(f.severity).into(),
            active: f.active,
            occurrences: f.occurrences,
            first_seen_unix_ms: f.first_seen_unix_ms,
            last_seen_unix_ms: f.last_seen_unix_ms,
            onset_unix_ms: f.onset_unix_ms,
            reported_unix_ms: f.reported_unix_ms,
            subject: Some(pb::Subject::from(&f.subject)),
            evidence: f
                .evidence
                .iter()
                .map(|e| pb::Evidence {
                    name: e.name.clone(),
                    value: e.value,
                    unit: e.unit.clone(),
                })
                .collect(),
            root_cause: f.root_cause.clone(),
            prevention: f.prevention.clone(),
            remediation: f.remediation.clone(),
            annotations: f.annotations.clone(),
            recent_onsets_unix_ms: f.recent_onsets_unix_ms.clone(),
        }
    }
}

impl TryFrom<pb::Finding> for Finding {
    type Error = Error;

    fn try_from(f: pb::Finding) -> Result<Self, Error> {
        Ok(Self {
            kind: finding_kind(f.kind, "Finding.kind")?,
            severity: severity(f.severity)?,
            id: f.id,
            active: f.active,
            occurrences: f.occurrences,
            first_seen_unix_ms: f.first_seen_unix_ms,
            last_seen_unix_ms: f.last_seen_unix_ms,
            onset_unix_ms: f.onset_unix_ms,
            reported_unix_ms: f.reported_unix_ms,
            // proto3: an absent message is the empty one.
            subject: f.subject.map(Subject::from).unwrap_or_default(),
            evidence: f
                .evidence
                .into_iter()
                .map(|e| Evidence {
                    name: e.name,
                    value: e.value,
                    unit: e.unit,
                })
                .collect(),
            root_cause: f.root_cause,
            prevention: f.prevention,
            remediation: f.remediation,
            annotations: f.annotations,
            recent_onsets_unix_ms: f.recent_onsets_unix_ms,
        })
    }
}
