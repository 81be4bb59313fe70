//! CPython frame walking at socket calls, so the agent knows which coroutine (asyncio Task)
//! sent a query or wrote a response, and which line of application code issued it.
//!
//! The agent registers each Python worker in `PY_PROCS` with the address of
//! `_PyRuntime.interpreters.head` and the version's field offsets. At a traced socket call the
//! program finds the calling thread's `PyThreadState` (cached per thread, checked against its
//! `native_thread_id`), follows it to the innermost `_PyInterpreterFrame` and walks `previous`
//! for at most `MAX_PY_WALK` frames, sending the innermost `MAX_PY_FRAMES` (code object,
//! instruction) pairs and the address of the outermost coroutine frame. Every read is a
//! `bpf_probe_read_user` that may fail (a freed frame, a garbage pointer): the walk stops there
//! and says so in the record's status; the loop is bounded for the verifier.
use aya_ebpf::{
    bindings::bpf_pidns_info,
    helpers::{bpf_get_ns_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use herdwatch_common::{
    EventHeader, EventKind, MAX_PY_FRAMES, MAX_PY_THREADS, MAX_PY_WALK, PY_NO_CFRAME, PyFrameBlock,
    PyFrameRef, PyProcess, PyStackEvent, PyStackHead, py_status, stat,
};

use crate::{
    maps::{add, count},
    socket::SOCKET_EVENTS,
};

/// Python processes whose frames are walked, by tgid; written by the agent.
#[map]
pub static PY_PROCS: HashMap<u32, PyProcess> = HashMap::with_max_entries(16_384, 0);
/// Thread id (the kernel's) → its `PyThreadState` address, found once per thread.
#[map]
static PY_THREADS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65_536, 0);
#[map]
static PY_SCRATCH: PerCpuArray<PyStackEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static PY_BLOCK: PerCpuArray<PyFrameBlock> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn read_ptr(addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// A pointer-sized field of the frame block. Offsets of pointers are multiples of 8 below 64
/// (the agent refuses other tables), so the mask only proves the bound to the verifier.
#[inline(always)]
fn block_ptr(block: &PyFrameBlock, offset: u16) -> u64 {
    let at = (offset as usize) & 0x38;
    let b = &block.bytes;
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// The calling thread's id as its own process sees it (thread states store that one).
#[inline(always)]
fn namespace_tid(py: &PyProcess, tid: u32) -> u32 {
    if py.pidns_ino == 0 {
        return tid;
    }
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    let rc = unsafe {
        bpf_get_ns_current_pid_tgid(
            py.pidns_dev,
            py.pidns_ino,
            &mut info,
            size_of::<bpf_pidns_info>() as u32,
        )
    };
    if rc == 0 { info.pid } else { 0 }
}

/// The calling thread's `PyThreadState`, or 0.
#[inline(always)]
fn thread_state(py: &PyProcess, tid: u32) -> u64 {
    let want = namespace_tid(py, tid) as u64;
    if want == 0 {
        return 0;
    }
    let off = &py.offsets;
    if let Some(&cached) = unsafe { PY_THREADS.get(&tid) }
        && read_ptr(cached + off.tstate_native_thread_id as u64) == Some(want)
    {
        return cached;
    }
    let Some(interp) = read_ptr(py.interp_head_addr) else {
        return 0;
    };
    let mut tstate = read_ptr(interp + off.interp_threads_head as u64).unwrap_or(0);
    for _ in 0..MAX_PY_THREADS {
        if tstate == 0 {
            return 0;
        }
        if read_ptr(tstate + off.tstate_native_thread_id as u64) == Some(want) {
            let _ = PY_THREADS.insert(&tid, &tstate, 0);
            return tstate;
        }
        tstate = read_ptr(tstate + off.tstate_next as u64).unwrap_or(0);
    }
    0
}

/// The thread's innermost Python frame and the walk's status so far (no thread state for
/// it, or an unreadable pointer on the way).
#[inline(always)]
fn current_frame(py: &PyProcess, tid: u32) -> (u64, u32) {
    let off = py.offsets;
    let tstate = thread_state(py, tid);
    if tstate == 0 {
        return (0, py_status::NO_THREAD);
    }
    match read_ptr(tstate + off.tstate_frame as u64) {
        Some(p) if off.cframe_current_frame == PY_NO_CFRAME => (p, 0),
        Some(cframe) => match read_ptr(cframe + off.cframe_current_frame as u64) {
            Some(p) => (p, 0),
            None => (0, py_status::READ_FAILED),
        },
        None => (0, py_status::READ_FAILED),
    }
}

/// Where a frame block keeps the frame's owner. Owner offsets lie in 8..72 (the agent
/// refuses others); the mask proves it to the verifier, which a plain bounds check does not
/// once the compiler hoists the address.
#[inline(always)]
fn owner_offset(frame_owner: u16) -> usize {
    8 + ((frame_owner as usize).wrapping_sub(8) & 0x3f)
}

/// A stack record's head before the walk fills in the task, depth and frames.
#[inline(always)]
fn stack_head(tgid: u32, tid: u32, timestamp_ns: u64, status: u32) -> PyStackHead {
    PyStackHead {
        header: EventHeader {
            kind: EventKind::PyStack as u32,
            tid,
            tgid,
            _reserved: 0,
            timestamp_ns,
        },
        task: 0,
        depth: 0,
        n_frames: 0,
        status,
        _reserved: 0,
    }
}

/// Sends the scratch record's head and its first `n` frames.
#[inline(always)]
fn send_frames(scratch: *mut PyStackEvent, n: usize) {
    if n > MAX_PY_FRAMES {
        return;
    }
    let len = size_of::<PyStackHead>() + n * size_of::<PyFrameRef>();
    if len > size_of::<PyStackEvent>() {
        return;
    }
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, len) };
    if SOCKET_EVENTS
        .output::<[u8]>(bytes, crate::socket::ring_flags())
        .is_err()
    {
        count(stat::SOCKET_EVENTS_DROPPED);
    }
}

/// Walks the calling thread's Python stack and sends it ahead of the socket record stamped
/// `timestamp_ns`. Costs one map lookup for threads of processes that are not registered.
#[inline(always)]
pub fn send_stack(tgid: u32, tid: u32, timestamp_ns: u64, http_write: bool) {
    let Some(py) = (unsafe { PY_PROCS.get(&tgid) }) else {
        return;
    };
    if http_write && py.flags & herdwatch_common::py_flags::WALK_HTTP == 0 {
        return;
    }
    let (Some(scratch), Some(block)) = (PY_SCRATCH.get_ptr_mut(0), PY_BLOCK.get_ptr_mut(0)) else {
        return;
    };
    // What the walk costs, measured where it runs (`cargo xtask bench frames` reports it).
    let began = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let ev = unsafe { &mut *scratch };
    let block = unsafe { &mut *block };
    let off = py.offsets;
    let (mut frame, status) = current_frame(py, tid);
    let owner_at = owner_offset(off.frame_owner);
    ev.head = stack_head(tgid, tid, timestamp_ns, status);
    // The counters live in the map value, read and written as memory: a verifier tracking
    // them in registers sees every (frames kept, depth) pair as a new state and gives up
    // long before the walk's end; from memory they are unknown numbers, and paths merge.
    let head = &raw mut ev.head;
    // Only an asyncio worker needs the chain's far end (its outermost coroutine frame is the
    // Task); elsewhere the stack serves the call site, which lies among the innermost frames
    // kept — walking the server's outer frames (gunicorn's arbiter, the worker loop) is waste.
    let whole_chain = py.flags & herdwatch_common::py_flags::WALK_HTTP != 0;
    let boundary = py.boundary_code;
    for _ in 0..MAX_PY_WALK {
        if frame == 0 {
            break;
        }
        if !whole_chain
            && unsafe { core::ptr::read_volatile(&raw const (*head).n_frames) } as usize
                >= MAX_PY_FRAMES
        {
            frame = 0; // enough for the call site; not a truncation
            break;
        }
        if unsafe { bpf_probe_read_user_buf(frame as *const u8, &mut block.bytes) }.is_err() {
            unsafe { (*head).status |= py_status::READ_FAILED };
            frame = 0;
            break;
        }
        let owner = block.bytes[owner_at];
        let previous = block_ptr(block, off.frame_previous);
        let code = block_ptr(block, off.frame_code);
        if boundary != 0 && code == boundary {
            // The server's request/Task runner: everything outward is its loop.
            frame = 0;
            break;
        }
        if owner != off.owner_cstack {
            if owner == off.owner_generator {
                unsafe { core::ptr::write_volatile(&raw mut (*head).task, frame) };
            }
            let n = unsafe { core::ptr::read_volatile(&raw const (*head).n_frames) } as usize;
            if n < MAX_PY_FRAMES {
                ev.frames[n] = PyFrameRef {
                    code,
                    instr: block_ptr(block, off.frame_instr),
                };
                unsafe { core::ptr::write_volatile(&raw mut (*head).n_frames, n as u32 + 1) };
            }
            let depth = unsafe { core::ptr::read_volatile(&raw const (*head).depth) };
            unsafe { core::ptr::write_volatile(&raw mut (*head).depth, depth + 1) };
        }
        frame = previous;
    }
    if frame != 0 {
        unsafe { (*head).status |= py_status::TRUNCATED };
    }
    let n = unsafe { core::ptr::read_volatile(&raw const (*head).n_frames) } as usize;
    send_frames(scratch, n);
    count(stat::PY_WALKS);
    add(
        stat::PY_WALK_NS,
        unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } - began,
    );
}
