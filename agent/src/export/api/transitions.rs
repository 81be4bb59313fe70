//! Finding transitions for WatchFindings, derived from successive snapshots' findings: the
//! snapshot is what the API reads, and comparing two of them is all a watcher needs.
//!
//! An occurrence is counted by `occurrences`, so one that began and ended between two
//! snapshots still shows as an onset followed by its resolution.
use std::collections::HashMap;

use crate::model::Finding;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new occurrence began (or was under way when the watch began: `already_active`).
    Onset,
    /// An active occurrence changed: evidence, severity, subject or text.
    Update,
    /// The occurrence is over.
    Resolution,
}

/// One transition of one finding, as it is in the snapshot that shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<'a> {
    pub change: Change,
    pub finding: &'a Finding,
    pub already_active: bool,
}

/// What one watcher has been told: the findings of the last snapshot it saw.
#[derive(Debug, Default)]
pub struct FindingTracker {
    /// None until the first snapshot.
    known: Option<HashMap<String, Finding>>,
}

impl FindingTracker {
    /// The transitions from the previous snapshot's findings to these. The first call reports
    /// the active findings as onsets `already_active`, and history (resolved findings) not
    /// at all.
    pub fn transitions<'a>(&mut self, findings: &'a [Finding]) -> Vec<Transition<'a>> {
        let mut out = Vec::new();
        let mut push = |change, finding, already_active| {
            out.push(Transition {
                change,
                finding,
                already_active,
            })
        };
        match &self.known {
            None => {
                for f in findings.iter().filter(|f| f.active) {
                    push(Change::Onset, f, true);
                }
            }
            Some(known) => {
                for f in findings {
                    let (was_active, new_occurrence, changed) = match known.get(&f.id) {
                        Some(prev) => (
                            prev.active,
                            f.occurrences > prev.occurrences,
                            substance_differs(prev, f),
                        ),
                        // New to this watcher: every occurrence it has is news.
                        None => (false, true, false),
                    };
                    if was_active && (new_occurrence || !f.active) {
                        push(Change::Resolution, f, false);
                    }
                    if new_occurrence {
                        push(Change::Onset, f, false);
                        if !f.active {
                            push(Change::Resolution, f, false);
                        }
                    } else if was_active && f.active && changed {
                        push(Change::Update, f, false);
                    }
                }
            }
        }
        // Only the findings the agent still keeps (bounded by `max_findings`).
        self.known = Some(findings.iter().map(|f| (f.id.clone(), f.clone())).collect());
        out
    }
}

/// Whether a person reading the finding would see something new; the clock fields move on
/// every snapshot and are not news.
fn substance_differs(a: &Finding, b: &Finding) -> bool {
    a.severity != b.severity
        || a.subject != b.subject
        || a.evidence != b.evidence
        || a.root_cause != b.root_cause
        || a.prevention != b.prevention
        || a.remediation != b.remediation
        || a.annotations != b.annotations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FindingKind, Severity, finding::Subject};

    fn finding(id: &str, active: bool, occurrences: u64) -> Finding {
        Finding {
            id: id.into(),
            kind: FindingKind::ThunderingHerd,
            severity: Severity::Warning,
            active,
            occurrences,
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            onset_unix_ms: 1,
            reported_unix_ms: 2,
            subject: Subject::default(),
            evidence: Vec::new(),
            root_cause: "cause".into(),
            prevention: "prevent".into(),
            remediation: "propose".into(),
            annotations: Vec::new(),
            recent_onsets_unix_ms: Vec::new(),
        }
    }

    fn changes(t: &mut FindingTracker, findings: &[Finding]) -> Vec<(Change, String, bool)> {
        t.transitions(findings)
            .into_iter()
            .map(|t| (t.change, t.finding.id.clone(), t.already_active))
            .collect()
    }

    #[test]
    fn the_first_snapshot_reports_what_is_active_now_and_no_history() {
        let mut t = FindingTracker::default();
        let got = changes(&mut t, &[finding("a", true, 3), finding("old", false, 5)]);
        assert_eq!(got, [(Change::Onset, "a".into(), true)]);
    }

    #[test]
    fn onset_update_resolution_and_a_new_occurrence_of_the_same_finding() {
        let mut t = FindingTracker::default();
        assert!(changes(&mut t, &[]).is_empty());
        let mut f = finding("a", true, 1);
        assert_eq!(
            changes(&mut t, std::slice::from_ref(&f)),
            [(Change::Onset, "a".into(), false)]
        );
        // Only the clock moved: nothing to tell.
        f.last_seen_unix_ms = 99;
        assert!(changes(&mut t, std::slice::from_ref(&f)).is_empty());
        f.severity = Severity::Critical;
        assert_eq!(
            changes(&mut t, std::slice::from_ref(&f)),
            [(Change::Update, "a".into(), false)]
        );
        f.active = false;
        assert_eq!(
            changes(&mut t, std::slice::from_ref(&f)),
            [(Change::Resolution, "a".into(), false)]
        );
        assert!(changes(&mut t, std::slice::from_ref(&f)).is_empty());
        // The same pattern an hour later: same id, one more occurrence.
        f.active = true;
        f.occurrences = 2;
        assert_eq!(
            changes(&mut t, std::slice::from_ref(&f)),
            [(Change::Onset, "a".into(), false)]
        );
    }

    #[test]
    fn an_occurrence_within_one_interval_is_an_onset_and_a_resolution() {
        let mut t = FindingTracker::default();
        changes(&mut t, &[finding("a", false, 1)]);
        assert_eq!(
            changes(&mut t, &[finding("a", false, 2), finding("b", false, 1)]),
            [
                (Change::Onset, "a".into(), false),
                (Change::Resolution, "a".into(), false),
                (Change::Onset, "b".into(), false),
                (Change::Resolution, "b".into(), false),
            ]
        );
        // An active one ended and the next began between two snapshots.
        changes(&mut t, &[finding("c", true, 1)]);
        assert_eq!(
            changes(&mut t, &[finding("c", true, 2)]),
            [
                (Change::Resolution, "c".into(), false),
                (Change::Onset, "c".into(), false),
            ]
        );
    }
}
