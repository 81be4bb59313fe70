//! `herdwatch check`: preflight of everything the agent needs, one line per check, each failure
//! naming what is missing and the fix.
use std::path::Path;

use crate::probes::{LoadOptions, PROGRAMS, loader, tracefs};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub ok: bool,
    pub name: String,
    pub detail: String,
}

fn line(ok: bool, name: &str, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        ok,
        name: name.into(),
        detail: detail.into(),
    }
}

/// Capability bits from /proc/self/status `CapEff`.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn run_checks() -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    let recent = matches!(version.as_slice(), [maj, min] if (*maj, *min) >= (5, 8));
    lines.push(line(
        recent,
        "kernel",
        if recent {
            format!("Linux {release} (ring buffers need ≥ 5.8)")
        } else {
            format!("Linux {release} is older than 5.8, which BPF ring buffers need; fix: upgrade the kernel")
        },
    ));

    let btf = Path::new("/sys/kernel/btf/vmlinux");
    lines.push(line(
        btf.exists(),
        "btf",
        if btf.exists() {
            "/sys/kernel/btf/vmlinux present".to_string()
        } else {
            "/sys/kernel/btf/vmlinux missing; fix: a kernel built with CONFIG_DEBUG_INFO_BTF=y"
                .to_string()
        },
    ));

    let caps = effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let cap_ok = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    lines.push(line(
        cap_ok,
        "capabilities",
        if cap_ok {
            format!("CapEff {caps:#x}: CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN present")
        } else {
            format!(
                "CapEff {caps:#x} lacks CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); fix: run as root or grant them \
(systemd AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYS_RESOURCE)"
            )
        },
    ));

    match tracefs::ensure_mounted() {
        Ok(path) => lines.push(line(
            true,
            "tracefs",
            format!("mounted at {}", path.display()),
        )),
        Err(e) => lines.push(line(false, "tracefs", e.to_string())),
    }

    check_programs(&mut lines);
    lines
}

/// Loads the eBPF object and attaches each program, one line per program.
fn check_programs(lines: &mut Vec<CheckLine>) {
    match loader::load(&LoadOptions::default()) {
        Err(e) => lines.push(line(false, "load", e.to_string())),
        Ok((mut ebpf, task_offsets_known)) => {
            lines.push(line(true, "load", "eBPF object accepted by the kernel"));
            lines.push(line(
                true,
                "scheduler totals",
                if task_offsets_known {
                    "read from task_struct (offsets from BTF)"
                } else {
                    "from switch timestamps (no task_struct offsets in BTF; a skipped sched_switch can lose time)"
                },
            ));
            if task_offsets_known {
                match loader::attach_raw_sched_switch(&mut ebpf) {
                    Ok(()) => lines.push(line(
                        true,
                        "program sched_switch_raw",
                        "attached to raw tracepoint sched_switch",
                    )),
                    Err(e) => lines.push(line(false, "program sched_switch_raw", e.to_string())),
                }
            }
            for (name, category, event) in PROGRAMS {
                let label = format!("program {name}");
                match loader::attach_one(&mut ebpf, name, category, event) {
                    Ok(()) => lines.push(line(
                        true,
                        &label,
                        format!("attached to {category}:{event}"),
                    )),
                    Err(e) => lines.push(line(false, &label, e.to_string())),
                }
            }
        }
    }
}
