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

pub mod capabilities;

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

    let caps = capabilities::effective().unwrap_or(0);
    let lacking = capabilities::missing(caps);
    lines.push(line(
        lacking.is_empty(),
        "capabilities",
        if lacking.is_empty() {
            format!("CapEff {caps:#x} holds {}", capabilities::needed_names())
        } else {
            format!(
                "CapEff {caps:#x} lacks {}; fix: run as root or grant exactly {} (systemd: \
AmbientCapabilities=; Kubernetes: securityContext.capabilities.add)",
                capabilities::describe(&lacking),
                capabilities::needed_names()
            )
        },
    ));

    lines.push(process_access());

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

/// Processes of other users whose executable link is tried before concluding that none can
/// be read (some, such as a sandbox's init, refuse even root).
const PROCESS_PROBES: usize = 64;

/// Whether this process may read other users' processes: their executable links, which /proc
/// guards with the same ptrace access check as the fds, maps and memory the agent reads of
/// every gunicorn and uvicorn worker.
fn process_access() -> CheckLine {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let entries = match std::fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => return line(false, "process access", format!("reading /proc: {e}")),
    };
    let mut denied = None;
    let mut tried = 0;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // /proc/<pid> belongs to the process's effective user.
        let Ok(owner) = entry.metadata().map(|m| m.uid()) else {
            continue;
        };
        if owner == me {
            continue;
        }
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(_) => {
                return line(
                    true,
                    "process access",
                    format!("reads other users' processes (/proc/{pid}/exe of uid {owner})"),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert((pid, owner, e));
                tried += 1;
                if tried >= PROCESS_PROBES {
                    break;
                }
            }
            // A kernel thread (no executable) or a process that just exited.
            Err(_) => {}
        }
    }
    match denied {
        None => line(
            true,
            "process access",
            "no other user's process to read (nothing to prove here)",
        ),
        Some((pid, owner, e)) => line(
            false,
            "process access",
            format!(
                "reading /proc/{pid}/exe of uid {owner}: {e}; workers of other users would be \
                 invisible: needs CAP_SYS_PTRACE (to {}); fix: run as root or grant CAP_SYS_PTRACE",
                capabilities::NEEDED
                    .iter()
                    .find(|c| c.name == "CAP_SYS_PTRACE")
                    .map_or("read other processes", |c| c.purpose)
            ),
        ),
    }
}

/// A failure's detail, with the missing capabilities among `relevant` named (a permission
/// error from the kernel does not say which one it wanted).
fn with_missing_caps(detail: String, relevant: &[&str]) -> String {
    let lacking: Vec<_> = capabilities::missing(capabilities::effective().unwrap_or(0))
        .into_iter()
        .filter(|c| relevant.contains(&c.name))
        .collect();
    if lacking.is_empty() {
        detail
    } else {
        format!(
            "{detail}; this process lacks {}",
            capabilities::describe(&lacking)
        )
    }
}

/// One `program <name>` line: `done` on success, else the error with the missing capabilities
/// among `relevant` named.
fn program_line(
    name: &str,
    outcome: crate::error::Result<()>,
    done: String,
    relevant: &[&str],
) -> CheckLine {
    let label = format!("program {name}");
    match outcome {
        Ok(()) => line(true, &label, done),
        Err(e) => line(false, &label, with_missing_caps(e.to_string(), relevant)),
    }
}

/// Loading tracing programs wants both; attaching them, CAP_PERFMON.
const LOAD_CAPS: [&str; 3] = ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH"];
const ATTACH_CAPS: [&str; 1] = ["CAP_PERFMON"];

/// Loads the eBPF object and attaches each program, one line per program.
fn check_programs(lines: &mut Vec<CheckLine>) {
    // The syscall ABI is patched in where known, so every way of attaching the socket
    // programs is checked: raw pair, trampolines, per-call tracepoints.
    match loader::load(&LoadOptions::default()) {
        Err(e) => lines.push(line(
            false,
            "load",
            with_missing_caps(e.to_string(), &LOAD_CAPS),
        )),
        Ok(loader::Loaded {
            mut ebpf,
            task_offsets_known,
            syscall_abi_known,
        }) => {
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
            // The raw scheduler programs (with BTF offsets), the raw syscall pair
            // (`raw_syscall_tracepoints`, where the ABI is known), then every classic one:
            // the per-call socket programs are what the agent runs by default.
            let raw = loader::RAW_SCHEDULER_PROGRAMS
                .iter()
                .filter(|_| task_offsets_known)
                .chain(
                    loader::RAW_SYSCALL_PROGRAMS
                        .iter()
                        .filter(|_| syscall_abi_known),
                );
            for &(name, tracepoint) in raw {
                lines.push(program_line(
                    name,
                    loader::attach_raw(&mut ebpf, name, tracepoint),
                    format!("attached to raw tracepoint {tracepoint}"),
                    &ATTACH_CAPS,
                ));
            }
            if syscall_abi_known {
                check_trampolines(&mut ebpf, lines);
            }
            lines.push(program_line(
                loader::SOCKET_EXIT_IO,
                loader::load_socket_exit_handler(&mut ebpf),
                "loaded into the socket exits' jump table".into(),
                &LOAD_CAPS,
            ));
            for (name, category, event) in PROGRAMS {
                lines.push(program_line(
                    name,
                    loader::attach_one(&mut ebpf, name, category, event),
                    format!("attached to {category}:{event}"),
                    &ATTACH_CAPS,
                ));
            }
        }
    }
}

/// The socket programs as fentry/fexit programs (`syscall_trampolines`): one informational
/// line, as the agent runs without them (one `syscalls:*` tracepoint per call instead).
fn check_trampolines(ebpf: &mut aya::Ebpf, lines: &mut Vec<CheckLine>) {
    use crate::probes::trampolines;
    let detail = match trampolines::attach_all(ebpf) {
        Ok(()) => format!(
            "{} fentry/fexit programs attached to the syscall functions: \
             syscall_trampolines = true can run here",
            trampolines::ENTRY_PROGRAMS.len()
                + trampolines::EXIT_PROGRAMS.len()
                + trampolines::EXIT_HANDLERS.len()
        ),
        Err(e) => {
            trampolines::unload_all(ebpf);
            format!(
                "not available: {}; the socket programs use one syscalls:* tracepoint per \
                 call (syscall_trampolines = true falls back to them)",
                trampolines::refusal(&e)
            )
        }
    };
    lines.push(line(true, "trampolines", detail));
}
