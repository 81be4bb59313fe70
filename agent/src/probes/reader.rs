//! Async readers: the process-event ring buffer and the aya-log ring buffer, each woken by
//! epoll through `AsyncFd`, never polled in a loop.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};

use crate::error::{Error, Result};

use super::events::{ProcessEvent, decode};

/// Userspace-side losses, shared between the reader task and the snapshot.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    pub events_received: AtomicU64,
    /// The pipeline's channel was full.
    pub events_channel_full: AtomicU64,
    /// The record could not be decoded.
    pub events_malformed: AtomicU64,
}

/// Spawns the task that drains the EVENTS ring buffer into `tx`. A full channel drops the
/// event and counts it: the kernel must never wait on us.
pub fn spawn_event_reader(
    ebpf: &mut Ebpf,
    tx: mpsc::Sender<ProcessEvent>,
    counters: Arc<ReaderCounters>,
) -> Result<tokio::task::JoinHandle<()>> {
    let map = ebpf.take_map("EVENTS").ok_or_else(|| Error::Map {
        name: "EVENTS",
        detail: "not in the eBPF object".into(),
    })?;
    let ring = RingBuf::try_from(map).map_err(|e| Error::Map {
        name: "EVENTS",
        detail: e.to_string(),
    })?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until it is dropped
    // together with the AsyncFd.
    let mut fd =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            Error::Io {
                what: "EVENTS ring buffer fd".into(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                tracing::error!("event ring buffer fd failed; process events stop");
                return;
            };
            let ring: &mut RingBuf<MapData> = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                counters.events_received.fetch_add(1, Ordering::Relaxed);
                match decode(&item) {
                    Ok(event) => match tx.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            counters.events_channel_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(err) => {
                        counters.events_malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("{err}");
                    }
                }
            }
            guard.clear_ready();
        }
    }))
}

/// Counters of the socket reader.
#[derive(Debug, Default)]
pub struct SocketReaderCounters {
    pub received: AtomicU64,
    pub channel_full: AtomicU64,
    pub malformed: AtomicU64,
}

/// Spawns the task that drains SOCKET_EVENTS into `tx`, dropping (and counting) when full.
/// Most bytes a recording may take.
const MAX_RECORDING: u64 = 64 << 20;

/// Writes raw socket records as `u32 LE length + bytes`, stopping at `MAX_RECORDING`.
struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl Recorder {
    fn create(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|source| Error::Io {
            what: format!("recording file {}", path.display()),
            source,
        })?;
        Ok(Self {
            out: std::io::BufWriter::new(file),
            written: 0,
        })
    }

    fn write(&mut self, record: &[u8]) {
        use std::io::Write as _;
        let len = record.len() as u64 + 4;
        if self.written + len > MAX_RECORDING {
            return;
        }
        if self
            .out
            .write_all(&(record.len() as u32).to_le_bytes())
            .and_then(|()| self.out.write_all(record))
            .is_ok()
        {
            self.written += len;
        }
        // Flush often enough that a recording stopped by a signal is usable.
        if self.written % (1 << 16) < len {
            let _ = self.out.flush();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        use std::io::Write as _;
        let _ = self.out.flush();
    }
}

/// Reads a recording back into its records.
pub fn read_recording(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(record) = tail.get(..len) else { break };
        out.push(record);
        rest = &tail[len..];
    }
    out
}

pub fn spawn_socket_reader(
    ebpf: &mut Ebpf,
    tx: mpsc::Sender<super::socket_events::SocketEvent>,
    counters: Arc<SocketReaderCounters>,
    record_to: Option<&std::path::Path>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut recorder = record_to.map(Recorder::create).transpose()?;
    let map = ebpf.take_map("SOCKET_EVENTS").ok_or_else(|| Error::Map {
        name: "SOCKET_EVENTS",
        detail: "not in the eBPF object".into(),
    })?;
    let ring = RingBuf::try_from(map).map_err(|e| Error::Map {
        name: "SOCKET_EVENTS",
        detail: e.to_string(),
    })?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut fd =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            Error::Io {
                what: "SOCKET_EVENTS ring buffer fd".into(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                tracing::error!("socket ring buffer fd failed; socket tracing stops");
                return;
            };
            let ring: &mut RingBuf<MapData> = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                counters.received.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = recorder.as_mut() {
                    r.write(&item);
                }
                match super::socket_events::decode(&item) {
                    Ok(event) => match tx.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            counters.channel_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    Err(err) => {
                        counters.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("{err}");
                    }
                }
            }
            guard.clear_ready();
        }
    }))
}

/// Forwards kernel-side aya-log records to the `log` facade (and from there to `tracing`).
pub fn spawn_kernel_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            // No log statements survived compilation: nothing to forward.
            tracing::debug!("kernel log forwarding off: {err}");
            return None;
        }
    };
    // SAFETY: as above, the logger owns the AYA_LOGS ring buffer fd for its whole life.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!("kernel log forwarding off: {err}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
