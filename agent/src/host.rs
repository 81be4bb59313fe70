//! The host: CPU utilisation from /proc/stat deltas, CPU count, hostname and the clocks
//! (the kernel's monotonic one and the wall clock).
use procfs::{CurrentSI, KernelStats};

#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    /// Ticks the CPUs were busy, of `total` ticks.
    pub fn new(busy: u64, total: u64) -> Self {
        Self { busy, total }
    }
}

pub fn read_ticks() -> Option<CpuTicks> {
    let stats = KernelStats::current().ok()?;
    let t = stats.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let busy = t.user
        + t.nice
        + t.system
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    Some(CpuTicks {
        busy,
        total: busy + idle,
    })
}

/// Fraction (0..=1) of all CPUs busy between two readings; None if no time passed.
pub fn utilization(prev: CpuTicks, cur: CpuTicks) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let busy = cur.busy.checked_sub(prev.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in ms since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall clock minus CLOCK_MONOTONIC, in ns: adds to a kernel timestamp to place it in time.
pub fn unix_minus_monotonic_ns() -> i128 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    unix - i128::from(monotonic_ns())
}

/// The node's name as the fleet knows it: `K8S_NODE_NAME` when set (the DaemonSet sets it
/// from the downward API, since a pod's hostname is the pod's), else the kernel's hostname.
/// The API's `Host.name` and every finding's `Subject.host` use it, so they agree.
/// Read once: neither changes while the agent runs, and every snapshot names it.
pub fn node_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| node_name_from(std::env::var("K8S_NODE_NAME").ok()))
}

fn node_name_from(k8s_node_name: Option<String>) -> String {
    k8s_node_name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname)
}

/// This host's name, as the kernel knows it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_from_deltas() {
        let a = CpuTicks {
            busy: 100,
            total: 400,
        };
        let b = CpuTicks {
            busy: 180,
            total: 500,
        };
        assert_eq!(utilization(a, b), Some(0.8));
        assert_eq!(utilization(b, b), None);
        assert_eq!(utilization(b, a), None);
    }

    #[test]
    fn the_node_name_is_k8s_node_name_else_the_hostname() {
        assert_eq!(node_name_from(Some("node-a".into())), "node-a");
        assert_eq!(node_name_from(Some(" node-b\n".into())), "node-b");
        assert_eq!(node_name_from(Some("  ".into())), hostname());
        assert_eq!(node_name_from(None), hostname());
    }
}
