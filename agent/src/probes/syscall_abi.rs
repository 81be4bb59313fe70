//! The host's system-call ABI for the raw `sys_enter`/`sys_exit` socket programs: where the
//! saved registers keep a call's number and arguments, and the numbers of the calls traced.
//! Known for the architectures the agent is built for; elsewhere the per-call `syscalls:*`
//! tracepoint programs run instead.
use herdwatch_common::{SyscallAbi, SyscallNumbers};

/// This build's architecture's ABI, or None where it is not described here.
pub fn host() -> Option<SyscallAbi> {
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(herdwatch_common::NO_SYSCALL);
    let numbers = SyscallNumbers {
        read: nr(libc::SYS_read),
        recvfrom: nr(libc::SYS_recvfrom),
        readv: nr(libc::SYS_readv),
        recvmsg: nr(libc::SYS_recvmsg),
        write: nr(libc::SYS_write),
        sendto: nr(libc::SYS_sendto),
        writev: nr(libc::SYS_writev),
        sendmsg: nr(libc::SYS_sendmsg),
        connect: nr(libc::SYS_connect),
        accept: nr(libc::SYS_accept),
        accept4: nr(libc::SYS_accept4),
        close: nr(libc::SYS_close),
    };
    registers().map(|abi| SyscallAbi { nr: numbers, ..abi })
}

/// x86-64 `struct pt_regs`: di (first argument) at 112, si at 104, orig_ax (the number) at
/// 120, cs at 136 — `__USER_CS` (0x33) for a 64-bit call; a 32-bit one comes with
/// `__USER32_CS` and the i386 numbers.
#[cfg(target_arch = "x86_64")]
fn registers() -> Option<SyscallAbi> {
    Some(SyscallAbi {
        enabled: 1,
        regs_arg0: 112,
        regs_arg1: 104,
        regs_nr: 120,
        regs_native_at: 136,
        native_mask: 0xffff,
        native_value: 0x33,
        ..SyscallAbi::INERT
    })
}

/// arm64 `struct pt_regs`: regs[1] at 8, pstate at 264 (bit 4 set = AArch32 task), orig_x0
/// (the first argument as the call began) at 272, syscallno at 280.
#[cfg(target_arch = "aarch64")]
fn registers() -> Option<SyscallAbi> {
    Some(SyscallAbi {
        enabled: 1,
        regs_arg0: 272,
        regs_arg1: 8,
        regs_nr: 280,
        regs_native_at: 264,
        native_mask: 0x10,
        native_value: 0,
        ..SyscallAbi::INERT
    })
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn registers() -> Option<SyscallAbi> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_traced_call_has_a_number_and_they_differ() {
        let Some(abi) = host() else { return };
        let n = abi.nr;
        let all = [
            n.read, n.recvfrom, n.readv, n.recvmsg, n.write, n.sendto, n.writev, n.sendmsg,
            n.connect, n.accept, n.accept4, n.close,
        ];
        assert!(
            all.iter().all(|&x| x != herdwatch_common::NO_SYSCALL),
            "{n:?}"
        );
        let mut sorted = all.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{n:?}");
        assert_eq!(abi.enabled, 1);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x86_64_numbers_are_the_kernel_table() {
        let n = host().expect("x86-64 is described").nr;
        assert_eq!((n.read, n.write, n.close, n.connect), (0, 1, 3, 42));
        assert_eq!(
            (n.accept, n.sendto, n.recvfrom, n.accept4),
            (43, 44, 45, 288)
        );
    }
}
