//! Findings as everyone reads them: what pattern, how sure, on what evidence, and what to do.
//! The book that keeps them (ids, occurrences, bounds) is `detect::finding`.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Saturation,
    Starvation,
    ThunderingHerd,
    CronAlignment,
    PoolSaturation,
}

impl FindingKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Saturation => "saturation",
            Self::Starvation => "starvation",
            Self::ThunderingHerd => "herd",
            Self::CronAlignment => "cron",
            Self::PoolSaturation => "pool",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What a finding is about. Every field that names something is bounded text (grouped
/// routes, fingerprints, pool names), never a raw literal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `db.query.summary` of the fingerprint, e.g. `SELECT orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The statement's normalised text, bounded (`naming::bounded`): what a person reads,
    /// since many statements share one summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_text: Option<String>,
    /// A PostgreSQL or PgBouncer endpoint, `port 6432 (pgbouncer)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Periodic tasks (short names, see `commands`) or routes that share the pattern.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// The whole command line of each of `tasks`, in the same order, when `tasks` are short
    /// names (cron findings): what exactly runs, for the person who reschedules it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Per route, how many copies of the query its requests issued in the latest occurrence
    /// (herd), most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_copies: Vec<RouteCopies>,
}

/// Copies of a query issued by one route's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCopies {
    pub route: String,
    pub copies: u64,
    /// The application line the route's copies were issued from (`file:line in function()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_site: Option<String>,
}

/// One number the finding rests on, with its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Evidence {
    pub fn new(name: &str, value: f64, unit: &str) -> Self {
        Self {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub kind: FindingKind,
    pub severity: Severity,
    pub active: bool,
    pub occurrences: u64,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    /// Onset of the latest occurrence, and when the agent first reported it.
    pub onset_unix_ms: u64,
    pub reported_unix_ms: u64,
    pub subject: Subject,
    pub evidence: Vec<Evidence>,
    pub root_cause: String,
    /// What stops this recurring.
    pub prevention: String,
    /// A proposal; herdwatch never acts on a process.
    pub remediation: String,
    pub annotations: Vec<String>,
    /// Onsets of the most recent occurrences, oldest first, at most `MAX_RECENT_ONSETS`:
    /// occurrences over time, which first/last seen and the count cannot give. Files
    /// written before it existed read as empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_onsets_unix_ms: Vec<u64>,
}

/// Onsets a finding keeps (the oldest goes first).
pub const MAX_RECENT_ONSETS: usize = 64;

impl Finding {
    pub fn evidence(&self, name: &str) -> Option<f64> {
        self.evidence
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value)
    }
}

/// A change worth telling exporters about (OTLP logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Occurred,
    Resolved,
}
