//! Decoding of socket ring-buffer records. Pure; malformed records are errors to count.
use herdwatch_common::{
    EventHeader, EventKind, MAX_PY_FRAMES, PyFrameRef, PyStackHead, SocketCloseEvent,
    SocketDataHead, SocketOpenEvent, TAIL_CAPTURE, direction, sock_kind,
};

use super::events::{malformed, read_record};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    Postgres,
    HttpServer,
}

impl SocketKind {
    pub fn from_raw(v: u32) -> Option<Self> {
        match v {
            sock_kind::POSTGRES => Some(Self::Postgres),
            sock_kind::HTTP_SERVER => Some(Self::HttpServer),
            _ => None,
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Self::Postgres => sock_kind::POSTGRES,
            Self::HttpServer => sock_kind::HTTP_SERVER,
        }
    }
}

/// One decoded record. Data borrows its bytes from the record (read in place from the ring
/// buffer), so the pipeline allocates nothing per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent<'a> {
    Open {
        tgid: u32,
        tid: u32,
        fd: u32,
        kind: SocketKind,
        family: u32,
        port: u16,
        timestamp_ns: u64,
    },
    Data {
        tgid: u32,
        tid: u32,
        fd: u32,
        kind: SocketKind,
        /// True for bytes the process received (read, recv*), false for bytes it sent.
        ingress: bool,
        enter_ns: u64,
        exit_ns: u64,
        total_len: u64,
        /// The thread's on-CPU total at the call's exit (0 = unknown).
        thread_on_cpu_ns: u64,
        payload: &'a [u8],
        /// The last bytes moved, when `payload` did not reach them.
        tail: &'a [u8],
    },
    Close {
        tgid: u32,
        tid: u32,
        fd: u32,
        kind: SocketKind,
        timestamp_ns: u64,
    },
    /// The Python stack of the thread's next data record (same `timestamp_ns`).
    PyStack {
        tgid: u32,
        tid: u32,
        timestamp_ns: u64,
        /// The running coroutine's frame address (asyncio Task), 0 = none.
        task: u64,
        /// `py_status` bits.
        status: u32,
        frames: PyFrames<'a>,
    },
}

/// Frames of a stack record, innermost first, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyFrames<'a>(&'a [u8]);

impl<'a> PyFrames<'a> {
    pub fn iter(self) -> impl Iterator<Item = PyFrameRef> + 'a {
        self.0
            .chunks_exact(size_of::<PyFrameRef>())
            .map(|c| PyFrameRef {
                code: u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                instr: u64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
            })
    }

    pub fn len(self) -> usize {
        self.0.len() / size_of::<PyFrameRef>()
    }

    pub fn is_empty(self) -> bool {
        self.0.is_empty()
    }
}

fn kind(raw: u32) -> Result<SocketKind> {
    SocketKind::from_raw(raw).ok_or_else(|| malformed(format_args!("unknown socket kind {raw}")))
}

pub fn decode(bytes: &[u8]) -> Result<SocketEvent<'_>> {
    let header: EventHeader = read_record(bytes, "socket event header")?;
    match EventKind::from_u32(header.kind) {
        Some(EventKind::SocketOpen) => {
            let e: SocketOpenEvent = read_record(bytes, "socket open")?;
            Ok(SocketEvent::Open {
                tgid: e.header.tgid,
                tid: e.header.tid,
                fd: e.fd,
                kind: kind(e.kind)?,
                family: e.family,
                port: u16::try_from(e.port).unwrap_or(0),
                timestamp_ns: e.header.timestamp_ns,
            })
        }
        Some(EventKind::SocketData) => decode_data(bytes),
        Some(EventKind::SocketClose) => {
            let e: SocketCloseEvent = read_record(bytes, "socket close")?;
            Ok(SocketEvent::Close {
                tgid: e.header.tgid,
                tid: e.header.tid,
                fd: e.fd,
                kind: kind(e.kind)?,
                timestamp_ns: e.header.timestamp_ns,
            })
        }
        Some(EventKind::PyStack) => decode_py_stack(bytes),
        _ => Err(malformed(format_args!(
            "event kind {} on the socket ring buffer",
            header.kind
        ))),
    }
}

/// A payload record: head, tail bytes, then the captured prefix.
#[inline]
fn decode_data(bytes: &[u8]) -> Result<SocketEvent<'_>> {
    let head: SocketDataHead = read_record(bytes, "socket data")?;
    let tail_start = size_of::<SocketDataHead>();
    let tail_len = head.tail_len as usize;
    if tail_len > TAIL_CAPTURE {
        return Err(malformed(format_args!(
            "tail of {tail_len} bytes exceeds {TAIL_CAPTURE}"
        )));
    }
    let tail = bytes
        .get(tail_start..tail_start + tail_len)
        .ok_or_else(|| malformed(format_args!("socket data record shorter than its tail")))?;
    let start = tail_start + TAIL_CAPTURE;
    let captured = head.captured as usize;
    let payload = bytes.get(start..start + captured).ok_or_else(|| {
        malformed(format_args!(
            "socket data claims {captured} bytes, record has {}",
            bytes.len() - start
        ))
    })?;
    if (captured + tail_len) as u64 > head.total_len {
        return Err(malformed(format_args!(
            "captured {captured} > moved {}",
            head.total_len
        )));
    }
    Ok(SocketEvent::Data {
        tgid: head.header.tgid,
        tid: head.header.tid,
        fd: head.fd,
        kind: kind(head.kind)?,
        ingress: head.direction == direction::INGRESS,
        enter_ns: head.enter_ns,
        exit_ns: head.header.timestamp_ns,
        total_len: head.total_len,
        thread_on_cpu_ns: head.thread_on_cpu_ns,
        payload,
        tail,
    })
}

/// A Python stack record: head, then its frames.
#[inline]
fn decode_py_stack(bytes: &[u8]) -> Result<SocketEvent<'_>> {
    let head: PyStackHead = read_record(bytes, "python stack")?;
    let n = head.n_frames as usize;
    if n > MAX_PY_FRAMES {
        return Err(malformed(format_args!(
            "python stack of {n} frames exceeds {MAX_PY_FRAMES}"
        )));
    }
    let start = size_of::<PyStackHead>();
    let frames = bytes
        .get(start..start + n * size_of::<PyFrameRef>())
        .ok_or_else(|| malformed(format_args!("python stack shorter than its frames")))?;
    Ok(SocketEvent::PyStack {
        tgid: head.header.tgid,
        tid: head.header.tid,
        timestamp_ns: head.header.timestamp_ns,
        task: head.task,
        status: head.status,
        frames: PyFrames(frames),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_record(captured: u32, total: u64, payload: &[u8]) -> Vec<u8> {
        let head = SocketDataHead {
            header: EventHeader {
                kind: EventKind::SocketData as u32,
                tid: 2,
                tgid: 1,
                _reserved: 0,
                timestamp_ns: 9,
            },
            enter_ns: 5,
            total_len: total,
            thread_on_cpu_ns: 0,
            fd: 7,
            kind: sock_kind::POSTGRES,
            direction: direction::EGRESS,
            captured,
            tail_len: 0,
            _reserved: 0,
        };
        // SAFETY: test-only byte view of a repr(C) value.
        let mut v = unsafe {
            std::slice::from_raw_parts(
                (&head as *const SocketDataHead).cast::<u8>(),
                size_of::<SocketDataHead>(),
            )
        }
        .to_vec();
        v.extend_from_slice(&[0u8; TAIL_CAPTURE]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn data_records_carry_their_payload() {
        match decode(&data_record(3, 100, b"abc")) {
            Ok(SocketEvent::Data {
                payload,
                total_len,
                ingress,
                fd,
                ..
            }) => {
                assert_eq!(
                    (payload, total_len, ingress, fd),
                    (&b"abc"[..], 100, false, 7)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lying_lengths_are_errors() {
        assert!(
            decode(&data_record(10, 100, b"abc")).is_err(),
            "claims more than the record holds"
        );
        assert!(
            decode(&data_record(3, 2, b"abc")).is_err(),
            "captured more than moved"
        );
        assert!(
            decode(&data_record(3, 100, b"abc")[..10]).is_err(),
            "truncated head"
        );
    }
}
