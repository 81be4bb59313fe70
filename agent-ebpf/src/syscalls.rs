//! The socket programs as two raw tracepoints, `sys_enter` and `sys_exit`, dispatching on the
//! call's number.
//!
//! A BPF program on a `syscalls:sys_*` tracepoint runs behind the kernel's perf machinery:
//! a trace record is allocated and filled with every argument, and a perf recursion context
//! is taken, for each call of that kind by any process on the host. Measured on the 2-core
//! test host (`dd bs=1`, 6 M reads and writes of an untraced process), that machinery cost
//! 330 ns per call with empty programs. A raw tracepoint hands the program `(regs, id)`
//! directly; calls of other numbers return after a few compares, and calls of groups with
//! no traced socket after the byte test, before any argument is read — but every call of
//! every process runs it (about 0.1 µs). On the bench's gunicorn and uvicorn apps, whose
//! servers and clients make many other calls, that cost more than it saved, so these run
//! only with `raw_syscall_tracepoints = true` and where the agent knows the host's ABI
//! (x86-64, arm64); otherwise the per-call programs in `per_call.rs` run the same handlers.
use aya_ebpf::{
    Global, helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use herdwatch_common::{SyscallAbi, direction};

use crate::socket::{
    BUF_IOVEC, BUF_MSGHDR, BUF_PLAIN, accepted, close_entered, connect_entered, connect_exited,
    ids, io_entered, io_exited, maybe_traced, traced_call,
};

/// The host's syscall ABI; the agent patches it (inert until then). The trampoline programs
/// read their arguments with it too.
#[unsafe(no_mangle)]
pub(crate) static SYSCALL_ABI: Global<SyscallAbi> = Global::new(SyscallAbi::INERT);

/// The u64 at byte `at` of the caller's saved registers.
#[inline(always)]
pub(crate) fn saved(regs: u64, at: u32) -> Option<u64> {
    unsafe { bpf_probe_read_kernel((regs + u64::from(at)) as *const u64) }.ok()
}

/// The first two arguments of the call whose saved registers `regs` points to.
#[inline(always)]
pub(crate) fn saved_args(abi: &SyscallAbi, regs: u64) -> Option<(u64, u64)> {
    Some((saved(regs, abi.regs_arg0)?, saved(regs, abi.regs_arg1)?))
}

/// Whether the call is a native one: a 32-bit process's numbers name other calls.
#[inline(always)]
fn native(abi: &SyscallAbi, regs: u64) -> bool {
    saved(regs, abi.regs_native_at).is_some_and(|v| v & abi.native_mask == abi.native_value)
}

/// (direction, buffer mode) of a read/write-family call number, if it is one.
#[inline(always)]
fn io_call(abi: &SyscallAbi, nr: u32) -> Option<(u32, u32)> {
    let n = &abi.nr;
    if nr == n.read || nr == n.recvfrom {
        Some((direction::INGRESS, BUF_PLAIN))
    } else if nr == n.write || nr == n.sendto {
        Some((direction::EGRESS, BUF_PLAIN))
    } else if nr == n.readv {
        Some((direction::INGRESS, BUF_IOVEC))
    } else if nr == n.writev {
        Some((direction::EGRESS, BUF_IOVEC))
    } else if nr == n.recvmsg {
        Some((direction::INGRESS, BUF_MSGHDR))
    } else if nr == n.sendmsg {
        Some((direction::EGRESS, BUF_MSGHDR))
    } else {
        None
    }
}

/// `sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter(ctx: RawTracePointContext) -> u32 {
    let abi = SYSCALL_ABI.load();
    if abi.enabled == 0 {
        return 0;
    }
    let id: u64 = ctx.arg(1);
    let Ok(nr) = u32::try_from(id) else {
        return 0; // -1 (no call) or an x32 number: nothing traced
    };
    let regs: u64 = ctx.arg(0);
    if nr == abi.nr.connect {
        // Any process may connect to PostgreSQL: no byte test here.
        return match saved_args(&abi, regs) {
            Some((fd, addr)) if native(&abi, regs) => connect_entered(fd, addr),
            _ => 0,
        };
    }
    let io = io_call(&abi, nr);
    if io.is_none() && nr != abi.nr.close {
        return 0;
    }
    let Some((tid, tgid, fd, buf)) = traced_call(|| {
        if native(&abi, regs) {
            saved_args(&abi, regs)
        } else {
            None
        }
    }) else {
        return 0;
    };
    match io {
        Some((dir, mode)) => io_entered(tid, tgid, fd, buf, dir, mode),
        None => close_entered(tid, tgid, fd),
    }
}

/// `sys_exit(struct pt_regs *regs, long ret)`. Only groups that passed the byte test are
/// looked at further (a connect being traced marked its group at entry).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit(ctx: RawTracePointContext) -> u32 {
    let abi = SYSCALL_ABI.load();
    if abi.enabled == 0 {
        return 0;
    }
    let (_, tgid) = ids();
    if !maybe_traced(tgid) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let result: u64 = ctx.arg(1);
    let result = result as i64;
    // The number stays in the saved registers (x86-64 `orig_ax`, arm64 `syscallno`).
    let Some(nr) = saved(regs, abi.regs_nr) else {
        return 0;
    };
    let nr = nr as u32;
    if io_call(&abi, nr).is_some() {
        // The thread's open call says whether this one was traced (and is native).
        io_exited(result)
    } else if nr == abi.nr.connect {
        connect_exited(result)
    } else if (nr == abi.nr.accept || nr == abi.nr.accept4) && native(&abi, regs) {
        accepted(result)
    } else {
        0
    }
}
