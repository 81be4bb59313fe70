//! Loads the embedded eBPF object, patches it for this kernel and attaches every program.
use aya::{Ebpf, EbpfLoader, programs::TracePoint};
use herdwatch_common::TracepointOffsets;

use crate::error::{Error, PRIVILEGE_HINT, Result, is_permission_error};

use super::tracefs;

/// The eBPF object built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/herdwatch-ebpf"));

/// Every program: (function name in agent-ebpf, tracepoint category, tracepoint name).
pub const PROGRAMS: [(&str, &str, &str); 27] = [
    ("sched_switch", "sched", "sched_switch"),
    ("sched_wakeup", "sched", "sched_wakeup"),
    ("sched_wakeup_new", "sched", "sched_wakeup_new"),
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("sys_enter_read", "syscalls", "sys_enter_read"),
    ("sys_exit_read", "syscalls", "sys_exit_read"),
    ("sys_enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("sys_exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("sys_enter_readv", "syscalls", "sys_enter_readv"),
    ("sys_exit_readv", "syscalls", "sys_exit_readv"),
    ("sys_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("sys_exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("sys_enter_write", "syscalls", "sys_enter_write"),
    ("sys_exit_write", "syscalls", "sys_exit_write"),
    ("sys_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("sys_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("sys_enter_writev", "syscalls", "sys_enter_writev"),
    ("sys_exit_writev", "syscalls", "sys_exit_writev"),
    ("sys_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("sys_exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
];

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub thread_map_entries: u32,
    pub event_ring_bytes: u32,
    /// Highest aya-log level the kernel side emits (1 = error … 5 = trace).
    pub kernel_log_level: u8,
    /// Payload prefix captured per socket call (≤ MAX_CAPTURE).
    pub capture_bytes: u32,
    pub socket_ring_bytes: u32,
    pub socket_map_entries: u32,
    /// Attach the socket (syscall) programs.
    pub socket_tracing: bool,
    /// Attach them to the raw `sys_enter`/`sys_exit` tracepoints where the ABI is known.
    pub raw_syscalls: bool,
    /// Otherwise attach them as fentry/fexit programs on the syscall functions where the
    /// kernel allows (falling back to the per-call `syscalls:*` tracepoints).
    pub trampolines: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            thread_map_entries: herdwatch_common::THREAD_MAP_ENTRIES,
            event_ring_bytes: herdwatch_common::EVENT_RING_BYTES,
            kernel_log_level: 2,
            capture_bytes: herdwatch_common::DEFAULT_CAPTURE,
            socket_ring_bytes: herdwatch_common::SOCKET_RING_BYTES,
            socket_map_entries: herdwatch_common::SOCKET_MAP_ENTRIES,
            socket_tracing: true,
            raw_syscalls: false,
            trampolines: false,
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map creation does not
/// fail on them. Newer kernels ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "could not lift RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn hint_for(err: &(dyn std::error::Error + 'static)) -> &'static str {
    if is_permission_error(err) {
        PRIVILEGE_HINT
    } else {
        ""
    }
}

/// Loads the object with this kernel's tracepoint offsets, without attaching anything. The
/// flag says whether task_struct offsets were found in BTF (the raw scheduler programs can run).
/// Unread bytes in the socket ring at which the kernel side wakes the agent: a quarter of
/// the ring, so a burst between two drain timer ticks never has to fill it.
fn socket_wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 4).max(1)
}

/// Words of the traced-tgid filters for this host: one byte per possible thread group id
/// (`/proc/sys/kernel/pid_max`; 32 KiB at the kernel's default 32768, 4 MiB at most).
pub fn tgid_filter_words() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    pid_max
        .div_ceil(herdwatch_common::TGIDS_PER_WORD)
        .clamp(1, herdwatch_common::TGID_FILTER_WORDS)
}

/// The loaded (not yet attached) object and what this host allows of it.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// task_struct offsets were found in BTF: the raw scheduler programs can run.
    pub task_offsets_known: bool,
    /// The host's syscall ABI is known: the raw `sys_enter`/`sys_exit` pair or the
    /// trampoline programs can run instead of one `syscalls:*` program per call.
    pub syscall_abi_known: bool,
}

pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    raise_memlock_limit();
    let tracefs = tracefs::ensure_mounted()?;
    let mut offsets: TracepointOffsets = tracefs::read_offsets(&tracefs)?;
    let mut task_offsets_known = false;
    match super::btf::task_offsets(std::path::Path::new("/sys/kernel/btf/vmlinux")) {
        Ok(task) => {
            offsets.task_sum_exec_runtime = task.sum_exec_runtime;
            offsets.task_run_delay = task.run_delay;
            offsets.task_pid = task.pid;
            task_offsets_known = true;
        }
        Err(reason) => tracing::warn!(
            "scheduler totals not readable from task_struct ({reason}); on-CPU time falls back to \
             switch timestamps, which lose time when the kernel skips a sched_switch"
        ),
    }
    let level = opts.kernel_log_level;
    let capture = opts.capture_bytes.min(herdwatch_common::MAX_CAPTURE as u32);
    let wakeup_bytes = socket_wakeup_bytes(opts.socket_ring_bytes);
    let tgid_words = tgid_filter_words();
    let syscall_abi = super::syscall_abi::host().unwrap_or(herdwatch_common::SyscallAbi::INERT);
    EbpfLoader::new()
        .override_global("SYSCALL_ABI", &syscall_abi, true)
        .override_global("OFFSETS", &offsets, true)
        .override_global("CAPTURE_BYTES", &capture, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes, true)
        .override_global("TGID_WORDS", &tgid_words, true)
        .map_max_entries("TRACED_TGIDS", tgid_words)
        .map_max_entries("AGENT_TGIDS", tgid_words)
        .override_global(aya_log::LEVEL, &level, false)
        .map_max_entries("THREADS", opts.thread_map_entries)
        .map_max_entries("EVENTS", opts.event_ring_bytes)
        .map_max_entries("SOCKET_EVENTS", opts.socket_ring_bytes)
        .map_max_entries("SOCKETS", opts.socket_map_entries)
        .load(EBPF_OBJECT)
        .map_err(|source| Error::Load {
            hint: hint_for(&source),
            source: Box::new(source),
        })
        .map(|ebpf| Loaded {
            ebpf,
            task_offsets_known,
            syscall_abi_known: syscall_abi.enabled != 0,
        })
}

/// The socket programs on raw tracepoints: (program, tracepoint). Used instead of the
/// `syscalls` programs of `PROGRAMS` (and their exit handler) when the host's ABI is known.
pub const RAW_SYSCALL_PROGRAMS: [(&str, &str); 2] =
    [("syscall_enter", "sys_enter"), ("syscall_exit", "sys_exit")];

/// Raw-tracepoint variants of the scheduler programs, used when task_struct offsets are
/// known (they read the pid from the task): (program, tracepoint). Each replaces the classic
/// program named after its tracepoint; the kernel builds no trace record for them.
pub const RAW_SCHEDULER_PROGRAMS: [(&str, &str); 3] = [
    ("sched_switch_raw", "sched_switch"),
    ("sched_wakeup_raw", "sched_wakeup"),
    ("sched_wakeup_new_raw", "sched_wakeup_new"),
];

pub(super) fn program_error(
    program: &str,
    action: &'static str,
    source: aya::programs::ProgramError,
) -> Error {
    Error::Program {
        program: program.to_string(),
        action,
        hint: hint_for(&source),
        source: Box::new(source),
    }
}

/// The program `name` in the object, as its concrete type.
pub(super) fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Map {
            name: "program",
            detail: format!("{name} is not in the eBPF object"),
        })?
        .try_into()
        .map_err(|e| program_error(name, "convert", e))
}

/// Loads and attaches one raw-tracepoint program.
pub fn attach_raw(ebpf: &mut Ebpf, name: &str, tracepoint: &str) -> Result<()> {
    let raw: &mut aya::programs::RawTracePoint = program(ebpf, name)?;
    raw.load().map_err(|e| program_error(name, "load", e))?;
    raw.attach(tracepoint)
        .map_err(|e| program_error(name, "attach", e))?;
    Ok(())
}

/// The read/write exit handler every `sys_exit_*` socket program tail-calls.
pub const SOCKET_EXIT_IO: &str = "socket_exit_io";

/// Loads (verifies, once) the shared read/write exit handler and puts it in the `EXIT_IO`
/// jump table. Must run before the `sys_exit_*` socket programs are attached: until then
/// their records are lost (and counted as dropped).
pub fn load_socket_exit_handler(ebpf: &mut Ebpf) -> Result<()> {
    let handler: &mut TracePoint = program(ebpf, SOCKET_EXIT_IO)?;
    handler
        .load()
        .map_err(|e| program_error(SOCKET_EXIT_IO, "load", e))?;
    let fd = handler
        .fd()
        .map_err(|e| program_error(SOCKET_EXIT_IO, "load", e))?
        .try_clone();
    into_jump_table(ebpf, "EXIT_IO", fd)
}

/// Puts a loaded handler's program fd (duplicated) in slot 0 of jump table `table`.
pub(super) fn into_jump_table(
    ebpf: &mut Ebpf,
    table: &'static str,
    fd: std::io::Result<aya::programs::ProgramFd>,
) -> Result<()> {
    let fail = |detail: String| Error::Map {
        name: table,
        detail,
    };
    let fd = fd.map_err(|e| fail(format!("duplicating the handler's fd: {e}")))?;
    let map = ebpf
        .map_mut(table)
        .ok_or_else(|| fail("not in the eBPF object".into()))?;
    let mut slots = aya::maps::ProgramArray::try_from(map).map_err(|e| fail(e.to_string()))?;
    slots.set(0, &fd, 0).map_err(|e| fail(e.to_string()))
}

/// Loads (verifies) and attaches one program by name.
pub fn attach_one(ebpf: &mut Ebpf, name: &str, category: &str, event: &str) -> Result<()> {
    let tracepoint: &mut TracePoint = program(ebpf, name)?;
    tracepoint
        .load()
        .map_err(|e| program_error(name, "load", e))?;
    tracepoint
        .attach(category, event)
        .map_err(|e| program_error(name, "attach", e))?;
    Ok(())
}

/// Detaches and unloads every program, all at once. Each detach waits for the kernel to be
/// sure no CPU still runs the program (RCU grace periods, tens of ms on a busy host); one
/// after the other, as dropping `Ebpf` does, two dozen of them took 1.9-2.1 s of a service
/// manager's stop timeout on the busy 2-core test host. Side by side the waits partly
/// overlap (1.0-1.1 s there); the rest the kernel serialises (perf tracepoint unregister
/// holds one mutex), so only attaching without perf events would shorten it further.
pub fn detach_all(ebpf: &mut Ebpf) {
    std::thread::scope(|scope| {
        for (name, program) in ebpf.programs_mut() {
            scope.spawn(move || {
                let unloaded = match program {
                    aya::programs::Program::TracePoint(p) => p.unload(),
                    aya::programs::Program::RawTracePoint(p) => p.unload(),
                    aya::programs::Program::FEntry(p) => p.unload(),
                    aya::programs::Program::FExit(p) => p.unload(),
                    // Not a kind the agent loads; dropping `Ebpf` unloads it all the same.
                    _ => Ok(()),
                };
                if let Err(e) = unloaded {
                    tracing::debug!("detaching {name}: {e}");
                }
            });
        }
    });
}

/// Loads and attaches all programs; on error nothing stays attached (dropping `Ebpf` detaches).
pub fn load_and_attach(opts: &LoadOptions) -> Result<Ebpf> {
    let Loaded {
        mut ebpf,
        task_offsets_known: raw_scheduler,
        syscall_abi_known,
    } = load(opts)?;
    // The scheduler and process programs first: a missing privilege fails here, before the
    // socket programs' way of attaching is chosen.
    for &(name, tracepoint) in RAW_SCHEDULER_PROGRAMS.iter().filter(|_| raw_scheduler) {
        attach_raw(&mut ebpf, name, tracepoint)?;
    }
    for (name, category, event) in PROGRAMS {
        let replaced_by_raw = raw_scheduler
            && RAW_SCHEDULER_PROGRAMS
                .iter()
                .any(|(_, tracepoint)| *tracepoint == name);
        if category != "syscalls" && !replaced_by_raw {
            attach_one(&mut ebpf, name, category, event)?;
        }
    }
    if opts.socket_tracing {
        attach_socket_programs(&mut ebpf, opts, syscall_abi_known)?;
    }
    Ok(ebpf)
}

/// The socket programs: the raw pair when asked for, else through trampolines when asked for
/// and the kernel allows, else one `syscalls:*` tracepoint program per call.
fn attach_socket_programs(ebpf: &mut Ebpf, opts: &LoadOptions, abi_known: bool) -> Result<()> {
    if abi_known && opts.raw_syscalls {
        for &(name, tracepoint) in &RAW_SYSCALL_PROGRAMS {
            attach_raw(ebpf, name, tracepoint)?;
        }
        return Ok(());
    }
    if abi_known && opts.trampolines {
        match super::trampolines::attach_all(ebpf) {
            Ok(()) => return Ok(()),
            Err(e) => {
                super::trampolines::unload_all(ebpf);
                tracing::warn!(
                    "syscall_trampolines: {}; using one syscalls:* tracepoint per call instead",
                    super::trampolines::refusal(&e)
                );
            }
        }
    }
    load_socket_exit_handler(ebpf)?;
    for (name, category, event) in PROGRAMS {
        if category == "syscalls" {
            attach_one(ebpf, name, category, event)?;
        }
    }
    Ok(())
}
