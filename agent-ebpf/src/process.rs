//! Process lifecycle: `task:task_newtask`, `sched:sched_process_exec`, `sched:sched_process_exit`.
//! One ring-buffer record per event; a full ring buffer is counted, never waited on.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use herdwatch_common::{
    CLONE_THREAD, COMM_LEN, EventHeader, EventKind, ExecEvent, ExitEvent, FILENAME_LEN,
    NewTaskEvent, ThreadCounters, stat,
};

use aya_log_ebpf::{debug, warn};

use crate::maps::{EVENTS, EXITED, THREADS, count, offsets};

#[inline(always)]
fn header(kind: EventKind, tid: u32, tgid: u32) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tid,
        tgid,
        _reserved: 0,
        timestamp_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
    }
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let off = offsets();
    let (pid, flags) = match unsafe {
        (
            ctx.read_at::<i32>(off.newtask_pid as usize),
            ctx.read_at::<u64>(off.newtask_clone_flags as usize),
        )
    } {
        (Ok(p), Ok(f)) => (p as u32, f),
        _ => {
            count(stat::READ_FAILED);
            return 0;
        }
    };
    // Runs in the creator's context.
    let creator = bpf_get_current_pid_tgid();
    let (parent_tid, parent_tgid) = (creator as u32, (creator >> 32) as u32);
    let tgid = if flags & CLONE_THREAD != 0 {
        parent_tgid
    } else {
        pid
    };
    // A reused tid is a new thread: its counters may be created again.
    let _ = EXITED.remove(&pid);
    let Some(mut entry) = EVENTS.reserve::<NewTaskEvent>(0) else {
        count(stat::EVENTS_DROPPED);
        return 0;
    };
    entry.write(NewTaskEvent {
        header: header(EventKind::NewTask, pid, tgid),
        parent_tid,
        parent_tgid,
        clone_flags: flags,
        comm: current_comm(),
    });
    entry.submit(0);
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let off = offsets();
    let (loc, pid, old_pid) = match unsafe {
        (
            ctx.read_at::<u32>(off.exec_filename as usize),
            ctx.read_at::<i32>(off.exec_pid as usize),
            ctx.read_at::<i32>(off.exec_old_pid as usize),
        )
    } {
        (Ok(l), Ok(p), Ok(o)) => (l, p as u32, o as u32),
        _ => {
            count(stat::READ_FAILED);
            return 0;
        }
    };
    if old_pid != pid {
        // A thread other than the leader exec'd and took the leader's tid: its old tid is
        // gone without an exit of its own.
        let _ = THREADS.remove(old_pid);
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(stat::EVENTS_DROPPED);
        warn!(&ctx, "event ring buffer full: exec of pid {} dropped", pid);
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let event = entry.as_mut_ptr();
    unsafe {
        (*event).header = header(EventKind::Exec, pid, tgid);
        (*event).old_tid = old_pid;
        (*event).comm = current_comm();
        // __data_loc: low 16 bits = offset from the record start, high 16 bits = length.
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let dst = &mut (*event).filename;
        (*event).filename_len = match bpf_probe_read_kernel_str_bytes(src, dst) {
            Ok(bytes) => bytes.len().min(FILENAME_LEN) as u32,
            Err(_) => 0,
        };
    }
    let filename_len = unsafe { (*event).filename_len };
    entry.submit(0);
    // Off unless the agent runs at debug level (the loader patches AYA_LOG_LEVEL).
    debug!(
        &ctx,
        "exec pid={} old_pid={} filename_len={}", pid, old_pid, filename_len
    );
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let group_dead = unsafe { ctx.read_at::<u8>(offsets().exit_group_dead as usize) }.unwrap_or(0);
    // Runs in the exiting thread's context.
    let id = bpf_get_current_pid_tgid();
    let (tid, tgid) = (id as u32, (id >> 32) as u32);
    let mut counters = match THREADS.get_ptr(tid) {
        Some(ptr) => unsafe { *ptr },
        None => ThreadCounters::default(),
    };
    // The final totals, straight from the exiting task.
    crate::sched::read_kernel_totals(&mut counters);
    let _ = THREADS.remove(tid);
    crate::socket::forget_thread(tid);
    let _ = EXITED.insert(tid, 1, 0);
    if group_dead != 0 {
        // Its fds are gone with it; a process reusing the id starts untraced.
        crate::socket::mark_traced(tgid, false);
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count(stat::EVENTS_DROPPED);
        return 0;
    };
    entry.write(ExitEvent {
        header: header(EventKind::Exit, tid, tgid),
        group_dead: group_dead as u32,
        _reserved: 0,
        comm: current_comm(),
        counters,
    });
    entry.submit(0);
    0
}
