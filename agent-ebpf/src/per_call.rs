//! The socket handlers attached as one `syscalls:*` tracepoint program per call: what the
//! agent runs by default, and wherever the raw pair (`syscalls.rs`) or the trampolines
//! (`trampoline.rs`) are not asked for or not possible. All syscall tracepoint records share
//! one layout: args at 16 + 8·i on entry, `ret` at 16 on exit.
use aya_ebpf::{
    EbpfContext,
    macros::{map, tracepoint},
    maps::ProgramArray,
    programs::TracePointContext,
};
use herdwatch_common::{direction, stat};

use crate::maps::count;
use crate::socket::{
    BUF_IOVEC, BUF_MSGHDR, BUF_PLAIN, accepted, close_entered, connect_entered, connect_exited,
    ids, io_entered, io_exited, maybe_traced, traced_call,
};

/// Slot 0: `socket_exit_io`, the one copy of the read/write exit handler, which the eight
/// `sys_exit_*` programs tail-call. Inlined into each of them, the handler (payload capture,
/// the Python stack walk) was verified eight times: 0.6-0.8 s of kernel CPU each, most of
/// every agent start. The agent fills the slot before it attaches the exits.
#[map]
pub static EXIT_IO: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Syscall argument `i` (args at 16 + 8·i). A tracepoint program may load its own record
/// directly at an aligned constant offset (the verifier checks it), so no helper is called:
/// these programs run for every read, write and close on the host.
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the record of a syscall enter tracepoint holds six u64 args from offset 16.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(16 + 8 * i) as *const u64) }
}

/// The syscall's return value (`ret` at 16), loaded directly like `arg`.
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: the record of a syscall exit tracepoint holds `long ret` at offset 16.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(16) as *const i64) }
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    connect_entered(arg(&ctx, 0), arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    connect_exited(ret(&ctx))
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accepted(ret(&ctx))
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accepted(ret(&ctx))
}

#[inline(always)]
fn enter_io(ctx: &TracePointContext, dir: u32, buf_mode: u32) -> u32 {
    traced_call(|| Some((arg(ctx, 0), arg(ctx, 1)))).map_or(0, |(tid, tgid, fd, buf)| {
        io_entered(tid, tgid, fd, buf, dir, buf_mode)
    })
}

/// What every read/write exit program runs (here and in `trampoline.rs`): turn away
/// processes with no traced socket (the byte test), then jump to the shared handler in
/// `handlers`.
#[inline(always)]
pub(crate) fn exit_io<C: EbpfContext>(ctx: &C, handlers: &ProgramArray) -> u32 {
    let (_, tgid) = ids();
    if !maybe_traced(tgid) {
        return 0; // its enter found nothing to trace either
    }
    // SAFETY: ctx is this program's own context; on success the call does not return.
    unsafe { handlers.tail_call(ctx, 0) };
    // Only an empty slot gets here (the agent fills it before attaching): a lost record.
    count(stat::SOCKET_EVENTS_DROPPED);
    0
}

/// The read/write exit handler, entered only by tail call from `exit_io` (all syscall exit
/// records share one layout: `ret` at 16). Not attached to any event itself.
#[tracepoint]
pub fn socket_exit_io(ctx: TracePointContext) -> u32 {
    io_exited(ret(&ctx))
}

macro_rules! io_programs {
    ($($enter:ident, $exit:ident, $dir:expr, $mode:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_io(&ctx, $dir, $mode)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_io(&ctx, &EXIT_IO)
        }
    )*};
}

io_programs! {
    sys_enter_read, sys_exit_read, direction::INGRESS, BUF_PLAIN;
    sys_enter_recvfrom, sys_exit_recvfrom, direction::INGRESS, BUF_PLAIN;
    sys_enter_readv, sys_exit_readv, direction::INGRESS, BUF_IOVEC;
    sys_enter_recvmsg, sys_exit_recvmsg, direction::INGRESS, BUF_MSGHDR;
    sys_enter_write, sys_exit_write, direction::EGRESS, BUF_PLAIN;
    sys_enter_sendto, sys_exit_sendto, direction::EGRESS, BUF_PLAIN;
    sys_enter_writev, sys_exit_writev, direction::EGRESS, BUF_IOVEC;
    sys_enter_sendmsg, sys_exit_sendmsg, direction::EGRESS, BUF_MSGHDR;
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    traced_call(|| Some((arg(&ctx, 0), 0)))
        .map_or(0, |(tid, tgid, fd, _)| close_entered(tid, tgid, fd))
}
