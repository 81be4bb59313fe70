//! Decoding of ring-buffer records into typed process events. Pure: a record that is short,
//! of an unknown kind or otherwise malformed is an error for the caller to count, never a panic.
use herdwatch_common::{
    EventHeader, EventKind, ExecEvent, ExitEvent, NewTaskEvent, ThreadCounters,
};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// A new task. `is_thread` tells a thread (same tgid as its creator) from a process.
    NewTask {
        tid: u32,
        tgid: u32,
        parent_tid: u32,
        parent_tgid: u32,
        is_thread: bool,
        comm: String,
        timestamp_ns: u64,
    },
    Exec {
        pid: u32,
        old_tid: u32,
        comm: String,
        filename: String,
        timestamp_ns: u64,
    },
    Exit {
        tid: u32,
        tgid: u32,
        group_dead: bool,
        comm: String,
        counters: ThreadCounters,
        timestamp_ns: u64,
    },
}

/// A NUL-padded kernel string as UTF-8 (lossy: comm and paths are bytes, not text).
pub fn c_bytes_to_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A decoding error. Out of line and marked cold: records decode on the hot path, and the
/// formatting code inlined there cost every record instructions and registers.
#[cold]
#[inline(never)]
pub(crate) fn malformed(what: std::fmt::Arguments<'_>) -> Error {
    Error::Decode(what.to_string())
}

pub(crate) fn read_record<T: Copy>(bytes: &[u8], what: &str) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        return Err(malformed(format_args!(
            "{what} record is {} bytes, expected {}",
            bytes.len(),
            size_of::<T>()
        )));
    }
    // SAFETY: length checked above; every T here is #[repr(C)] plain data valid for any bits,
    // and read_unaligned makes no alignment assumption about the ring buffer slice.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<ProcessEvent> {
    let header: EventHeader = read_record(bytes, "event header")?;
    let kind = EventKind::from_u32(header.kind)
        .ok_or_else(|| malformed(format_args!("unknown event kind {}", header.kind)))?;
    Ok(match kind {
        EventKind::NewTask => {
            let e: NewTaskEvent = read_record(bytes, "new-task")?;
            ProcessEvent::NewTask {
                tid: e.header.tid,
                tgid: e.header.tgid,
                parent_tid: e.parent_tid,
                parent_tgid: e.parent_tgid,
                is_thread: e.clone_flags & herdwatch_common::CLONE_THREAD != 0,
                comm: c_bytes_to_string(&e.comm),
                timestamp_ns: e.header.timestamp_ns,
            }
        }
        EventKind::Exec => {
            let e: ExecEvent = read_record(bytes, "exec")?;
            let len = (e.filename_len as usize).min(e.filename.len());
            ProcessEvent::Exec {
                pid: e.header.tid,
                old_tid: e.old_tid,
                comm: c_bytes_to_string(&e.comm),
                filename: c_bytes_to_string(&e.filename[..len]),
                timestamp_ns: e.header.timestamp_ns,
            }
        }
        EventKind::SocketOpen
        | EventKind::SocketData
        | EventKind::SocketClose
        | EventKind::PyStack => {
            return Err(malformed(format_args!(
                "socket event kind {} on the process ring buffer",
                header.kind
            )));
        }
        EventKind::Exit => {
            let e: ExitEvent = read_record(bytes, "exit")?;
            ProcessEvent::Exit {
                tid: e.header.tid,
                tgid: e.header.tgid,
                group_dead: e.group_dead != 0,
                comm: c_bytes_to_string(&e.comm),
                counters: e.counters,
                timestamp_ns: e.header.timestamp_ns,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) value as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind, tid: u32, tgid: u32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tid,
            tgid,
            _reserved: 0,
            timestamp_ns: 7,
        }
    }

    #[test]
    fn decodes_a_thread_creation() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"guni");
        let ev = NewTaskEvent {
            header: header(EventKind::NewTask, 11, 10),
            parent_tid: 10,
            parent_tgid: 10,
            clone_flags: herdwatch_common::CLONE_THREAD | 0x100,
            comm,
        };
        let decoded = decode(&bytes_of(&ev)).expect("valid record");
        assert_eq!(
            decoded,
            ProcessEvent::NewTask {
                tid: 11,
                tgid: 10,
                parent_tid: 10,
                parent_tgid: 10,
                is_thread: true,
                comm: "guni".into(),
                timestamp_ns: 7
            }
        );
    }

    #[test]
    fn exec_filename_is_cut_at_the_reported_length() {
        let mut filename = [b'x'; herdwatch_common::FILENAME_LEN];
        filename[..9].copy_from_slice(b"/bin/true");
        let ev = ExecEvent {
            header: header(EventKind::Exec, 5, 5),
            old_tid: 5,
            filename_len: 9,
            comm: [0; 16],
            filename,
        };
        match decode(&bytes_of(&ev)) {
            Ok(ProcessEvent::Exec { filename, .. }) => assert_eq!(filename, "/bin/true"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_unknown_and_empty_records_are_errors() {
        let ev = ExitEvent {
            header: header(EventKind::Exit, 1, 1),
            group_dead: 1,
            _reserved: 0,
            comm: [0; 16],
            counters: ThreadCounters::default(),
        };
        let full = bytes_of(&ev);
        assert!(decode(&full).is_ok());
        assert!(decode(&full[..full.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        let mut unknown = full.clone();
        unknown[0] = 99;
        assert!(decode(&unknown).is_err());
        // A record whose filename_len lies is clamped, not trusted.
        let mut exec = ExecEvent {
            header: header(EventKind::Exec, 1, 1),
            old_tid: 1,
            filename_len: u32::MAX,
            comm: [0; 16],
            filename: [b'a'; herdwatch_common::FILENAME_LEN],
        };
        assert!(decode(&bytes_of(&exec)).is_ok());
        exec.header.kind = 0;
        assert!(decode(&bytes_of(&exec)).is_err());
    }
}
