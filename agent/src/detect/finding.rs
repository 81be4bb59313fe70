//! The book that keeps findings by a stable id, and what detectors report into it.
//!
//! A finding's id is derived from the pattern, never from time or pids: the same herd on the
//! same query an hour later is the same finding with one more occurrence. That is the point —
//! the book shows *which pattern keeps repeating*, not a stream of one-off alerts.
use std::collections::BTreeMap;

use crate::model::finding::{
    Evidence, Finding, FindingKind, MAX_RECENT_ONSETS, Severity, Subject, Transition,
};
use herdwatch_protocol::fingerprint::fnv1a64;

/// What a detector reports for one pattern on one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: FindingKind,
    /// The stable pattern, e.g. the fingerprint id for a herd; hashed into the finding id.
    pub pattern: String,
    pub severity: Severity,
    pub subject: Subject,
    pub evidence: Vec<Evidence>,
    pub root_cause: String,
    pub prevention: String,
    pub remediation: String,
    /// Lifecycle events (reloads, worker restarts) linked to this occurrence.
    pub annotations: Vec<String>,
    /// When the condition began (unix ms), for "time from onset to finding".
    pub onset_unix_ms: u64,
}

/// A detector's verdict on a pattern at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A new occurrence began.
    Onset(Box<Report>),
    /// The current occurrence continues (evidence refreshed).
    Ongoing(Box<Report>),
    /// The pattern's current occurrence is over.
    Ended { kind: FindingKind, pattern: String },
}

/// The id of a pattern: kind prefix and 16 hex digits of a hash of the pattern.
pub fn finding_id(kind: FindingKind, pattern: &str) -> String {
    format!(
        "{}-{:016x}",
        kind.label(),
        fnv1a64(format!("{}\0{pattern}", kind.label()).as_bytes())
    )
}

/// Adds an occurrence's onset to the bounded history, dropping the oldest past the bound.
fn remember_onset(onsets: &mut Vec<u64>, onset_unix_ms: u64) {
    onsets.push(onset_unix_ms);
    if onsets.len() > MAX_RECENT_ONSETS {
        let excess = onsets.len() - MAX_RECENT_ONSETS;
        onsets.drain(..excess);
    }
}

/// Transitions kept until the pipeline takes them.
const MAX_TRANSITIONS: usize = 256;

/// Findings by id, bounded: past the limit the resolved finding seen longest ago goes first.
#[derive(Debug)]
pub struct FindingBook {
    findings: BTreeMap<String, Finding>,
    max: usize,
    /// Findings dropped to stay within the bound.
    pub evicted: u64,
    transitions: Vec<(Transition, Finding)>,
    /// Counts changes, so the store rewrites the file only when there is something new.
    generation: u64,
}

impl FindingBook {
    pub fn new(max: usize) -> Self {
        Self {
            findings: BTreeMap::new(),
            max: max.max(1),
            evicted: 0,
            transitions: Vec::new(),
            generation: 0,
        }
    }

    /// Findings a previous run kept (see `finding_store`), taken in as they are — no
    /// transitions, nothing counted — within the bound, the most recently seen first.
    pub fn restore(&mut self, mut findings: Vec<Finding>) {
        findings.sort_by_key(|f| std::cmp::Reverse(f.last_seen_unix_ms));
        for f in findings {
            if self.findings.len() >= self.max {
                break;
            }
            self.findings.entry(f.id.clone()).or_insert(f);
        }
        self.generation += 1;
    }

    /// Changes so far (occurrences, refreshed evidence, resolutions, evictions).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn apply(&mut self, signal: Signal, now_unix_ms: u64) {
        self.generation += 1;
        match signal {
            Signal::Onset(r) => self.record(*r, true, now_unix_ms),
            Signal::Ongoing(r) => self.record(*r, false, now_unix_ms),
            Signal::Ended { kind, pattern } => {
                if let Some(f) = self.findings.get_mut(&finding_id(kind, &pattern))
                    && f.active
                {
                    f.active = false;
                    let f = f.clone();
                    self.note(Transition::Resolved, f);
                }
            }
        }
    }

    fn record(&mut self, r: Report, onset: bool, now: u64) {
        let id = finding_id(r.kind, &r.pattern);
        if !self.findings.contains_key(&id) {
            self.make_room();
        }
        let f = self.findings.entry(id.clone()).or_insert_with(|| Finding {
            id,
            kind: r.kind,
            severity: r.severity,
            active: false,
            occurrences: 0,
            first_seen_unix_ms: r.onset_unix_ms,
            last_seen_unix_ms: now,
            onset_unix_ms: r.onset_unix_ms,
            reported_unix_ms: now,
            subject: Subject::default(),
            evidence: Vec::new(),
            root_cause: String::new(),
            prevention: String::new(),
            remediation: String::new(),
            annotations: Vec::new(),
            recent_onsets_unix_ms: Vec::new(),
        });
        // An "ongoing" report for a pattern not active (the agent restarted, or the book
        // evicted it) still starts an occurrence: nothing is counted twice or lost.
        let was_inactive = !f.active;
        if onset || was_inactive {
            f.occurrences += 1;
            f.onset_unix_ms = r.onset_unix_ms;
            f.reported_unix_ms = now;
            remember_onset(&mut f.recent_onsets_unix_ms, r.onset_unix_ms);
        }
        f.active = true;
        f.last_seen_unix_ms = now;
        f.severity = r.severity;
        f.subject = r.subject;
        f.evidence = r.evidence;
        f.root_cause = r.root_cause;
        f.prevention = r.prevention;
        f.remediation = r.remediation;
        if !r.annotations.is_empty() {
            f.annotations = r.annotations;
        }
        if onset || was_inactive {
            let f = f.clone();
            self.note(Transition::Occurred, f);
        }
    }

    fn note(&mut self, t: Transition, f: Finding) {
        if self.transitions.len() < MAX_TRANSITIONS {
            self.transitions.push((t, f));
        }
    }

    /// Occurrences and resolutions since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<(Transition, Finding)> {
        std::mem::take(&mut self.transitions)
    }

    fn make_room(&mut self) {
        while self.findings.len() >= self.max {
            let victim = self
                .findings
                .values()
                .min_by_key(|f| (f.active, f.last_seen_unix_ms))
                .map(|f| f.id.clone());
            match victim {
                Some(id) => {
                    self.findings.remove(&id);
                    self.evicted += 1;
                }
                None => return,
            }
        }
    }

    /// Active first, then most recently seen.
    pub fn list(&self) -> Vec<Finding> {
        let mut v: Vec<Finding> = self.findings.values().cloned().collect();
        v.sort_by(|a, b| {
            b.active
                .cmp(&a.active)
                .then(b.severity.cmp(&a.severity))
                .then(b.last_seen_unix_ms.cmp(&a.last_seen_unix_ms))
                .then(a.id.cmp(&b.id))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pattern: &str, onset: u64) -> Box<Report> {
        Box::new(Report {
            kind: FindingKind::ThunderingHerd,
            pattern: pattern.into(),
            severity: Severity::Warning,
            subject: Subject::default(),
            evidence: vec![Evidence::new("copies", 8.0, "queries")],
            root_cause: "x".into(),
            prevention: "y".into(),
            remediation: "z".into(),
            annotations: Vec::new(),
            onset_unix_ms: onset,
        })
    }

    #[test]
    fn the_same_pattern_is_the_same_finding_with_more_occurrences() {
        let mut book = FindingBook::new(8);
        book.apply(Signal::Onset(report("fp1", 1_000)), 1_100);
        book.apply(Signal::Ongoing(report("fp1", 1_000)), 1_200);
        book.apply(
            Signal::Ended {
                kind: FindingKind::ThunderingHerd,
                pattern: "fp1".into(),
            },
            1_300,
        );
        book.apply(Signal::Onset(report("fp1", 60_000)), 60_100);
        let v = book.list();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].occurrences, 2);
        assert_eq!(v[0].first_seen_unix_ms, 1_000);
        assert_eq!(v[0].onset_unix_ms, 60_000);
        assert_eq!(v[0].id, finding_id(FindingKind::ThunderingHerd, "fp1"));
        assert!(v[0].id.starts_with("herd-"));
    }

    #[test]
    fn each_occurrence_onset_is_kept_and_the_history_is_bounded() {
        let mut book = FindingBook::new(8);
        let end = || Signal::Ended {
            kind: FindingKind::ThunderingHerd,
            pattern: "fp1".into(),
        };
        book.apply(Signal::Onset(report("fp1", 1_000)), 1_100);
        // Refreshing an ongoing occurrence is not a new onset.
        book.apply(Signal::Ongoing(report("fp1", 1_000)), 1_200);
        book.apply(end(), 1_300);
        book.apply(Signal::Onset(report("fp1", 5_000)), 5_100);
        assert_eq!(book.list()[0].recent_onsets_unix_ms, vec![1_000, 5_000]);
        let extra = MAX_RECENT_ONSETS as u64 + 10;
        for n in 0..extra {
            book.apply(end(), 0);
            let at = 10_000 + n * 1_000;
            book.apply(Signal::Onset(report("fp1", at)), at + 100);
        }
        let f = &book.list()[0];
        assert_eq!(f.occurrences, 2 + extra, "the count still counts every one");
        assert_eq!(f.recent_onsets_unix_ms.len(), MAX_RECENT_ONSETS);
        assert_eq!(
            f.recent_onsets_unix_ms.last(),
            Some(&(10_000 + (extra - 1) * 1_000)),
            "the newest is kept"
        );
        assert!(
            f.recent_onsets_unix_ms.windows(2).all(|w| w[0] < w[1]),
            "oldest first"
        );
    }

    #[test]
    fn the_book_is_bounded_and_keeps_active_findings() {
        let mut book = FindingBook::new(2);
        book.apply(Signal::Onset(report("a", 1)), 1);
        book.apply(
            Signal::Ended {
                kind: FindingKind::ThunderingHerd,
                pattern: "a".into(),
            },
            2,
        );
        book.apply(Signal::Onset(report("b", 3)), 3);
        book.apply(Signal::Onset(report("c", 4)), 4);
        let ids: Vec<_> = book.list().into_iter().map(|f| f.id).collect();
        assert_eq!(ids.len(), 2);
        assert!(!ids.contains(&finding_id(FindingKind::ThunderingHerd, "a")));
        assert_eq!(book.evicted, 1);
    }
}
