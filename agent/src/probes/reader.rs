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

/// What a ring-buffer reader received and lost, shared with the snapshot.
#[derive(Debug, Default)]
pub struct RingCounters {
    pub received: AtomicU64,
    /// The pipeline's channel was full: the record was dropped.
    pub channel_full: AtomicU64,
    /// The record could not be decoded.
    pub malformed: AtomicU64,
}

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

/// The ring buffer `map`, registered with epoll.
fn open_ring(ebpf: &mut Ebpf, map: &'static str) -> Result<AsyncFd<RingBuf<MapData>>> {
    let taken = ebpf.take_map(map).ok_or_else(|| Error::Map {
        name: map,
        detail: "not in the eBPF object".into(),
    })?;
    let ring = RingBuf::try_from(taken).map_err(|e| Error::Map {
        name: map,
        detail: e.to_string(),
    })?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until it is dropped
    // together with the AsyncFd.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| Error::Io {
        what: format!("{map} ring buffer fd"),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Drains the ring buffer `map` into `tx` as records arrive (epoll via AsyncFd). A full
/// channel drops the record and counts it: the kernel must never wait on us.
fn spawn_ring_reader<T: Send + 'static>(
    ebpf: &mut Ebpf,
    map: &'static str,
    decode: fn(&[u8]) -> Result<T>,
    tx: mpsc::Sender<T>,
    counters: Arc<RingCounters>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut fd = open_ring(ebpf, map)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                tracing::error!("{map} ring buffer fd failed; its events stop");
                return;
            };
            let ring: &mut RingBuf<MapData> = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                counters.received.fetch_add(1, Ordering::Relaxed);
                match decode(&item) {
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

/// Process events (EVENTS) into the pipeline.
pub fn spawn_event_reader(
    ebpf: &mut Ebpf,
    tx: mpsc::Sender<ProcessEvent>,
    counters: Arc<RingCounters>,
) -> Result<tokio::task::JoinHandle<()>> {
    spawn_ring_reader(ebpf, "EVENTS", decode, tx, counters)
}

/// The socket-event ring buffer, read in place by the pipeline: each record is decoded and
/// applied straight from the kernel's memory, with no copy and no channel in between — the
/// ring (`socket_ring_bytes`) is the only queue, and when it is full the kernel counts the
/// records it could not write (`kernel_socket_ring_full`).
pub struct SocketRing {
    fd: AsyncFd<RingBuf<MapData>>,
    recorder: Option<Recorder>,
    counters: Arc<RingCounters>,
    /// The kernel side writes most records without waking us (`BPF_RB_NO_WAKEUP` below
    /// `WAKEUP_BYTES` unread): this timer is what reads them.
    drain_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    drain_period: std::time::Duration,
    /// The last read stopped at its budget with records still waiting.
    backlog: bool,
}

/// How often the ring is drained while records arrive and the kernel side did not wake us:
/// a record waits at most this long, and the ring's wakeup threshold is rarely reached.
pub const SOCKET_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
/// The period doubles after each drain that found nothing, up to this: an idle host's agent
/// wakes a few times a second, not fifty. The first records after a quiet spell wait at most
/// this long (their kernel timestamps are exact either way).
pub const SOCKET_DRAIN_IDLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(320);

impl SocketRing {
    pub fn open(
        ebpf: &mut Ebpf,
        counters: Arc<RingCounters>,
        record_to: Option<&std::path::Path>,
    ) -> Result<Self> {
        let drain_timer = Box::pin(tokio::time::sleep(SOCKET_DRAIN_INTERVAL));
        Ok(Self {
            fd: open_ring(ebpf, "SOCKET_EVENTS")?,
            recorder: record_to.map(Recorder::create).transpose()?,
            counters,
            drain_timer,
            drain_period: SOCKET_DRAIN_INTERVAL,
            backlog: false,
        })
    }

    /// Waits until records are waiting — the drain timer, or the kernel's wakeup once the
    /// ring fills past its threshold (epoll) — then hands up to `budget` of them to `apply`.
    /// The budget lets the pipeline's other work (process events, snapshots) in between when
    /// the kernel writes records as fast as they are read.
    pub async fn apply_ready(&mut self, budget: usize, apply: impl FnMut(&[u8])) -> Result<()> {
        if self.backlog {
            // Records were left behind at the budget: read on after the others had a turn.
            tokio::task::yield_now().await;
            let (_, emptied) = self.take_waiting(budget, apply);
            self.backlog = !emptied;
            return Ok(());
        }
        let woken = tokio::select! {
            guard = self.fd.readable_mut() => Some(guard.map_err(|e| Error::Io {
                what: "SOCKET_EVENTS ring buffer fd".into(),
                source: e,
            })?),
            () = self.drain_timer.as_mut() => None,
        };
        let (taken, emptied) = match woken {
            Some(mut guard) => {
                let (taken, emptied) = Self::take(
                    guard.get_inner_mut(),
                    &mut self.recorder,
                    &self.counters,
                    budget,
                    apply,
                );
                if emptied {
                    guard.clear_ready();
                }
                (taken, emptied)
            }
            None => self.take_waiting(budget, apply),
        };
        self.drain_period = if taken > 0 {
            SOCKET_DRAIN_INTERVAL
        } else {
            (self.drain_period * 2).min(SOCKET_DRAIN_IDLE_INTERVAL)
        };
        let next = tokio::time::Instant::now() + self.drain_period;
        self.drain_timer.as_mut().reset(next);
        self.backlog = !emptied;
        Ok(())
    }

    /// Hands the records waiting now, up to `budget`, to `apply` without waiting (before a
    /// snapshot, so it counts them). Bounded: a kernel writing as fast as we read must not
    /// hold the snapshot back.
    pub fn apply_waiting(&mut self, budget: usize, apply: impl FnMut(&[u8])) {
        self.take_waiting(budget, apply);
    }

    /// `take` without an epoll readiness guard: for the timer, the backlog and snapshots.
    fn take_waiting(&mut self, budget: usize, apply: impl FnMut(&[u8])) -> (usize, bool) {
        Self::take(
            self.fd.get_mut(),
            &mut self.recorder,
            &self.counters,
            budget,
            apply,
        )
    }

    /// Applies up to `budget` records: how many, and whether the ring was emptied.
    fn take(
        ring: &mut RingBuf<MapData>,
        recorder: &mut Option<Recorder>,
        counters: &RingCounters,
        budget: usize,
        mut apply: impl FnMut(&[u8]),
    ) -> (usize, bool) {
        for taken in 0..budget {
            let Some(item) = ring.next() else {
                return (taken, true);
            };
            counters.received.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = recorder.as_mut() {
                r.write(&item);
            }
            apply(&item);
        }
        (budget, false)
    }
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
