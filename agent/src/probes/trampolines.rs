//! The socket programs as fentry/fexit programs on the kernel's syscall functions: what the
//! agent attaches by default where the kernel has BPF trampolines, BTF and a syscall ABI the
//! agent knows. A trampoline calls the program straight from the function's entry or return,
//! without the perf record a `syscalls:*` tracepoint fills for every call of its kind on the
//! host; elsewhere the per-call tracepoint programs run the same handlers.
use aya::{
    Btf, Ebpf,
    programs::{FEntry, FExit},
};

use crate::error::{Error, Result, is_permission_error};

use super::loader::{into_jump_table, program, program_error};

/// The fentry programs: (program, traced call).
pub const ENTRY_PROGRAMS: [(&str, &str); 10] = [
    ("fentry_connect", "connect"),
    ("fentry_close", "close"),
    ("fentry_read", "read"),
    ("fentry_readv", "readv"),
    ("fentry_write", "write"),
    ("fentry_writev", "writev"),
    ("fentry_recvfrom", "recvfrom"),
    ("fentry_recvmsg", "recvmsg"),
    ("fentry_sendto", "sendto"),
    ("fentry_sendmsg", "sendmsg"),
];

/// The fexit programs: (program, traced call). The read/write ones tail-call their file's
/// handler in `EXIT_HANDLERS`, which must be in place first.
pub const EXIT_PROGRAMS: [(&str, &str); 11] = [
    ("fexit_connect", "connect"),
    ("fexit_accept", "accept"),
    ("fexit_accept4", "accept4"),
    ("fexit_read", "read"),
    ("fexit_readv", "readv"),
    ("fexit_write", "write"),
    ("fexit_writev", "writev"),
    ("fexit_recvfrom", "recvfrom"),
    ("fexit_recvmsg", "recvmsg"),
    ("fexit_sendto", "sendto"),
    ("fexit_sendmsg", "sendmsg"),
];

/// The shared read/write exit handlers: (program, jump table, call whose prototype it takes).
/// The kernel lets a tracing program tail-call only programs of the same attach prototype,
/// and BTF keeps one per source file: `fs/read_write.c` and `net/socket.c`.
pub const EXIT_HANDLERS: [(&str, &str, &str); 2] = [
    ("trampoline_exit_io_fs", "EXIT_IO_FS", "read"),
    ("trampoline_exit_io_net", "EXIT_IO_NET", "recvfrom"),
];

/// The kernel function behind system call `call` on this architecture, if described.
pub fn syscall_function(call: &str) -> Option<String> {
    let prefix = if cfg!(target_arch = "x86_64") {
        "__x64_sys_"
    } else if cfg!(target_arch = "aarch64") {
        "__arm64_sys_"
    } else {
        return None;
    };
    Some(format!("{prefix}{call}"))
}

fn function_of(call: &str) -> Result<String> {
    syscall_function(call)
        .ok_or_else(|| Error::Trampolines("no syscall function names for this architecture".into()))
}

/// The kernel's BTF, which fentry/fexit programs are loaded against.
pub fn kernel_btf() -> Result<Btf> {
    Btf::from_sys_fs().map_err(|e| {
        Error::Trampolines(format!(
            "kernel BTF (/sys/kernel/btf/vmlinux) not readable: {e}"
        ))
    })
}

/// Loads (verifies, once per file) the read/write exit handlers and puts each in its jump
/// table. Must run before the fexit programs are attached.
pub fn load_exit_handlers(ebpf: &mut Ebpf, btf: &Btf) -> Result<()> {
    for (name, table_name, call) in EXIT_HANDLERS {
        let handler: &mut FExit = program(ebpf, name)?;
        handler
            .load(&function_of(call)?, btf)
            .map_err(|e| program_error(name, "load", e))?;
        let fd = handler
            .fd()
            .map_err(|e| program_error(name, "load", e))?
            .try_clone();
        into_jump_table(ebpf, table_name, fd)?;
    }
    Ok(())
}

/// Loads and attaches one fentry program to system call `call`'s function.
pub fn attach_entry(ebpf: &mut Ebpf, btf: &Btf, name: &str, call: &str) -> Result<()> {
    let p: &mut FEntry = program(ebpf, name)?;
    p.load(&function_of(call)?, btf)
        .map_err(|e| program_error(name, "load", e))?;
    p.attach().map_err(|e| program_error(name, "attach", e))?;
    Ok(())
}

/// Loads and attaches one fexit program to system call `call`'s function.
pub fn attach_exit(ebpf: &mut Ebpf, btf: &Btf, name: &str, call: &str) -> Result<()> {
    let p: &mut FExit = program(ebpf, name)?;
    p.load(&function_of(call)?, btf)
        .map_err(|e| program_error(name, "load", e))?;
    p.attach().map_err(|e| program_error(name, "attach", e))?;
    Ok(())
}

/// Attaches every socket program through trampolines: the exit handlers first, then the
/// entries, then the exits (an exit whose entry never ran finds no open call and returns).
pub fn attach_all(ebpf: &mut Ebpf) -> Result<()> {
    let btf = kernel_btf()?;
    load_exit_handlers(ebpf, &btf)?;
    for (name, call) in ENTRY_PROGRAMS {
        attach_entry(ebpf, &btf, name, call)?;
    }
    for (name, call) in EXIT_PROGRAMS {
        attach_exit(ebpf, &btf, name, call)?;
    }
    Ok(())
}

/// Why the trampoline programs could not run, for a log line or `check`. Called after the
/// other programs attached with the same privileges, so a permission error here is the
/// kernel's policy on tracing programs, not a missing capability.
pub fn refusal(e: &Error) -> String {
    if is_permission_error(e) {
        "this kernel refuses fentry/fexit (tracing) programs with EPERM although the other \
         programs attached with the same privileges (a kernel build or security-module policy)"
            .to_string()
    } else {
        e.to_string()
    }
}

/// Unloads (and so detaches) every trampoline program, after a failed `attach_all`.
pub fn unload_all(ebpf: &mut Ebpf) {
    let names = ENTRY_PROGRAMS
        .iter()
        .chain(EXIT_PROGRAMS.iter())
        .map(|(name, _)| *name)
        .chain(EXIT_HANDLERS.iter().map(|(name, _, _)| *name));
    for name in names {
        let unloaded = match ebpf.program_mut(name) {
            Some(aya::programs::Program::FEntry(p)) => p.unload(),
            Some(aya::programs::Program::FExit(p)) => p.unload(),
            _ => Ok(()),
        };
        if let Err(e) = unloaded {
            tracing::debug!("unloading {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_traced_call_has_an_entry_or_an_exit_and_names_a_kernel_function() {
        let calls: std::collections::BTreeSet<&str> = ENTRY_PROGRAMS
            .iter()
            .chain(EXIT_PROGRAMS.iter())
            .map(|(_, call)| *call)
            .collect();
        let abi = super::super::syscall_abi::host();
        if let Some(abi) = abi {
            // Every call the raw programs dispatch on is hooked here too.
            assert_eq!(calls.len(), 12, "{calls:?} vs {:?}", abi.nr);
        }
        for call in calls {
            if let Some(f) = syscall_function(call) {
                assert!(f.ends_with(call) && f.contains("_sys_"), "{f}");
            }
        }
    }
}
