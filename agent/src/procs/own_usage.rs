//! The agent's own footprint, so it reports what it costs (`agent.resident_bytes`).

/// Resident memory of this process in bytes (`/proc/self/statm` field 2 × page size), or 0
/// when unreadable.
pub fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_reported_and_grows_with_touched_pages() {
        let before = super::resident_bytes();
        assert!(before > 0);
        let touched: Vec<u8> = vec![1; 64 << 20];
        let after = super::resident_bytes();
        assert!(after >= before + (32 << 20), "{before} -> {after}");
        drop(touched);
    }
}
