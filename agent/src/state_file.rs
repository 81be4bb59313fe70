//! Files in the state directory (`state_dir`) that carry what a restart must not forget: each
//! is one versioned JSON document, written atomically (temporary file, fsync, rename) so a
//! crash mid-write leaves the previous version, and read with a size bound so a stray file
//! cannot make the agent allocate without limit.
//!
//! Nothing here fails the agent: callers turn every error into one warning and carry on
//! without persistence or with a fresh book.
use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Creates `dir` if missing (mode 0700: the books hold statement texts) and checks a file can
/// be written in it, so a read-only or foreign directory is found at start, not at the first
/// save.
pub fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let probe = dir.join(format!(".probe-{}-{}", std::process::id(), next_unique()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// The document in `path`: None when there is none, Err(why) when it cannot be used (too
/// large, unreadable, not JSON of this shape, or written by a newer agent — named as such).
pub fn read_versioned<T: DeserializeOwned>(
    path: &Path,
    max_bytes: u64,
    version: u32,
) -> Result<Option<T>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > max_bytes {
        return Err(format!(
            "{} bytes is larger than this file can be ({max_bytes})",
            meta.len()
        ));
    }
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    // The version first, so a newer format is named as such rather than as corrupt.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let found: Version = serde_json::from_slice(&text).map_err(|e| format!("unreadable ({e})"))?;
    if found.version > version {
        return Err(format!(
            "written by a newer herdwatch (format {}, this one reads {version})",
            found.version
        ));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("unreadable ({e})"))
}

/// Keeps an unusable file aside (`<name>.bad`) for a person to look at; the next save writes
/// a fresh one in its place.
pub fn set_aside(path: &Path) {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let _ = std::fs::rename(path, bad);
}

/// Writes `value` as JSON to `path` atomically.
pub fn write_atomically<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    // Unique per writer, so two agents (or two books in one test process) never share one.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}-{}", std::process::id(), next_unique()));
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        serde_json::to_writer(&mut out, value)?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn next_unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Doc {
        version: u32,
        items: Vec<String>,
    }

    #[test]
    fn a_written_document_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.json");
        assert_eq!(read_versioned::<Doc>(&path, 1 << 20, 1), Ok(None));
        let doc = Doc {
            version: 1,
            items: vec!["a".into(), "b".into()],
        };
        write_atomically(&path, &doc).expect("write");
        assert_eq!(read_versioned::<Doc>(&path, 1 << 20, 1), Ok(Some(doc)));
        // Only the document is left behind: no temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("doc.json")]);
    }

    #[test]
    fn newer_truncated_and_oversized_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.json");
        std::fs::write(&path, r#"{"version":9,"items":[]}"#).expect("write");
        let err = read_versioned::<Doc>(&path, 1 << 20, 1).expect_err("newer");
        assert!(err.contains("newer herdwatch (format 9"), "{err}");
        std::fs::write(&path, r#"{"version":1,"items":["a","#).expect("write");
        let err = read_versioned::<Doc>(&path, 1 << 20, 1).expect_err("truncated");
        assert!(err.starts_with("unreadable"), "{err}");
        std::fs::write(&path, vec![b' '; 100]).expect("write");
        let err = read_versioned::<Doc>(&path, 10, 1).expect_err("oversized");
        assert!(err.contains("larger than"), "{err}");
        set_aside(&path);
        assert!(!path.exists() && dir.path().join("doc.json.bad").exists());
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").expect("write");
        assert!(writable_dir(&file.join("state")).is_err());
        assert!(writable_dir(&dir.path().join("new/state")).is_ok());
    }
}
