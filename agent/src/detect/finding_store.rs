//! The finding book on disk (`findings.json` in `state_dir`), so an upgrade or a restart does
//! not erase "this pattern has repeated 14 times": ids, occurrences, first and last seen and
//! the latest evidence survive, and the next occurrence of a pattern counts on from there.
//!
//! What was active at shutdown comes back resolved: the agent cannot know whether the
//! condition lasted while it was down, so a pattern still present after the restart starts a
//! new occurrence once its detector sees it again (an occurrence that spans a restart counts
//! twice; none is lost).
//!
//! Bounded by the book's own limit; written at most every [`SAVE_EVERY`] when the book
//! changed, and at shutdown. A corrupt, truncated or newer file is set aside with one warning
//! and the book starts fresh; a single finding a newer agent wrote in a shape this one does
//! not know is skipped (counted in the warning), not the whole book.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::finding::FindingBook;
use crate::{model::Finding, state_file};

/// The file in the state directory.
pub const FILE_NAME: &str = "findings.json";
/// Format version written; a file with a higher one is from a newer agent and not read.
const VERSION: u32 = 1;
/// A file larger than this is not read: the book's bound (hundreds of findings of a few KiB)
/// keeps what we write far below it.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// How often a changed book is written.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct FileBook {
    version: u32,
    /// Each finding read on its own: one this agent cannot read costs only itself.
    findings: Vec<serde_json::Value>,
}

/// Where the book is written, and when it last was.
#[derive(Debug)]
pub struct FindingStore {
    path: PathBuf,
    last_save: Option<Instant>,
    /// The book's change count at the last write: unchanged books are not rewritten.
    saved_generation: Option<u64>,
}

impl FindingStore {
    /// The store in `dir` (created if missing) and the findings a previous run left there.
    /// Never fails: an unusable directory means no store (one warning), an unusable file a
    /// fresh book (one warning, the file kept as `findings.json.bad`).
    pub fn open(dir: &Path) -> (Option<Self>, Vec<Finding>) {
        if let Err(e) = state_file::writable_dir(dir) {
            tracing::warn!(
                "state directory {}: {e}; findings will start afresh at every restart",
                dir.display()
            );
            return (None, Vec::new());
        }
        let path = dir.join(FILE_NAME);
        let findings = match state_file::read_versioned::<FileBook>(&path, MAX_FILE_BYTES, VERSION)
        {
            Ok(Some(file)) => restored(file, &path),
            Ok(None) => Vec::new(),
            Err(why) => {
                tracing::warn!(
                    "finding book {}: {why}; starting a fresh one",
                    path.display()
                );
                state_file::set_aside(&path);
                Vec::new()
            }
        };
        let store = Self {
            path,
            last_save: None,
            saved_generation: None,
        };
        (Some(store), findings)
    }

    /// Writes the book when it changed and [`SAVE_EVERY`] has passed since the last write.
    pub fn save_if_due(&mut self, book: &FindingBook, now: Instant) {
        let due = self
            .last_save
            .is_none_or(|at| now.duration_since(at) >= SAVE_EVERY);
        if due && self.saved_generation != Some(book.generation()) {
            self.last_save = Some(now);
            self.save(book);
        }
    }

    /// Writes the book now. A write that fails costs a warning and is tried again at the next
    /// save.
    pub fn save(&mut self, book: &FindingBook) {
        let findings = book
            .list()
            .iter()
            .filter_map(|f| serde_json::to_value(f).ok())
            .collect();
        let file = FileBook {
            version: VERSION,
            findings,
        };
        match state_file::write_atomically(&self.path, &file) {
            Ok(()) => self.saved_generation = Some(book.generation()),
            Err(e) => tracing::warn!("finding book {}: {e}", self.path.display()),
        }
    }
}

/// The findings of `file`, each resolved (see the module comment).
fn restored(file: FileBook, path: &Path) -> Vec<Finding> {
    let total = file.findings.len();
    let findings: Vec<Finding> = file
        .findings
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Finding>(v).ok())
        .map(|mut f| {
            f.active = false;
            f
        })
        .collect();
    if findings.len() < total {
        tracing::warn!(
            "finding book {}: {} of {total} findings unreadable (written by a newer \
             herdwatch?) and not restored",
            path.display(),
            total - findings.len()
        );
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::{Report, Signal, finding_id};
    use crate::model::finding::{Evidence, FindingKind, Severity, Subject};

    fn onset(pattern: &str, at: u64) -> Signal {
        Signal::Onset(Box::new(Report {
            kind: FindingKind::ThunderingHerd,
            pattern: pattern.into(),
            severity: Severity::Warning,
            subject: Subject {
                fingerprint: Some(pattern.into()),
                ..Subject::default()
            },
            evidence: vec![Evidence::new("copies", 8.0, "queries")],
            root_cause: format!("{pattern} ran eight times at once"),
            prevention: "single-flight".into(),
            remediation: "cache".into(),
            annotations: Vec::new(),
            onset_unix_ms: at,
        }))
    }

    fn ended(pattern: &str) -> Signal {
        Signal::Ended {
            kind: FindingKind::ThunderingHerd,
            pattern: pattern.into(),
        }
    }

    /// A book in `dir` as a restarted agent builds it.
    fn reopen(dir: &Path) -> (FindingStore, FindingBook) {
        let (store, findings) = FindingStore::open(dir);
        let mut book = FindingBook::new(8);
        book.restore(findings);
        (store.expect("a usable directory"), book)
    }

    #[test]
    fn occurrences_continue_across_a_restart_and_what_was_active_comes_back_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, mut book) = reopen(dir.path());
        for (n, at) in [(1, 1_000), (2, 60_000)] {
            book.apply(onset("fp1", at), at + 100);
            if n == 1 {
                book.apply(ended("fp1"), at + 200);
            }
        }
        store.save(&book);
        let id = finding_id(FindingKind::ThunderingHerd, "fp1");

        let (_store, mut after) = reopen(dir.path());
        let back = after.list();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].id.as_str(), back[0].occurrences), (id.as_str(), 2));
        assert_eq!(back[0].first_seen_unix_ms, 1_000);
        assert!(!back[0].active, "active at shutdown comes back resolved");
        assert_eq!(back[0].root_cause, "fp1 ran eight times at once");
        // Restoring is not an occurrence: nothing goes to the OTLP log or Watch streams.
        assert!(after.take_transitions().is_empty());
        after.apply(onset("fp1", 120_000), 120_100);
        let next = after.list();
        assert_eq!(
            (next[0].occurrences, next[0].first_seen_unix_ms),
            (3, 1_000)
        );
        assert!(next[0].active);
        // The onsets' history survives the restart and goes on.
        assert_eq!(next[0].recent_onsets_unix_ms, vec![1_000, 60_000, 120_000]);
    }

    #[test]
    fn a_book_written_before_onset_history_reads_with_an_empty_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, mut book) = reopen(dir.path());
        book.apply(onset("fp1", 1_000), 1_100);
        store.save(&book);
        // Strip the field, as an older herdwatch wrote the file.
        let path = dir.path().join("findings.json");
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let findings = file["findings"].as_array_mut().expect("findings");
        for f in findings.iter_mut() {
            let had = f
                .as_object_mut()
                .and_then(|o| o.remove("recent_onsets_unix_ms"));
            assert!(had.is_some(), "the history is persisted: {f}");
        }
        std::fs::write(&path, file.to_string()).expect("write");
        let (_store, after) = reopen(dir.path());
        let back = after.list();
        assert_eq!(back.len(), 1, "an old file still reads");
        assert!(back[0].recent_onsets_unix_ms.is_empty());
        assert_eq!(back[0].occurrences, 1);
    }

    #[test]
    fn an_unchanged_book_is_not_rewritten_and_a_changed_one_waits_for_its_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, mut book) = reopen(dir.path());
        let path = dir.path().join(FILE_NAME);
        let t0 = Instant::now();
        store.save_if_due(&book, t0);
        assert!(path.exists(), "the first save writes even an empty book");
        std::fs::remove_file(&path).expect("rm");
        store.save_if_due(&book, t0 + SAVE_EVERY * 2);
        assert!(!path.exists(), "nothing changed, nothing written");
        book.apply(onset("fp1", 1), 2);
        store.save_if_due(&book, t0 + SAVE_EVERY * 2 + Duration::from_secs(1));
        assert!(path.exists(), "changed and due");
    }

    #[test]
    fn a_corrupt_or_newer_book_is_set_aside_and_a_finding_of_unknown_shape_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        for bad in [
            r#"{"version":1,"findings":[{"id":"#.to_string(),
            r#"{"version":99,"findings":[]}"#.to_string(),
        ] {
            std::fs::write(&path, &bad).expect("write");
            let (store, findings) = FindingStore::open(dir.path());
            assert!(store.is_some() && findings.is_empty());
            assert!(dir.path().join(format!("{FILE_NAME}.bad")).exists());
            assert!(!path.exists());
        }
        // One finding of a kind this agent does not know, one it does.
        let (mut store, mut book) = reopen(dir.path());
        book.apply(onset("fp1", 1), 2);
        store.save(&book);
        let text = std::fs::read_to_string(&path).expect("read");
        let mut doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut alien = doc["findings"][0].clone();
        alien["kind"] = "kind_from_the_future".into();
        if let Some(list) = doc["findings"].as_array_mut() {
            list.push(alien);
        }
        std::fs::write(&path, doc.to_string()).expect("write");
        let (_store, findings) = FindingStore::open(dir.path());
        assert_eq!(findings.len(), 1);
    }

    #[test]
    fn a_read_only_state_directory_means_no_store_and_no_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").expect("write");
        let (store, findings) = FindingStore::open(&blocker.join("state"));
        assert!(store.is_none() && findings.is_empty());
    }
}
