//! Reading another process's memory (`process_vm_readv`): code objects and interpreter
//! fields the kernel side pointed at. Any address may be stale or garbage; a failed or short
//! read is an answer ("not readable"), never an error that stops anything.

/// Fills `buf` from `addr` in `pid`'s memory; false unless every byte was read.
pub fn read(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    if buf.is_empty() || addr == 0 {
        return buf.is_empty();
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` covers exactly `buf`, which we own mutably; the kernel checks `remote`.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

pub fn read_u64(pid: u32, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    read(pid, addr, &mut b).then(|| u64::from_le_bytes(b))
}

pub fn read_u32(pid: u32, addr: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    read(pid, addr, &mut b).then(|| u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_garbage() {
        let value: u64 = 0x1122_3344_5566_7788;
        let me = std::process::id();
        assert_eq!(read_u64(me, &value as *const u64 as u64), Some(value));
        assert_eq!(read_u64(me, 8), None, "unmapped page");
        assert_eq!(read_u64(me, 0), None);
    }
}
