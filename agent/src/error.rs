//! The one error type of the `herdwatch` library. Every variant says what failed and, where
//! there is one, the fix; the binary prints these as they are.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "tracefs is not mounted at {path} and mounting it failed ({source}); fix: `mount -t tracefs nodev /sys/kernel/tracing` as root"
    )]
    TracefsUnavailable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tracefs is mounted at {path} but this process may not read it ({source}): reading tracepoint ids and formats needs CAP_DAC_READ_SEARCH (tracefs is mode 0700); fix: run as root or grant CAP_DAC_READ_SEARCH"
    )]
    TracefsUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tracepoint {category}:{name} is not available ({detail}); this kernel lacks it or tracefs is incomplete"
    )]
    TracepointMissing {
        category: String,
        name: String,
        detail: String,
    },
    #[error("cannot load the eBPF programs: {source}{hint}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
        hint: &'static str,
    },
    #[error("eBPF program {program} failed to {action}: {source}{hint}")]
    Program {
        program: String,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("eBPF map {name} is missing or has the wrong type: {detail}")]
    Map { name: &'static str, detail: String },
    /// The fentry/fexit socket programs cannot be prepared on this host.
    #[error("fentry/fexit programs: {0}")]
    Trampolines(String),
    #[error("reading {what}: {source}")]
    Proc {
        what: String,
        #[source]
        source: procfs::ProcError,
    },
    #[error("I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Config { origin: String, message: String },
    #[error("malformed event from the kernel: {0}")]
    Decode(String),
    #[error("the agent's pipeline task has stopped")]
    PipelineStopped,
    #[error("the herdwatch agent's API at {socket}: {message}")]
    Api { socket: PathBuf, message: String },
    /// The API over TCP (`--api https://host:port`).
    #[error("the herdwatch agent's API at {address}: {message}")]
    RemoteApi { address: String, message: String },
    /// A `herdwatch top --record` file that cannot be written or read back.
    #[error("the recording {path}: {message}")]
    Recording { path: PathBuf, message: String },
    #[error(
        "{field} = {value} is not a value this herdwatch knows (sent by a newer agent?); upgrade herdwatch to read it"
    )]
    UnknownEnumValue { field: &'static str, value: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fix to print when the kernel refused us for lack of privilege.
pub const PRIVILEGE_HINT: &str = " — run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and \
CAP_DAC_READ_SEARCH (`herdwatch check` names the one missing; systemd: AmbientCapabilities=CAP_BPF \
CAP_PERFMON CAP_SYS_PTRACE CAP_DAC_READ_SEARCH; Kubernetes: securityContext.capabilities.add)";

/// An error and its causes on one line, each cause once: a message that already quotes its
/// source (`I/O on x: No such file or directory (os error 2)`) is not followed by it again.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// True when an OS error means "not permitted" rather than "not supported".
pub fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("Operation not permitted") || text.contains("Permission denied") {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_described_once() {
        let err = Error::Io {
            what: "config file /nope".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let anyhow_err = anyhow::Error::from(err);
        let text = describe(anyhow_err.as_ref());
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(text.starts_with("I/O on config file /nope: "), "{text}");
        // What the binary printed before: the cause again after the message.
        assert_eq!(format!("{anyhow_err:#}").matches("os error 2").count(), 2);
    }

    #[test]
    fn a_cause_not_yet_said_is_added() {
        let err = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EACCES))
            .context("reading the token");
        let text = describe(err.as_ref());
        assert_eq!(text, "reading the token: Permission denied (os error 13)");
    }
}
