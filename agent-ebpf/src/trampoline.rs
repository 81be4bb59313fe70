//! The socket handlers as fentry/fexit programs on the kernel's syscall functions
//! (`__x64_sys_recvfrom`, `__arm64_sys_read`, …), attached with `syscall_trampolines = true`
//! where the kernel loads tracing programs.
//!
//! A `syscalls:*` tracepoint runs its program behind the perf machinery — a trace record
//! allocated and filled with every argument, a recursion context — for every call of that
//! kind by any process: measured at 330 ns per call with *empty* programs on the 2-core test
//! host. A trampoline calls the program directly from the function's entry or return, so an
//! untraced process pays little more than the byte test. The function's one argument is the
//! caller's saved registers, read with the same ABI offsets the raw programs use; an fexit
//! program sees the return value after the arguments. 32-bit compat calls enter through
//! other functions (`__ia32_sys_*`), so only native calls reach these programs.
use aya_ebpf::{
    macros::{fentry, fexit, map},
    maps::ProgramArray,
    programs::{FEntryContext, FExitContext},
};
use herdwatch_common::direction;

use crate::per_call::exit_io;
use crate::socket::{
    BUF_IOVEC, BUF_MSGHDR, BUF_PLAIN, accepted, close_entered, connect_entered, connect_exited,
    io_entered, io_exited, traced_call,
};
use crate::syscalls::{SYSCALL_ABI, saved_args};

/// The read/write exit handler for the exits of one source file's syscall functions. The
/// kernel lets a tracing program tail-call only programs attached to functions of the same
/// prototype, and BTF keeps one prototype per file here: `fs/read_write.c` (read, write,
/// readv, writev) and `net/socket.c` (recvfrom, sendto, recvmsg, sendmsg). One verified copy
/// of the handler per table instead of one per exit program (each copy costs 0.6-0.8 s of
/// kernel CPU to verify).
#[map]
pub static EXIT_IO_FS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static EXIT_IO_NET: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The first two arguments of the call whose saved registers `regs` points to.
#[inline(always)]
fn args(ctx: &FEntryContext) -> Option<(u64, u64)> {
    let abi = SYSCALL_ABI.load();
    if abi.enabled == 0 {
        return None;
    }
    saved_args(&abi, ctx.arg(0))
}

/// The call's return value: an fexit program's context holds it after the one argument.
#[inline(always)]
fn result(ctx: &FExitContext) -> i64 {
    let ret: u64 = ctx.arg(1);
    ret as i64
}

#[fentry]
pub fn fentry_connect(ctx: FEntryContext) -> u32 {
    // Any process may connect to PostgreSQL: no byte test here.
    match args(&ctx) {
        Some((fd, addr)) => connect_entered(fd, addr),
        None => 0,
    }
}

#[fexit]
pub fn fexit_connect(ctx: FExitContext) -> u32 {
    connect_exited(result(&ctx))
}

#[fexit]
pub fn fexit_accept(ctx: FExitContext) -> u32 {
    accepted(result(&ctx))
}

#[fexit]
pub fn fexit_accept4(ctx: FExitContext) -> u32 {
    accepted(result(&ctx))
}

#[fentry]
pub fn fentry_close(ctx: FEntryContext) -> u32 {
    traced_call(|| args(&ctx)).map_or(0, |(tid, tgid, fd, _)| close_entered(tid, tgid, fd))
}

#[inline(always)]
fn enter_io(ctx: &FEntryContext, dir: u32, buf_mode: u32) -> u32 {
    traced_call(|| args(ctx)).map_or(0, |(tid, tgid, fd, buf)| {
        io_entered(tid, tgid, fd, buf, dir, buf_mode)
    })
}

/// The read/write exit handler of `fs/read_write.c`'s calls, entered only by tail call (the
/// agent loads it against `read`, so its prototype matches theirs).
#[fexit]
pub fn trampoline_exit_io_fs(ctx: FExitContext) -> u32 {
    io_exited(result(&ctx))
}

/// The same handler for `net/socket.c`'s calls (loaded against `recvfrom`).
#[fexit]
pub fn trampoline_exit_io_net(ctx: FExitContext) -> u32 {
    io_exited(result(&ctx))
}

macro_rules! io_programs {
    ($($enter:ident, $exit:ident, $table:ident, $dir:expr, $mode:expr;)*) => {$(
        #[fentry]
        pub fn $enter(ctx: FEntryContext) -> u32 {
            enter_io(&ctx, $dir, $mode)
        }
        #[fexit]
        pub fn $exit(ctx: FExitContext) -> u32 {
            exit_io(&ctx, &$table)
        }
    )*};
}

io_programs! {
    fentry_read, fexit_read, EXIT_IO_FS, direction::INGRESS, BUF_PLAIN;
    fentry_readv, fexit_readv, EXIT_IO_FS, direction::INGRESS, BUF_IOVEC;
    fentry_write, fexit_write, EXIT_IO_FS, direction::EGRESS, BUF_PLAIN;
    fentry_writev, fexit_writev, EXIT_IO_FS, direction::EGRESS, BUF_IOVEC;
    fentry_recvfrom, fexit_recvfrom, EXIT_IO_NET, direction::INGRESS, BUF_PLAIN;
    fentry_recvmsg, fexit_recvmsg, EXIT_IO_NET, direction::INGRESS, BUF_MSGHDR;
    fentry_sendto, fexit_sendto, EXIT_IO_NET, direction::EGRESS, BUF_PLAIN;
    fentry_sendmsg, fexit_sendmsg, EXIT_IO_NET, direction::EGRESS, BUF_MSGHDR;
}
