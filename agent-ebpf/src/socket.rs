//! Socket tracing: the maps and handlers, run from one `syscalls:*` tracepoint program per
//! call (`per_call.rs`, the default), the raw `sys_enter`/`sys_exit` pair (`syscalls.rs`) or
//! fentry/fexit programs on kernels that load them (`trampoline.rs`).
//!
//! Only sockets in `SOCKETS` are traced: client connections to a PostgreSQL port or Unix
//! socket (`.s.PGSQL.<port>`), and connections accepted by processes in `HTTP_SERVERS` (pool
//! workers). The agent seeds both maps from /proc at start. For each read/write-family call on
//! such a socket, the exit handler sends one record: the call's real length and a prefix of the
//! payload (`CAPTURE_BYTES`, at most 4 KiB), sized to what was captured.
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use herdwatch_common::{
    EventHeader, EventKind, MAX_CAPTURE, SOCKET_MAP_ENTRIES, SOCKET_RING_BYTES, SocketCloseEvent,
    SocketDataEvent, SocketDataHead, SocketInfo, SocketOpenEvent, TAIL_CAPTURE, TGID_FILTER_WORDS,
    direction, sock_kind, socket_key, stat, tgid_lane,
};

use crate::maps::{THREADS, count};

mod connect;

use connect::{AF_INET, CANDIDATE_DESTINATIONS, candidate_decided};
pub use connect::{connect_entered, connect_exited};

#[map]
pub static SOCKETS: LruHashMap<u64, SocketInfo> =
    LruHashMap::with_max_entries(SOCKET_MAP_ENTRIES, 0);
/// Destination ports that mean PostgreSQL (5432) or PgBouncer (6432); set by the agent.
#[map]
pub static PG_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
/// Thread groups whose accepted connections are HTTP server connections (pool workers).
#[map]
pub static HTTP_SERVERS: HashMap<u32, u8> = HashMap::with_max_entries(16_384, 0);
/// Thread groups this side started tracing a socket of (byte set at `track`, cleared when
/// the group exits). Every read, write and close on the host runs these programs: a byte test
/// in an array (inlined by the verifier) turns away the calls of processes with no traced
/// socket before any hash lookup. Sized by the loader from `pid_max`.
#[map]
pub static TRACED_TGIDS: Array<u64> = Array::with_max_entries(TGID_FILTER_WORDS, 0);
/// The same for the agent's side: pool workers (their accepts are HTTP) and processes whose
/// sockets the agent seeded from /proc. Written only by the agent.
#[map]
pub static AGENT_TGIDS: Array<u64> = Array::with_max_entries(TGID_FILTER_WORDS, 0);
/// Words in the two filters (the maps' real size, patched by the loader).
#[unsafe(no_mangle)]
static TGID_WORDS: Global<u32> = Global::new(TGID_FILTER_WORDS);
/// The open read/write call of each thread that has used a traced socket, by thread id. The
/// entry stays with its thread (a call is closed by zeroing `enter_ns`, reopened by writing it
/// in place) and goes when the thread exits: inserting and deleting an LRU element around
/// every traced call was the largest part of the socket programs' cost.
#[map]
static ACTIVE_CALLS: LruHashMap<u32, ActiveCall> = LruHashMap::with_max_entries(16_384, 0);
#[map]
static SCRATCH: PerCpuArray<SocketDataEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SOCKET_EVENTS: RingBuf = RingBuf::with_byte_size(SOCKET_RING_BYTES, 0);
/// Payload bytes captured per call; the agent patches it (≤ MAX_CAPTURE).
#[unsafe(no_mangle)]
static CAPTURE_BYTES: Global<u32> = Global::new(herdwatch_common::DEFAULT_CAPTURE);

/// Unread bytes in `SOCKET_EVENTS` at which a record wakes the agent; the agent patches it
/// (a fraction of the ring's size). Below it records are written without a wakeup and the
/// agent drains the ring on its own short timer: one wakeup (a context switch of the agent,
/// on the CPU the traced service wants) per record was the largest cost of tracing.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(herdwatch_common::SOCKET_RING_BYTES as u64 / 4);

/// The ring-buffer flags for the next socket record: wake the reader only once enough is
/// waiting that its timer might not come soon enough.
#[inline(always)]
pub fn ring_flags() -> u64 {
    if SOCKET_EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// How the exit handler finds the payload.
pub const BUF_PLAIN: u32 = 0;
pub const BUF_IOVEC: u32 = 1;
pub const BUF_MSGHDR: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct ActiveCall {
    buf: u64,
    /// When the call entered; 0 = no call open on this thread.
    enter_ns: u64,
    fd: u32,
    kind: u32,
    direction: u32,
    buf_mode: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// The calling thread's ids and its call's first two arguments, when its thread group may
/// have a traced socket: the byte test comes before any argument is read, as every attach
/// mode's entry programs run for every read, write and close on the host.
#[inline(always)]
pub fn traced_call(args: impl FnOnce() -> Option<(u64, u64)>) -> Option<(u32, u32, u64, u64)> {
    let (tid, tgid) = ids();
    if !maybe_traced(tgid) {
        return None;
    }
    let (first, second) = args()?;
    Some((tid, tgid, first, second))
}

#[inline(always)]
pub fn ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

#[inline(always)]
fn now() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

#[inline(always)]
fn header(kind: EventKind, tid: u32, tgid: u32, ts: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tid,
        tgid,
        _reserved: 0,
        timestamp_ns: ts,
    }
}

/// Whether `tgid` may have a traced socket: false only when neither side marked it.
#[inline(always)]
pub fn maybe_traced(tgid: u32) -> bool {
    let Some((word, shift)) = tgid_lane(tgid, TGID_WORDS.load()) else {
        return true;
    };
    let marked = |map: &Array<u64>| map.get(word).is_none_or(|w| (w >> shift) & 0xff != 0);
    marked(&TRACED_TGIDS) || marked(&AGENT_TGIDS)
}

/// Whether the agent marked `tgid` (a pool worker, or a process with seeded sockets).
#[inline(always)]
fn agent_marked(tgid: u32) -> bool {
    match tgid_lane(tgid, TGID_WORDS.load()) {
        Some((word, shift)) => AGENT_TGIDS
            .get(word)
            .is_none_or(|w| (w >> shift) & 0xff != 0),
        None => true,
    }
}

/// Marks `tgid` in `TRACED_TGIDS` (`on`) or clears its mark. Other CPUs write the other lanes
/// of the same word at the same time, so only atomic adds touch it: marking adds 1 to the
/// lane when it reads zero (two CPUs racing make it 2, still "marked", far from overflowing
/// into the next lane), clearing subtracts whatever the lane holds — only the exiting group
/// itself clears its lane.
#[inline(always)]
pub fn mark_traced(tgid: u32, on: bool) {
    let Some((word, shift)) = tgid_lane(tgid, TGID_WORDS.load()) else {
        return;
    };
    let Some(ptr) = TRACED_TGIDS.get_ptr_mut(word) else {
        return;
    };
    // SAFETY: an array map value is a live, aligned u64 for the map's lifetime; the plain
    // read only decides whether to add.
    let lane = (unsafe { core::ptr::read_volatile(ptr) } >> shift) & 0xff;
    let delta = match (on, lane) {
        (true, 0) => 1u64 << shift,
        (false, held) if held != 0 => (held << shift).wrapping_neg(),
        _ => return,
    };
    // SAFETY: as above. The result is unused, so this is BPF_XADD (any BPF CPU version).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            ptr, delta,
        );
    }
}

#[inline(always)]
fn track(tgid: u32, tid: u32, fd: u32, kind: u32, family: u32, port: u32) {
    let info = SocketInfo { kind, _reserved: 0 };
    if SOCKETS.insert(socket_key(tgid, fd), info, 0).is_err() {
        count(stat::SOCKET_INSERT_FAILED);
        return;
    }
    mark_traced(tgid, true);
    if kind == sock_kind::CANDIDATE {
        return; // announced only if its first write shows PostgreSQL
    }
    announce(tgid, tid, fd, kind, family, port);
}

fn announce(tgid: u32, tid: u32, fd: u32, kind: u32, family: u32, port: u32) {
    let Some(mut entry) = SOCKET_EVENTS.reserve::<SocketOpenEvent>(0) else {
        count(stat::SOCKET_EVENTS_DROPPED);
        return;
    };
    entry.write(SocketOpenEvent {
        header: header(EventKind::SocketOpen, tid, tgid, now()),
        fd,
        kind,
        family,
        port,
    });
    entry.submit(ring_flags());
}

/// `accept`/`accept4` returned `fd`: a pool worker's new HTTP connection.
#[inline(always)]
pub fn accepted(fd: i64) -> u32 {
    let (tid, tgid) = ids();
    if fd < 0 || !agent_marked(tgid) || unsafe { HTTP_SERVERS.get(&tgid) }.is_none() {
        return 0;
    }
    track(tgid, tid, fd as u32, sock_kind::HTTP_SERVER, 0, 0);
    0
}

/// A read/write-family call of a group that passed the byte test began on `fd`: open the
/// thread's call if the socket is traced.
#[inline(always)]
pub fn io_entered(tid: u32, tgid: u32, fd: u64, buf: u64, dir: u32, buf_mode: u32) -> u32 {
    let Some(info) = (unsafe { SOCKETS.get(&socket_key(tgid, fd as u32)) }).copied() else {
        return 0;
    };
    let call = ActiveCall {
        buf,
        enter_ns: now(),
        fd: fd as u32,
        kind: info.kind,
        direction: dir,
        buf_mode,
    };
    match ACTIVE_CALLS.get_ptr_mut(tid) {
        // SAFETY: a live element of this thread's own entry; only this thread writes it, and
        // a thread runs one system call at a time.
        Some(slot) => unsafe { *slot = call },
        None => {
            if ACTIVE_CALLS.insert(tid, call, 0).is_err() {
                count(stat::SOCKET_INSERT_FAILED);
            }
        }
    }
    0
}

/// An exiting thread's open-call entry goes with it.
#[inline(always)]
pub fn forget_thread(tid: u32) {
    let _ = ACTIVE_CALLS.remove(&tid);
}

/// The first buffer of the call and how long it is.
#[inline(always)]
fn payload_source(call: &ActiveCall) -> Option<(u64, u64)> {
    match call.buf_mode {
        BUF_PLAIN => Some((call.buf, u64::MAX)),
        BUF_IOVEC => {
            let iov = unsafe { bpf_probe_read_user(call.buf as *const Iovec) }.ok()?;
            Some((iov.base, iov.len))
        }
        BUF_MSGHDR => {
            // struct user_msghdr { void *name; int namelen; struct iovec *iov; … }: iov at 16.
            let iov_ptr = unsafe { bpf_probe_read_user((call.buf + 16) as *const u64) }.ok()?;
            let iov = unsafe { bpf_probe_read_user(iov_ptr as *const Iovec) }.ok()?;
            Some((iov.base, iov.len))
        }
        _ => None,
    }
}

/// A read/write-family call returned `moved`: the thread's open call (if any) becomes one
/// data record.
#[inline(always)]
pub fn io_exited(moved: i64) -> u32 {
    let (tid, tgid) = ids();
    let Some(slot) = ACTIVE_CALLS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: this thread's own entry (see `io_entered`).
    let mut call = unsafe { *slot };
    if call.enter_ns == 0 {
        return 0; // its enter found no traced socket: the entry is from an earlier call
    }
    unsafe { (*slot).enter_ns = 0 };
    if moved <= 0 {
        return 0; // EAGAIN on a non-blocking socket, EOF, or an error: no bytes moved
    }
    if call.kind == sock_kind::CANDIDATE && !promote_candidate(tgid, tid, &mut call, moved) {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ev = unsafe { &mut *scratch };
    let (src, first_len) = payload_source(&call).unwrap_or((0, 0));
    let limit = CAPTURE_BYTES.load() as u64;
    let mut want = moved as u64;
    if want > limit {
        want = limit;
    }
    if want > first_len {
        want = first_len;
    }
    let mut captured = want as usize;
    if captured > MAX_CAPTURE {
        captured = MAX_CAPTURE;
    }
    if captured > 0 && src != 0 {
        let dst = &mut ev.data[..captured];
        if unsafe { bpf_probe_read_user_buf(src as *const u8, dst) }.is_err() {
            count(stat::PAYLOAD_READ_FAILED);
            captured = 0;
        }
    } else {
        captured = 0;
    }
    let tail_len = capture_tail(&mut ev.tail, src, moved as u64, captured, first_len);
    let exit_ns = now();
    if call.direction == direction::EGRESS && walks_stack(&call, &ev.data, captured) {
        // Before the data record, so the agent has the stack when the bytes arrive.
        crate::python::send_stack(tgid, tid, exit_ns, call.kind == sock_kind::HTTP_SERVER);
    }
    let thread_on_cpu_ns = on_cpu_at(tid, exit_ns);
    ev.head = SocketDataHead {
        header: header(EventKind::SocketData, tid, tgid, exit_ns),
        enter_ns: call.enter_ns,
        total_len: moved as u64,
        thread_on_cpu_ns,
        fd: call.fd,
        kind: call.kind,
        direction: call.direction,
        captured: captured as u32,
        tail_len: tail_len as u32,
        _reserved: 0,
    };
    let len = size_of::<SocketDataHead>() + TAIL_CAPTURE + captured;
    if len > size_of::<SocketDataEvent>() {
        return 0;
    }
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, len) };
    if SOCKET_EVENTS.output::<[u8]>(bytes, ring_flags()).is_err() {
        count(stat::SOCKET_EVENTS_DROPPED);
    }
    0
}

/// A candidate TCP connection's first write came back: PostgreSQL's (the socket is traced
/// from now on and announced) or not (forgotten; false).
#[inline(always)]
fn promote_candidate(tgid: u32, tid: u32, call: &mut ActiveCall, moved: i64) -> bool {
    let key = socket_key(tgid, call.fd);
    let postgres = speaks_postgres(call, moved as u64);
    candidate_decided(key, postgres);
    if !postgres {
        let _ = SOCKETS.remove(&key);
        return false;
    }
    call.kind = sock_kind::POSTGRES;
    let info = SocketInfo {
        kind: sock_kind::POSTGRES,
        _reserved: 0,
    };
    if SOCKETS.insert(key, info, 0).is_err() {
        count(stat::SOCKET_INSERT_FAILED);
    }
    announce(tgid, tid, call.fd, sock_kind::POSTGRES, AF_INET as u32, 0);
    true
}

/// The payload's end into `tail`, when the prefix did not reach it and the first buffer
/// holds it all: how many bytes (0 = none or unreadable).
#[inline(always)]
fn capture_tail(
    tail: &mut [u8; TAIL_CAPTURE],
    src: u64,
    moved: u64,
    captured: usize,
    first_len: u64,
) -> usize {
    if captured == 0 || moved <= captured as u64 || first_len < moved {
        return 0;
    }
    let rest = moved - captured as u64;
    let tail_len = if rest > TAIL_CAPTURE as u64 {
        TAIL_CAPTURE
    } else {
        rest as usize
    };
    let tail_src = src + moved - tail_len as u64;
    let read = if tail_len == TAIL_CAPTURE {
        unsafe { bpf_probe_read_user_buf(tail_src as *const u8, tail) }
    } else if tail_len > 0 && tail_len < TAIL_CAPTURE {
        unsafe { bpf_probe_read_user_buf(tail_src as *const u8, &mut tail[..tail_len]) }
    } else {
        return 0;
    };
    if read.is_err() { 0 } else { tail_len }
}

/// The thread's on-CPU total at `now_ns`: its counted time plus the slice it is running.
#[inline(always)]
fn on_cpu_at(tid: u32, now_ns: u64) -> u64 {
    let Some(c) = THREADS.get_ptr(tid) else {
        return 0;
    };
    let c = unsafe { &*c };
    let running = if c.switched_in_at_ns != 0 && now_ns > c.switched_in_at_ns {
        now_ns - c.switched_in_at_ns
    } else {
        0
    };
    c.on_cpu_ns + running
}

/// Whether a write's Python stack is worth walking. A server's HTTP write is walked only
/// where a response begins (`HTTP/1.x …`): the Task writing the head is the one answering
/// the request, and the body, chunks and headers-then-body second writes come from that
/// same Task (pipelined requests are answered in order, each from its own head). Walking
/// every write was half the walks of an asyncio request.
#[inline(always)]
fn walks_stack(call: &ActiveCall, data: &[u8; MAX_CAPTURE], captured: usize) -> bool {
    call.kind != sock_kind::HTTP_SERVER || (captured >= 5 && data[..5] == *b"HTTP/")
}

/// The first bytes a PostgreSQL client sends: a StartupMessage (length, protocol 3.x), or an
/// SSLRequest / GSSENCRequest (length 8 and its magic code). Anything else — or the server
/// speaking first — means this candidate is not PostgreSQL.
#[inline(always)]
fn speaks_postgres(call: &ActiveCall, moved: u64) -> bool {
    if call.direction != direction::EGRESS || moved < 8 {
        return false;
    }
    let Some((src, first_len)) = payload_source(call) else {
        return false;
    };
    if first_len < 8 {
        return false;
    }
    let Ok(head) = (unsafe { bpf_probe_read_user(src as *const [u8; 8]) }) else {
        return false;
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    match code {
        80_877_103 | 80_877_104 => len == 8,
        c if c >> 16 == 3 => (8..=10_000).contains(&len) && len as u64 <= moved,
        _ => false,
    }
}

/// `close(fd)` began in a group that passed the byte test: a traced socket is closed.
#[inline(always)]
pub fn close_entered(tid: u32, tgid: u32, fd: u64) -> u32 {
    let key = socket_key(tgid, fd as u32);
    let Some(info) = (unsafe { SOCKETS.get(&key) }).copied() else {
        return 0;
    };
    let _ = SOCKETS.remove(&key);
    if info.kind == sock_kind::CANDIDATE {
        let _ = CANDIDATE_DESTINATIONS.remove(&key);
        return 0; // never announced, nothing to close in the agent
    }
    let Some(mut entry) = SOCKET_EVENTS.reserve::<SocketCloseEvent>(0) else {
        count(stat::SOCKET_EVENTS_DROPPED);
        return 0;
    };
    entry.write(SocketCloseEvent {
        header: header(EventKind::SocketClose, tid, tgid, now()),
        fd: fd as u32,
        kind: info.kind,
    });
    entry.submit(ring_flags());
    0
}
