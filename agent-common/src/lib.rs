//! Types shared by the herdwatch eBPF programs (`herdwatch-ebpf`) and the agent (`herdwatch`).
//!
//! Everything here is `#[repr(C)]`, has no padding holes the verifier would reject, and is
//! 8-byte aligned so it can be reserved in a BPF ring buffer. With the `user` feature each type is
//! `aya::Pod` so the agent can read maps and globals of it.
#![no_std]

/// Length of `task_struct.comm` in the kernel.
pub const COMM_LEN: usize = 16;
/// How many bytes of the exec'd filename the kernel copies into an exec event.
pub const FILENAME_LEN: usize = 256;

/// Default capacity of the per-thread counter LRU map. A busy 64-core host has a few tens of
/// thousands of threads; the agent can override this at load time.
pub const THREAD_MAP_ENTRIES: u32 = 65_536;
/// Default byte size of the process-event ring buffer (a power of two multiple of the page size).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Largest payload prefix one socket event can carry (the `capture_bytes` setting is ≤ this).
pub const MAX_CAPTURE: usize = 4096;
/// Bytes of the payload's end captured besides the prefix: where a PostgreSQL response's
/// CommandComplete and ReadyForQuery, or a chunked body's last chunk, sit.
pub const TAIL_CAPTURE: usize = 128;
/// Default payload prefix captured per socket call.
pub const DEFAULT_CAPTURE: u32 = 512;
/// Default byte size of the socket-event ring buffer.
pub const SOCKET_RING_BYTES: u32 = 8 << 20;
/// Default capacity of the interesting-socket LRU map.
pub const SOCKET_MAP_ENTRIES: u32 = 65_536;

/// What the agent knows a traced socket to be (`SOCKETS` map value, event field).
pub mod sock_kind {
    /// A client connection to PostgreSQL or PgBouncer.
    pub const POSTGRES: u32 = 1;
    /// A connection accepted by a gunicorn/uvicorn worker (HTTP server side).
    pub const HTTP_SERVER: u32 = 2;
    /// An outbound TCP connection to some other port: traced until its first write shows
    /// whether it speaks PostgreSQL (StartupMessage, SSLRequest, GSSENCRequest), then promoted
    /// to POSTGRES or forgotten. Never reported to the agent as such.
    pub const CANDIDATE: u32 = 3;
}

/// Which call moved the bytes.
pub mod direction {
    /// read, recvfrom, recvmsg, readv: bytes into the process.
    pub const INGRESS: u32 = 0;
    /// write, sendto, sendmsg, writev: bytes out of the process.
    pub const EGRESS: u32 = 1;
}

/// Thread group ids per word of the traced-tgid filters (`TRACED_TGIDS`, `AGENT_TGIDS`): one
/// byte each, nonzero = may have traced sockets. Bytes rather than bits because the kernel
/// side can only add atomically on every CPU model (BPF_XADD), not OR: a byte lane takes
/// concurrent adds without spilling into its neighbours.
pub const TGIDS_PER_WORD: u32 = 8;
/// Default (and largest) number of words: covers thread group ids below 4 194 304, the
/// largest `pid_max`; the loader sizes the maps from this host's `pid_max`.
pub const TGID_FILTER_WORDS: u32 = 4_194_304 / TGIDS_PER_WORD;

/// The word index and byte shift of `tgid` in a traced-tgid filter of `words` words, or None
/// beyond it (such ids always take the slow path: a `SOCKETS` lookup).
pub const fn tgid_lane(tgid: u32, words: u32) -> Option<(u32, u32)> {
    let word = tgid / TGIDS_PER_WORD;
    if word >= words {
        None
    } else {
        Some((word, (tgid % TGIDS_PER_WORD) * 8))
    }
}

/// The `SOCKETS` map key: thread group and fd.
pub const fn socket_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketInfo {
    pub kind: u32,
    pub _reserved: u32,
}

/// A socket became interesting (connect to a PostgreSQL port, accept by a pool worker).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketOpenEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub kind: u32,
    /// AF_INET / AF_INET6 / AF_UNIX of the connect address (0 for accept).
    pub family: u32,
    /// Peer port for a TCP connect, host order (0 otherwise).
    pub port: u32,
}

/// A traced socket was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketCloseEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub kind: u32,
}

/// Bytes moved on a traced socket: a fixed head followed by `captured` payload bytes (the
/// record is only as long as it needs to be).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketDataHead {
    /// `timestamp_ns` = syscall exit.
    pub header: EventHeader,
    pub enter_ns: u64,
    /// Bytes the call really moved (its return value).
    pub total_len: u64,
    /// The calling thread's on-CPU total at the call's exit, running slice included (0 if the
    /// thread has no counters yet): the agent attributes CPU between a thread's socket calls.
    pub thread_on_cpu_ns: u64,
    pub fd: u32,
    pub kind: u32,
    pub direction: u32,
    /// Prefix bytes in `data`.
    pub captured: u32,
    /// Bytes in `tail`: the last bytes the call moved, when the prefix did not reach them.
    pub tail_len: u32,
    pub _reserved: u32,
}

/// The per-CPU scratch record the kernel fills before copying `head + tail + captured` bytes
/// out (the tail sits before the prefix so the record's length varies only at its end).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketDataEvent {
    pub head: SocketDataHead,
    pub tail: [u8; TAIL_CAPTURE],
    pub data: [u8; MAX_CAPTURE],
}

/// Python frames sent with one socket call, innermost first: enough to reach the application
/// frame that issued a query through a driver (psycopg, asyncpg) and an ORM layer or two.
pub const MAX_PY_FRAMES: usize = 32;
/// Frames walked at most per call looking for the running coroutine: an asyncio worker's stack
/// from the event loop's entry to the socket call (uvicorn under gunicorn is ~40–60 deep).
pub const MAX_PY_WALK: u32 = 128;
/// Thread states tried per process when a thread's own is not cached yet.
pub const MAX_PY_THREADS: u32 = 64;
/// Bytes read from each `_PyInterpreterFrame` in one go: every field the walk needs lies in
/// them on CPython 3.11–3.13 (owner is the last, at 69/70).
pub const PY_FRAME_BLOCK: usize = 72;
/// `PyOffsets::cframe_current_frame` when the thread state points at the frame directly (3.13).
pub const PY_NO_CFRAME: u16 = u16::MAX;

/// `PyProcess::flags`.
pub mod py_flags {
    /// An asyncio worker: walk its frames on HTTP writes too, so the agent learns which
    /// coroutine (Task) wrote which response.
    pub const WALK_HTTP: u32 = 1;
}

/// `PyStackHead::status` bits.
pub mod py_status {
    /// The chain went on past `MAX_PY_WALK` frames: the task may be an inner coroutine.
    pub const TRUNCATED: u32 = 1;
    /// No thread state of the interpreter carries this thread's id.
    pub const NO_THREAD: u32 = 2;
    /// A thread state or frame could not be read (freed, paged out, garbage pointer).
    pub const READ_FAILED: u32 = 4;
}

/// Where CPython keeps what the frame walk reads, per interpreter version (byte offsets). The
/// agent fills it from its table keyed by version; the kernel side knows no version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyOffsets {
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.native_thread_id` (the thread id in the process's pid namespace).
    pub tstate_native_thread_id: u16,
    /// `PyThreadState.cframe` (3.11, 3.12) or `.current_frame` (3.13).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`, or `PY_NO_CFRAME`.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.f_code` / `.f_executable`.
    pub frame_code: u16,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.prev_instr` / `.instr_ptr`.
    pub frame_instr: u16,
    /// `_PyInterpreterFrame.owner`.
    pub frame_owner: u16,
    /// `FRAME_OWNED_BY_GENERATOR`: the frame lives inside a generator or coroutine object.
    pub owner_generator: u8,
    /// `FRAME_OWNED_BY_CSTACK` (3.12+): an entry shim, not Python code (0xff = none).
    pub owner_cstack: u8,
    pub _reserved: [u8; 4],
}

/// A Python process the socket programs walk frames in (`PY_PROCS` map value, key tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcess {
    /// Address of `_PyRuntime.interpreters.head` in the process.
    pub interp_head_addr: u64,
    /// The process's pid namespace (device and inode of /proc/<pid>/ns/pid): thread states
    /// carry namespace-local thread ids. 0 = the agent's own namespace.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    pub offsets: PyOffsets,
    /// `py_flags` bits.
    pub flags: u32,
    pub _reserved: u32,
    /// Code object at which a walk stops (0 = none known yet): the frame that runs each
    /// request or Task in this server (asyncio's `Handle._run`, gunicorn's `handle_request`).
    /// Every frame outward of it is the server's loop — no Task, no call site — and walking
    /// them was most of an asyncio walk. The agent learns it from resolved stacks.
    pub boundary_code: u64,
}

/// One Python frame: its code object and the instruction it is at (the agent turns these into
/// qualified name, file and line from the process's memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrameRef {
    pub code: u64,
    pub instr: u64,
}

/// The Python stack of a socket call, sent just before that call's data record (same thread,
/// same `timestamp_ns`), sized to `n_frames`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStackHead {
    pub header: EventHeader,
    /// Address of the outermost coroutine frame on the stack: in asyncio, the running Task's
    /// coroutine (its frame lives inside it, so the address names the Task while it lives).
    /// 0 = no coroutine on the stack (a sync call, or an event-loop callback).
    pub task: u64,
    /// Python frames on the stack (walked, up to `MAX_PY_WALK`).
    pub depth: u32,
    /// Frames in the record (innermost first, up to `MAX_PY_FRAMES`).
    pub n_frames: u32,
    /// `py_status` bits.
    pub status: u32,
    pub _reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyStackEvent {
    pub head: PyStackHead,
    pub frames: [PyFrameRef; MAX_PY_FRAMES],
}

/// Scratch for one frame's bytes (per-CPU map value: too large for comfort on the BPF stack
/// next to the socket program's own state).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PyFrameBlock {
    pub bytes: [u8; PY_FRAME_BLOCK],
}

/// `sched_switch.prev_state` bits as the tracepoint reports them (`task_state_index` → `1 << (i-1)`).
pub mod task_state {
    pub const RUNNING: u64 = 0;
    pub const INTERRUPTIBLE: u64 = 0x1;
    pub const UNINTERRUPTIBLE: u64 = 0x2;
    /// Set by `__trace_sched_switch_state` when the switch is a preemption (`TASK_REPORT_MAX`).
    pub const PREEMPTED: u64 = 0x100;
}

/// Per-thread scheduler counters, the value of the `THREADS` LRU hash map (key: thread id).
///
/// Totals are monotonic for the life of the thread; the `*_at_ns` fields are the kernel side's
/// scratch state (CLOCK_MONOTONIC, `bpf_ktime_get_ns`) and are 0 when not applicable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCounters {
    /// Thread group id (process id); 0 until the thread has been switched out once.
    pub tgid: u32,
    pub _reserved: u32,
    /// Time on CPU.
    pub on_cpu_ns: u64,
    /// Off CPU in interruptible sleep (S): waiting on a socket, a lock, a timer.
    pub sleep_ns: u64,
    /// Off CPU in uninterruptible sleep (D): mostly disk and other I/O.
    pub blocked_ns: u64,
    /// Off CPU in any other state (stopped, traced, parked, idle kernel threads).
    pub other_off_ns: u64,
    /// Runnable but waiting on a run queue (wakeup or preemption → switch-in).
    pub run_delay_ns: u64,
    /// Number of run-queue waits that ended in a switch-in.
    pub run_delay_count: u64,
    /// Largest single run-queue wait seen.
    pub run_delay_max_ns: u64,
    /// Switches where the thread gave up the CPU itself (it blocked).
    pub voluntary_switches: u64,
    /// Switches where the thread was preempted while still runnable.
    pub involuntary_switches: u64,
    pub switched_in_at_ns: u64,
    pub switched_out_at_ns: u64,
    pub enqueued_at_ns: u64,
    /// `prev_state` at the last switch-out.
    pub out_state: u64,
}

/// What each CPU is running, per the last `sched_switch` seen on it (the `CURRENT` per-CPU
/// array). Lets the agent add the in-progress slice of a running thread, and the kernel side
/// notice a switch-out it was never told about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCurrent {
    pub tid: u32,
    pub _reserved: u32,
    pub since_ns: u64,
}

/// Which kind of record follows an [`EventHeader`] in the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A task was created (`task:task_newtask`): a process (fork) or a thread (clone).
    NewTask = 1,
    /// A task replaced its image (`sched:sched_process_exec`).
    Exec = 2,
    /// A task exited (`sched:sched_process_exit`), with its final counters.
    Exit = 3,
    SocketOpen = 4,
    SocketData = 5,
    SocketClose = 6,
    /// The Python stack of the socket call whose data record follows.
    PyStack = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::NewTask),
            2 => Some(Self::Exec),
            3 => Some(Self::Exit),
            4 => Some(Self::SocketOpen),
            5 => Some(Self::SocketData),
            6 => Some(Self::SocketClose),
            7 => Some(Self::PyStack),
            _ => None,
        }
    }
}

/// Common first fields of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    /// The task the event is about (thread id).
    pub tid: u32,
    /// Its thread group id.
    pub tgid: u32,
    pub _reserved: u32,
    pub timestamp_ns: u64,
}

/// `CLONE_THREAD` from `<linux/sched.h>`: the new task shares the creator's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NewTaskEvent {
    /// `tid` = the new task, `tgid` = its thread group (the creator's for a thread, its own for a process).
    pub header: EventHeader,
    /// The creating thread and its thread group.
    pub parent_tid: u32,
    pub parent_tgid: u32,
    pub clone_flags: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// The tid before exec (differs from header.tid when a non-leader thread exec'd).
    pub old_tid: u32,
    pub filename_len: u32,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// 1 when this was the last thread of the group (the process is gone).
    pub group_dead: u32,
    pub _reserved: u32,
    pub comm: [u8; COMM_LEN],
    /// The thread's counters at exit; the kernel side removes its map entry afterwards.
    pub counters: ThreadCounters,
}

/// Indexes of the `STATS` per-CPU array: everything the kernel side had to drop.
pub mod stat {
    /// Ring buffer full: a process event was lost.
    pub const EVENTS_DROPPED: u32 = 0;
    /// The per-thread map refused an insert.
    pub const THREAD_INSERT_FAILED: u32 = 1;
    /// A tracepoint field could not be read.
    pub const READ_FAILED: u32 = 2;
    /// A CPU switched away from a task whose switch-out the kernel never reported (seen on
    /// some kernels for some tasks); that task's open slice is discarded, not guessed.
    pub const MISSED_SWITCH_OUT: u32 = 3;
    /// Socket ring buffer full: a payload, open or close was lost.
    pub const SOCKET_EVENTS_DROPPED: u32 = 4;
    /// The interesting-socket or in-flight-call map refused an insert.
    pub const SOCKET_INSERT_FAILED: u32 = 5;
    /// A payload could not be read from user memory (counted, event sent without bytes).
    pub const PAYLOAD_READ_FAILED: u32 = 6;
    /// Python stacks walked, and the kernel time the walks took (ns): what attribution costs.
    pub const PY_WALKS: u32 = 7;
    pub const PY_WALK_NS: u32 = 8;
    /// TCP connects not traced because their destination already showed it does not speak
    /// PostgreSQL (not a loss: what the destination cache saved).
    pub const KNOWN_NOT_POSTGRES: u32 = 9;
    pub const COUNT: u32 = 10;
}

/// Byte offsets of the tracepoint fields the programs read, taken by the agent from
/// `events/<category>/<name>/format` in tracefs at load time (the `OFFSETS` global), so a kernel
/// that moves a field keeps working. The defaults are those of Linux 6.x on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub switch_prev_pid: u32,
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    pub wakeup_pid: u32,
    pub exec_filename: u32,
    pub exec_pid: u32,
    pub exec_old_pid: u32,
    pub exit_group_dead: u32,
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// Byte offsets in `struct task_struct` of `se.sum_exec_runtime` and `sched_info.run_delay`
    /// (from the kernel's BTF). When known, on-CPU and run-queue totals are the kernel's own,
    /// read at each switch-out and at exit, so a tracepoint the kernel does not fire cannot
    /// lose time. 0 = unknown: the programs fall back to timestamp accounting.
    pub task_sum_exec_runtime: u32,
    pub task_run_delay: u32,
    /// `task_struct.pid` (the thread id), for the raw `sched_switch` program. 0 = unknown.
    pub task_pid: u32,
    pub _reserved: u32,
}

impl TracepointOffsets {
    pub const LINUX_6_X86_64: Self = Self {
        switch_prev_pid: 24,
        switch_prev_state: 32,
        switch_next_pid: 56,
        wakeup_pid: 24,
        exec_filename: 8,
        exec_pid: 12,
        exec_old_pid: 16,
        exit_group_dead: 32,
        newtask_pid: 8,
        newtask_clone_flags: 32,
        task_sum_exec_runtime: 0,
        task_run_delay: 0,
        task_pid: 0,
        _reserved: 0,
    };
}

/// The host's system-call ABI, for the socket programs attached to the raw `sys_enter` and
/// `sys_exit` tracepoints: where `struct pt_regs` keeps the call's number and first two
/// arguments, how a native call is told from a 32-bit compat one (whose numbers mean other
/// calls), and the numbers of the calls traced. The agent patches it for the architecture
/// it was built for; `enabled` = 0 leaves the raw programs inert.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallAbi {
    pub enabled: u32,
    /// Byte offsets in `struct pt_regs` of the first and second argument and of the number.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_nr: u32,
    /// A native call has `(regs[native_at] & native_mask) == native_value` (x86-64: the code
    /// segment is `__USER_CS`; arm64: pstate's 32-bit mode bit is clear).
    pub regs_native_at: u32,
    pub _pad: u32,
    pub native_mask: u64,
    pub native_value: u64,
    pub nr: SyscallNumbers,
}

/// Numbers of the traced calls; `NO_SYSCALL` for one the architecture lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallNumbers {
    pub read: u32,
    pub recvfrom: u32,
    pub readv: u32,
    pub recvmsg: u32,
    pub write: u32,
    pub sendto: u32,
    pub writev: u32,
    pub sendmsg: u32,
    pub connect: u32,
    pub accept: u32,
    pub accept4: u32,
    pub close: u32,
}

pub const NO_SYSCALL: u32 = u32::MAX;

impl SyscallAbi {
    /// Until the agent patches it: the raw programs do nothing.
    pub const INERT: Self = Self {
        enabled: 0,
        regs_arg0: 0,
        regs_arg1: 0,
        regs_nr: 0,
        regs_native_at: 0,
        _pad: 0,
        native_mask: 0,
        native_value: 0,
        nr: SyscallNumbers {
            read: NO_SYSCALL,
            recvfrom: NO_SYSCALL,
            readv: NO_SYSCALL,
            recvmsg: NO_SYSCALL,
            write: NO_SYSCALL,
            sendto: NO_SYSCALL,
            writev: NO_SYSCALL,
            sendmsg: NO_SYSCALL,
            connect: NO_SYSCALL,
            accept: NO_SYSCALL,
            accept4: NO_SYSCALL,
            close: NO_SYSCALL,
        },
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)] plain integers/arrays with no implicit padding.
    unsafe impl aya::Pod for ThreadCounters {}
    unsafe impl aya::Pod for TracepointOffsets {}
    unsafe impl aya::Pod for CpuCurrent {}
    unsafe impl aya::Pod for SocketInfo {}
    unsafe impl aya::Pod for PyProcess {}
    unsafe impl aya::Pod for SyscallAbi {}
}
