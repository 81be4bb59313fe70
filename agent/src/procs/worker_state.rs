//! What a worker is doing right now, from /proc/<pid>/stat and /proc/<pid>/syscall.
//!
//! Until socket tracing sees requests, "busy" is judged from the scheduler and the syscall the
//! worker is blocked in: waiting in select/poll/epoll/accept means waiting for work (idle);
//! running, or blocked in anything else (a DB read, a sleep, disk) means serving (busy). An
//! asyncio worker awaiting the DB (and psycopg 3, which polls libpq's socket) sits in
//! poll/epoll_wait and so reads as idle here; with socket tracing, a worker holding an open
//! HTTP request is `Serving` whatever syscall it waits in.
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// On CPU or runnable.
    Running,
    /// Blocked in a syscall that is not waiting for new work.
    Blocked,
    /// Waiting in poll/epoll while an HTTP request it read is still unanswered (awaiting the
    /// database, typically): busy.
    Serving,
    /// Waiting for a connection or an event.
    Idle,
    /// Gone or unreadable.
    Unknown,
}

impl WorkerState {
    pub fn is_busy(self) -> bool {
        matches!(self, Self::Running | Self::Blocked | Self::Serving)
    }
}

#[cfg(target_arch = "x86_64")]
const WAITING_FOR_WORK: &[i64] = &[
    7,   // poll
    23,  // select
    43,  // accept
    232, // epoll_wait
    270, // pselect6
    271, // ppoll
    281, // epoll_pwait
    288, // accept4
    441, // epoll_pwait2
];

#[cfg(target_arch = "aarch64")]
const WAITING_FOR_WORK: &[i64] = &[
    22,  // epoll_pwait
    72,  // pselect6
    73,  // ppoll
    202, // accept
    242, // accept4
    441, // epoll_pwait2
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const WAITING_FOR_WORK: &[i64] = &[];

/// Classifies from the process state letter and the first field of /proc/<pid>/syscall.
pub fn classify(state: char, syscall_line: &str) -> WorkerState {
    match state {
        'R' => WorkerState::Running,
        'S' | 'D' => {
            let nr = syscall_line
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<i64>().ok());
            match nr {
                Some(nr) if WAITING_FOR_WORK.contains(&nr) => WorkerState::Idle,
                Some(_) => WorkerState::Blocked,
                // "running" (it woke between the two reads) or unreadable
                None if syscall_line.starts_with("running") => WorkerState::Running,
                None => WorkerState::Unknown,
            }
        }
        _ => WorkerState::Unknown,
    }
}

/// A process's state and its (utime, stime) clock ticks, from one read of /proc/<pid>/stat.
pub fn sample(pid: u32) -> (WorkerState, Option<(u64, u64)>) {
    let Ok(stat) = procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) else {
        return (WorkerState::Unknown, None);
    };
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    (
        classify(stat.state, &syscall),
        Some((stat.utime, stat.stime)),
    )
}

/// A process's (utime, stime) clock ticks alone; None once it is gone.
pub fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some((stat.utime, stat.stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify('R', ""), WorkerState::Running);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                classify('S', "23 0x6 0x7ffd 0x0 0x0 0x7ffd 0x0 0x7ffd 0x7f"),
                WorkerState::Idle
            );
            assert_eq!(
                classify('S', "45 0x3 0x55 0x10000 0x0 0x0 0x0 0x7ffd 0x7f"),
                WorkerState::Blocked
            );
        }
        assert_eq!(classify('S', "running"), WorkerState::Running);
        assert_eq!(classify('Z', ""), WorkerState::Unknown);
        assert_eq!(classify('S', "garbage"), WorkerState::Unknown);
    }
}
