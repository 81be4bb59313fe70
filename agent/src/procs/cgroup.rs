//! A process's CPU cgroup and that cgroup's CPU use against its limit, for cgroup v2 (unified)
//! and v1 (`cpu` + `cpuacct` hierarchies). A container's CPU quota saturates long before the
//! host does; this is where the saturation detector sees it.
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a cgroup's CPU files live.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CpuCgroup {
    /// The cgroup path as /proc/<pid>/cgroup names it, e.g. `/kubepods/pod…/…`.
    pub path: String,
    #[serde(skip)]
    usage_file: PathBuf,
    #[serde(skip)]
    limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Limit {
    /// cgroup v2 `cpu.max`: "quota period" or "max period".
    V2(PathBuf),
    /// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    V1 { quota: PathBuf, period: PathBuf },
}

/// One reading: cumulative CPU used and the limit in CPUs (None = unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReading {
    pub usage_ns: u64,
    pub limit_cpus: Option<f64>,
}

/// Parses /proc/<pid>/cgroup text into the CPU cgroup, given which hierarchy is mounted.
/// Pure: `unified` says whether /sys/fs/cgroup is cgroup v2.
pub fn parse_proc_cgroup(text: &str, root: &Path, unified: bool) -> Option<CpuCgroup> {
    if unified {
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))?
            .trim()
            .to_string();
        let dir = root.join(path.trim_start_matches('/'));
        return Some(CpuCgroup {
            usage_file: dir.join("cpu.stat"),
            limit: Limit::V2(dir.join("cpu.max")),
            path,
        });
    }
    let mut cpu = None;
    let mut cpuacct = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let list: Vec<&str> = controllers.split(',').collect();
        if list.contains(&"cpu") {
            cpu = Some((controllers.to_string(), path.to_string()));
        }
        if list.contains(&"cpuacct") {
            cpuacct = Some((controllers.to_string(), path.to_string()));
        }
    }
    let (cpu_mount, cpu_path) = cpu?;
    let (acct_mount, acct_path) = cpuacct?;
    let cpu_dir = root.join(&cpu_mount).join(cpu_path.trim_start_matches('/'));
    let acct_dir = root
        .join(&acct_mount)
        .join(acct_path.trim_start_matches('/'));
    Some(CpuCgroup {
        usage_file: acct_dir.join("cpuacct.usage"),
        limit: Limit::V1 {
            quota: cpu_dir.join("cpu.cfs_quota_us"),
            period: cpu_dir.join("cpu.cfs_period_us"),
        },
        path: cpu_path,
    })
}

/// The CPU cgroup of `pid` on this host.
pub fn of_pid(pid: u32) -> Option<CpuCgroup> {
    let root = Path::new("/sys/fs/cgroup");
    let unified = root.join("cgroup.controllers").exists();
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text, root, unified)
}

impl CpuCgroup {
    pub fn read(&self) -> Option<CpuReading> {
        let usage_text = std::fs::read_to_string(&self.usage_file).ok()?;
        let usage_ns = match &self.limit {
            Limit::V2(_) => parse_cpu_stat_usage_ns(&usage_text)?,
            Limit::V1 { .. } => usage_text.trim().parse().ok()?,
        };
        let limit_cpus = match &self.limit {
            Limit::V2(max) => parse_cpu_max(&std::fs::read_to_string(max).ok()?),
            Limit::V1 { quota, period } => {
                let q: i64 = std::fs::read_to_string(quota).ok()?.trim().parse().ok()?;
                let p: i64 = std::fs::read_to_string(period).ok()?.trim().parse().ok()?;
                (q > 0 && p > 0).then(|| q as f64 / p as f64)
            }
        };
        Some(CpuReading {
            usage_ns,
            limit_cpus,
        })
    }

    /// True for the root cgroup (the host itself: nothing to add to the host detector).
    pub fn is_root(&self) -> bool {
        self.path.trim_matches('/').is_empty()
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in ns.
pub fn parse_cpu_stat_usage_ns(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
}

/// A cgroup v2 `cpu.max` ("50000 100000" → 0.5; "max 100000" → None).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?.parse::<f64>().ok()?;
    let period = parts.next()?.parse::<f64>().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_paths_and_limits() {
        let root = Path::new("/sys/fs/cgroup");
        let v2 = parse_proc_cgroup("0::/kubepods/pod1/c1\n", root, true).expect("v2");
        assert_eq!(v2.path, "/kubepods/pod1/c1");
        assert_eq!(
            v2.usage_file,
            PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1/cpu.stat")
        );
        let v1 = parse_proc_cgroup(
            "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            root,
            false,
        )
        .expect("v1");
        assert_eq!(v1.path, "/docker/abc");
        assert_eq!(
            v1.usage_file,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpuacct.usage")
        );
        let split = parse_proc_cgroup("2:cpuacct:/a\n1:cpu:/a\n", root, false).expect("split");
        assert_eq!(
            split.usage_file,
            PathBuf::from("/sys/fs/cgroup/cpuacct/a/cpuacct.usage")
        );
        assert!(parse_proc_cgroup("garbage", root, false).is_none());
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(
            parse_cpu_stat_usage_ns("usage_usec 1500\nuser_usec 1000\n"),
            Some(1_500_000)
        );
    }
}
