//! CPU and run-queue accounting from `sched:sched_switch`, `sched:sched_wakeup` and
//! `sched:sched_wakeup_new`.
//!
//! On-CPU time runs from switch-in to switch-out. Off-CPU time runs from switch-out to the
//! wakeup (split by the state the thread left in); the run-queue delay runs from the moment the
//! thread became runnable (wakeup, or switch-out while still runnable = preemption) to its next
//! switch-in — the same definition as `/proc/<pid>/schedstat` field 2.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use herdwatch_common::{ThreadCounters, stat, task_state};

use crate::maps::{CURRENT, EXITED, THREADS, count, offsets};

#[inline(always)]
fn now() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

/// The thread's counters, created when first seen. Entries are only created for threads that
/// are running or about to run, so the final switch-out of an exited thread does not recreate
/// the entry the exit program removed.
#[inline(always)]
fn counters_or_insert(tid: u32) -> Option<*mut ThreadCounters> {
    if let Some(ptr) = THREADS.get_ptr_mut(tid) {
        return Some(ptr);
    }
    if unsafe { EXITED.get(&tid) }.is_some() {
        return None; // exiting: its totals were reported, its counters removed
    }
    if THREADS.insert(tid, ThreadCounters::default(), 0).is_err() {
        count(stat::THREAD_INSERT_FAILED);
        return None;
    }
    THREADS.get_ptr_mut(tid)
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let off = offsets();
    let (prev_pid, prev_state, next_pid) = match unsafe {
        (
            ctx.read_at::<i32>(off.switch_prev_pid as usize),
            ctx.read_at::<i64>(off.switch_prev_state as usize),
            ctx.read_at::<i32>(off.switch_next_pid as usize),
        )
    } {
        (Ok(p), Ok(s), Ok(n)) => (p as u32, s as u64, n as u32),
        _ => {
            count(stat::READ_FAILED);
            return 0;
        }
    };
    let ts = now();
    track_current(prev_pid, next_pid, ts);
    // pid 0 is the per-CPU idle task: not a thread anyone wants accounted.
    if prev_pid != 0 {
        // The tracepoint runs in the context of the task being switched out.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        switch_out(prev_pid, tgid, prev_state, ts);
    }
    if next_pid != 0 {
        switch_in(next_pid, ts);
    }
    0
}

/// `sched_switch` as a raw tracepoint: the kernel passes `(preempt, prev, next, prev_state)`
/// without building the classic trace record, which makes this, the hottest program, cheaper.
/// Needs `task_struct` offsets from BTF; without them the agent attaches `sched_switch`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> u32 {
    let off = offsets();
    let preempt: u64 = ctx.arg(0);
    let next: u64 = ctx.arg(2);
    let raw_state: u64 = ctx.arg(3);
    // `prev` is the current task here (the switch has not happened yet), so its ids come
    // from one cheap helper instead of a read through the pointer: this runs on every
    // context switch of the host.
    let current = bpf_get_current_pid_tgid();
    let (prev_pid, tgid) = (current as u32, (current >> 32) as u32);
    let Ok(next_pid) = task_pid(&off, next) else {
        count(stat::READ_FAILED);
        return 0;
    };
    let ts = now();
    let next_pid = next_pid as u32;
    track_current(prev_pid, next_pid, ts);
    if prev_pid != 0 {
        switch_out(
            prev_pid,
            tgid,
            reported_state(preempt & 1 != 0, raw_state),
            ts,
        );
    }
    if next_pid != 0 {
        switch_in(next_pid, ts);
    }
    0
}

/// `task->pid` (the thread id) of a `task_struct` pointer a raw tracepoint was handed.
#[inline(always)]
fn task_pid(off: &herdwatch_common::TracepointOffsets, task: u64) -> Result<i32, i32> {
    unsafe {
        bpf_probe_read_kernel((task as *const u8).wrapping_add(off.task_pid as usize) as *const i32)
    }
}

/// The raw `prev->__state` expressed as the classic tracepoint's `prev_state`, so one
/// switch-out path serves both programs.
#[inline(always)]
fn reported_state(preempt: bool, raw: u64) -> u64 {
    const TASK_NOLOAD: u64 = 0x400;
    const REPORT_IDLE: u64 = 0x80;
    if preempt {
        task_state::PREEMPTED
    } else if raw == 0 {
        task_state::RUNNING
    } else if raw & TASK_NOLOAD != 0 {
        REPORT_IDLE // TASK_IDLE kernel threads: neither sleep nor I/O
    } else if raw & task_state::INTERRUPTIBLE != 0 {
        task_state::INTERRUPTIBLE
    } else if raw & task_state::UNINTERRUPTIBLE != 0 {
        task_state::UNINTERRUPTIBLE
    } else {
        raw & 0x7f
    }
}

/// Records what this CPU runs now. If the CPU was last seen running some other task than the
/// one switching out, that task's switch-out was never reported: drop its open slice rather
/// than let it grow forever.
#[inline(always)]
fn track_current(prev_pid: u32, next_pid: u32, ts: u64) {
    let Some(cur) = CURRENT.get_ptr_mut(0) else {
        return;
    };
    let cur = unsafe { &mut *cur };
    if cur.tid != 0 && cur.tid != prev_pid {
        count(stat::MISSED_SWITCH_OUT);
        if let Some(stale) = THREADS.get_ptr_mut(cur.tid) {
            let stale = unsafe { &mut *stale };
            if stale.switched_in_at_ns == cur.since_ns {
                stale.switched_in_at_ns = 0;
            }
        }
    }
    cur.tid = next_pid;
    cur.since_ns = ts;
}

#[inline(always)]
fn switch_out(tid: u32, tgid: u32, state: u64, ts: u64) {
    let Some(ptr) = THREADS.get_ptr_mut(tid) else {
        // Not seen switching in since we attached (or already exited): nothing to close.
        return;
    };
    let c = unsafe { &mut *ptr };
    c.tgid = tgid;
    if !read_kernel_totals(c) && c.switched_in_at_ns != 0 && ts > c.switched_in_at_ns {
        c.on_cpu_ns += ts - c.switched_in_at_ns;
    }
    c.switched_in_at_ns = 0;
    c.switched_out_at_ns = ts;
    c.out_state = state;
    let still_runnable = state == task_state::RUNNING || state & task_state::PREEMPTED != 0;
    if still_runnable {
        c.involuntary_switches += 1;
        c.enqueued_at_ns = ts;
    } else {
        c.voluntary_switches += 1;
        c.enqueued_at_ns = 0;
    }
}

/// Copies the current task's own on-CPU and run-queue totals (`se.sum_exec_runtime`,
/// `sched_info.run_delay`) into `c`. False when the offsets are unknown or unreadable.
#[inline(always)]
pub fn read_kernel_totals(c: &mut ThreadCounters) -> bool {
    let off = offsets();
    if off.task_sum_exec_runtime == 0 {
        return false;
    }
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    let read =
        |at: u32| unsafe { bpf_probe_read_kernel(task.wrapping_add(at as usize) as *const u64) };
    let Ok(on_cpu) = read(off.task_sum_exec_runtime) else {
        count(stat::READ_FAILED);
        return false;
    };
    c.on_cpu_ns = on_cpu;
    if off.task_run_delay != 0
        && let Ok(delay) = read(off.task_run_delay)
    {
        c.run_delay_ns = delay;
    }
    true
}

#[inline(always)]
fn switch_in(tid: u32, ts: u64) {
    let Some(ptr) = counters_or_insert(tid) else {
        return;
    };
    let c = unsafe { &mut *ptr };
    if c.enqueued_at_ns != 0 && ts > c.enqueued_at_ns {
        let delay = ts - c.enqueued_at_ns;
        c.run_delay_ns += delay;
        c.run_delay_count += 1;
        if delay > c.run_delay_max_ns {
            c.run_delay_max_ns = delay;
        }
    }
    c.enqueued_at_ns = 0;
    c.switched_out_at_ns = 0;
    c.switched_in_at_ns = ts;
}

/// A sleeping thread became runnable: close its off-CPU interval and open its run-queue wait.
/// `pid` is the woken thread's id as the tracepoint read it.
#[inline(always)]
fn wakeup(pid: Result<i32, i32>) -> u32 {
    let tid = match pid {
        Ok(pid) if pid > 0 => pid as u32,
        Ok(_) => return 0,
        Err(_) => {
            count(stat::READ_FAILED);
            return 0;
        }
    };
    let Some(ptr) = counters_or_insert(tid) else {
        return 0;
    };
    let c = unsafe { &mut *ptr };
    let ts = now();
    if c.switched_out_at_ns != 0 && ts > c.switched_out_at_ns {
        let off_cpu = ts - c.switched_out_at_ns;
        if c.out_state & task_state::INTERRUPTIBLE != 0 {
            c.sleep_ns += off_cpu;
        } else if c.out_state & task_state::UNINTERRUPTIBLE != 0 {
            c.blocked_ns += off_cpu;
        } else {
            c.other_off_ns += off_cpu;
        }
        c.switched_out_at_ns = 0;
    }
    // A wakeup of a task that is already queued (or running) does not restart its wait.
    if c.enqueued_at_ns == 0 && c.switched_in_at_ns == 0 {
        c.enqueued_at_ns = ts;
    }
    0
}

#[inline(always)]
fn woken_pid(ctx: &TracePointContext) -> Result<i32, i32> {
    unsafe { ctx.read_at::<i32>(offsets().wakeup_pid as usize) }
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    wakeup(woken_pid(&ctx))
}

#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    wakeup(woken_pid(&ctx))
}

/// `sched_wakeup` as a raw tracepoint, `(struct task_struct *p)`: like `sched_switch_raw`, no
/// trace record is built (comm, prio, target CPU) for a program that wants only the pid.
/// Runs several times per request on a busy server; used when task_struct offsets are known.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> u32 {
    wakeup(task_pid(&offsets(), ctx.arg(0)))
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> u32 {
    wakeup(task_pid(&offsets(), ctx.arg(0)))
}
