//! `herdwatch top --record FILE`: the snapshots `top` fetched, kept in a file that
//! `--from FILE` (and the tests' fixtures) draw from later. The format is the wire's own:
//! a header line, then each `herdwatch.v1.Snapshot` in protobuf's length-delimited
//! encoding, so a recording stays readable as long as the API keeps protobuf's
//! compatibility rules (new fields are skipped by old readers, absent ones read as defaults).
use std::path::Path;

use herdwatch_proto::v1 as pb;
use prost::Message as _;

use crate::error::{Error, Result};

/// The first bytes of every recording: what it is and the format's version.
const HEADER: &[u8] = b"herdwatch top recording v1\n";
/// A recording is a few snapshots; anything larger is not one of ours.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_SNAPSHOTS: usize = 100;

fn error(path: &Path, message: impl Into<String>) -> Error {
    Error::Recording {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The recording's bytes: the header and each snapshot, oldest first.
pub fn encode(snapshots: &[pb::Snapshot]) -> Vec<u8> {
    let mut bytes = HEADER.to_vec();
    for snapshot in snapshots {
        bytes.extend(snapshot.encode_length_delimited_to_vec());
    }
    bytes
}

/// The snapshots of a recording's bytes, oldest first; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<pb::Snapshot>> {
    let mut rest = bytes.strip_prefix(HEADER).ok_or_else(|| {
        error(
            path,
            "not a herdwatch top recording (it lacks the header `herdwatch top recording v1`)",
        )
    })?;
    let mut snapshots = Vec::new();
    while !rest.is_empty() {
        if snapshots.len() == MAX_SNAPSHOTS {
            return Err(error(
                path,
                format!("more than {MAX_SNAPSHOTS} snapshots; not a recording of top's"),
            ));
        }
        let snapshot = pb::Snapshot::decode_length_delimited(&mut rest).map_err(|e| {
            error(
                path,
                format!("snapshot {} is damaged: {e}", snapshots.len() + 1),
            )
        })?;
        snapshots.push(snapshot);
    }
    if snapshots.is_empty() {
        return Err(error(path, "it holds no snapshot"));
    }
    Ok(snapshots)
}

pub fn write(path: &Path, snapshots: &[pb::Snapshot]) -> Result<()> {
    std::fs::write(path, encode(snapshots)).map_err(|source| Error::Io {
        what: format!("writing the recording {}", path.display()),
        source,
    })
}

/// Reads a recording, refusing files larger than any recording before reading them.
pub fn read(path: &Path) -> Result<Vec<pb::Snapshot>> {
    let io = |source| Error::Io {
        what: format!("reading the recording {}", path.display()),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(error(
            path,
            format!("{size} bytes, larger than any recording ({MAX_FILE_BYTES} at most)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at: u64) -> pb::Snapshot {
        pb::Snapshot {
            taken_at_unix_ms: at,
            queries: vec![pb::Query {
                normalized_text: "SELECT * FROM t WHERE id = $1".into(),
                calls: 3,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_recording_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rec");
        let written = vec![snapshot(1000), snapshot(2000)];
        write(&path, &written).expect("write");
        assert_eq!(read(&path).expect("read"), written);
    }

    #[test]
    fn damaged_or_foreign_files_are_clear_errors() {
        let path = Path::new("x.rec");
        let text = |bytes: &[u8]| decode(path, bytes).expect_err("refused").to_string();
        assert!(text(b"{\"json\": 1}").contains("not a herdwatch top recording"));
        assert!(text(HEADER).contains("no snapshot"));
        let mut cut = encode(&[snapshot(1000)]);
        cut.truncate(cut.len() - 3);
        let message = text(&cut);
        assert!(message.contains("snapshot 1 is damaged") && message.contains("x.rec"));
        let many = vec![snapshot(1); MAX_SNAPSHOTS + 1];
        assert!(text(&encode(&many)).contains("more than 100 snapshots"));
    }
}
