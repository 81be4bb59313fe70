//! The process table: every live process with its parent, command line and the CPU totals of
//! its threads that already exited. Seeded once from /proc, then kept current by the kernel's
//! new-task/exec/exit events — no periodic rescan.
use std::collections::{HashMap, VecDeque};

use herdwatch_common::ThreadCounters;
use serde::Serialize;

use crate::probes::ProcessEvent;

/// Scheduler totals of one thread or the sum over several.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTotals {
    pub on_cpu_ns: u64,
    pub sleep_ns: u64,
    pub blocked_ns: u64,
    pub other_off_ns: u64,
    pub run_delay_ns: u64,
    pub run_delay_count: u64,
    pub run_delay_max_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

impl CpuTotals {
    pub fn add_thread(&mut self, c: &ThreadCounters) {
        self.add(&CpuTotals::from(c));
    }

    pub fn add(&mut self, o: &CpuTotals) {
        self.on_cpu_ns += o.on_cpu_ns;
        self.sleep_ns += o.sleep_ns;
        self.blocked_ns += o.blocked_ns;
        self.other_off_ns += o.other_off_ns;
        self.run_delay_ns += o.run_delay_ns;
        self.run_delay_count += o.run_delay_count;
        self.run_delay_max_ns = self.run_delay_max_ns.max(o.run_delay_max_ns);
        self.voluntary_switches += o.voluntary_switches;
        self.involuntary_switches += o.involuntary_switches;
    }
}

impl From<&ThreadCounters> for CpuTotals {
    fn from(c: &ThreadCounters) -> Self {
        Self {
            on_cpu_ns: c.on_cpu_ns,
            sleep_ns: c.sleep_ns,
            blocked_ns: c.blocked_ns,
            other_off_ns: c.other_off_ns,
            run_delay_ns: c.run_delay_ns,
            run_delay_count: c.run_delay_count,
            run_delay_max_ns: c.run_delay_max_ns,
            voluntary_switches: c.voluntary_switches,
            involuntary_switches: c.involuntary_switches,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Totals of this process's threads that have exited (live threads are in the kernel map).
    #[serde(skip)]
    pub exited_threads: CpuTotals,
    /// How the agent learned of it.
    pub source: Source,
}

#[cfg(test)]
impl ProcessInfo {
    /// A python3 process as a /proc scan finds it, for tests.
    pub fn scanned_python(pid: u32, ppid: u32, argv: &[&str]) -> Self {
        Self {
            pid,
            ppid,
            comm: "python3".into(),
            cmdline: argv.iter().map(|s| s.to_string()).collect(),
            exited_threads: CpuTotals::default(),
            source: Source::Scan,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Found by the /proc scan at start.
    Scan,
    /// Created while the agent was running (a task event).
    Event,
}

/// A process that exited, with its final totals; kept in a short bounded history.
#[derive(Debug, Clone, Serialize)]
pub struct ExitedProcess {
    pub pid: u32,
    pub comm: String,
    pub totals: CpuTotals,
}

/// Lifecycle changes the pool layer cares about (a worker died, a process was forked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lifecycle {
    Forked { pid: u32, ppid: u32 },
    Exec { pid: u32 },
    Exited { pid: u32 },
}

const EXITED_HISTORY: usize = 1024;
const LIFECYCLE_HISTORY: usize = 1024;

#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<u32, ProcessInfo>,
    exited: VecDeque<ExitedProcess>,
    lifecycle: VecDeque<Lifecycle>,
    /// Number of full /proc scans (1 after seeding; the table never rescans on its own).
    pub scans: u64,
    /// Processes the scan could not read (they exited mid-scan, or /proc denied us).
    pub scan_skipped: u64,
    /// Bumped on every change, so derived views (pools) know when to rebuild.
    pub generation: u64,
}

/// Reads one process's parent, comm and command line from /proc.
pub fn read_process(pid: u32) -> Result<ProcessInfo, procfs::ProcError> {
    let proc = procfs::process::Process::new(pid as i32)?;
    let stat = proc.stat()?;
    // A kernel thread or zombie has an empty cmdline; that is not an error.
    let cmdline = proc.cmdline().unwrap_or_default();
    Ok(ProcessInfo {
        pid,
        ppid: stat.ppid.max(0) as u32,
        comm: stat.comm,
        cmdline,
        exited_threads: CpuTotals::default(),
        source: Source::Scan,
    })
}

impl ProcessTable {
    /// Seeds the table from /proc. Entries that vanish mid-scan are counted, not fatal.
    pub fn seed_from_proc() -> Result<Self, procfs::ProcError> {
        let mut table = Self::default();
        table.scan()?;
        Ok(table)
    }

    fn scan(&mut self) -> Result<(), procfs::ProcError> {
        for entry in procfs::process::all_processes()? {
            let pid = match entry {
                Ok(p) => p.pid() as u32,
                Err(_) => {
                    self.scan_skipped += 1;
                    continue;
                }
            };
            match read_process(pid) {
                Ok(info) => {
                    self.procs.insert(pid, info);
                }
                Err(_) => self.scan_skipped += 1,
            }
        }
        self.scans += 1;
        self.generation += 1;
        Ok(())
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.procs.get(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.procs.values()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn exited(&self) -> impl Iterator<Item = &ExitedProcess> {
        self.exited.iter()
    }

    /// Lifecycle changes since the last call (bounded; oldest dropped first).
    pub fn drain_lifecycle(&mut self) -> Vec<Lifecycle> {
        self.lifecycle.drain(..).collect()
    }

    fn record(&mut self, change: Lifecycle) {
        if self.lifecycle.len() == LIFECYCLE_HISTORY {
            self.lifecycle.pop_front();
        }
        self.lifecycle.push_back(change);
        self.generation += 1;
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&mut self, pid: u32, ppid: u32, argv: &str) {
        self.procs.insert(
            pid,
            ProcessInfo {
                pid,
                ppid,
                comm: "python3".into(),
                cmdline: argv.split_whitespace().map(String::from).collect(),
                exited_threads: CpuTotals::default(),
                source: Source::Scan,
            },
        );
    }

    pub fn apply(&mut self, event: &ProcessEvent) {
        match event {
            ProcessEvent::NewTask {
                is_thread: true, ..
            } => {}
            ProcessEvent::NewTask {
                tid,
                parent_tgid,
                comm,
                ..
            } => {
                // fork() copies the parent's argv; exec (if any) will replace it.
                let cmdline = self
                    .procs
                    .get(parent_tgid)
                    .map(|p| p.cmdline.clone())
                    .unwrap_or_default();
                self.procs.insert(
                    *tid,
                    ProcessInfo {
                        pid: *tid,
                        ppid: *parent_tgid,
                        comm: comm.clone(),
                        cmdline,
                        exited_threads: CpuTotals::default(),
                        source: Source::Event,
                    },
                );
                self.record(Lifecycle::Forked {
                    pid: *tid,
                    ppid: *parent_tgid,
                });
            }
            ProcessEvent::Exec {
                pid,
                comm,
                filename,
                ..
            } => self.on_exec(*pid, comm, filename),
            ProcessEvent::Exit {
                tid,
                tgid,
                group_dead,
                comm,
                counters,
                ..
            } => self.on_exit(*tid, *tgid, *group_dead, comm, counters),
        }
    }

    /// A process replaced its image: its command line is read afresh.
    fn on_exec(&mut self, pid: u32, comm: &str, filename: &str) {
        // argv lives in the new image's memory; /proc is the only place to read it. If
        // the process is already gone, the exec'd filename is the best we have.
        let fresh = read_process(pid).ok();
        let entry = self.procs.entry(pid).or_insert_with(|| ProcessInfo {
            pid,
            ppid: fresh.as_ref().map(|f| f.ppid).unwrap_or(0),
            comm: comm.to_string(),
            cmdline: Vec::new(),
            exited_threads: CpuTotals::default(),
            source: Source::Event,
        });
        entry.comm = comm.to_string();
        entry.cmdline = match fresh {
            Some(f) if !f.cmdline.is_empty() => f.cmdline,
            _ => vec![filename.to_string()],
        };
        self.record(Lifecycle::Exec { pid });
    }

    /// A thread exited: its counters join its process's; the last one takes the process
    /// out of the table (kept among the recently exited).
    fn on_exit(
        &mut self,
        tid: u32,
        tgid: u32,
        group_dead: bool,
        comm: &str,
        counters: &herdwatch_common::ThreadCounters,
    ) {
        let Some(proc) = self.procs.get_mut(&tgid) else {
            return;
        };
        proc.exited_threads.add_thread(counters);
        if group_dead {
            let gone = self.procs.remove(&tgid);
            if let Some(gone) = gone {
                if self.exited.len() == EXITED_HISTORY {
                    self.exited.pop_front();
                }
                self.exited.push_back(ExitedProcess {
                    pid: gone.pid,
                    comm: if gone.comm.is_empty() {
                        comm.to_string()
                    } else {
                        gone.comm
                    },
                    totals: gone.exited_threads,
                });
            }
            self.record(Lifecycle::Exited { pid: tgid });
        } else if tid == tgid {
            // The leader left but other threads run on: the process lives.
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(procs: &[ProcessInfo]) -> ProcessTable {
        let mut t = ProcessTable::default();
        for p in procs {
            t.procs.insert(p.pid, p.clone());
        }
        t
    }

    #[test]
    fn fork_inherits_cmdline_and_thread_creation_adds_nothing() {
        let mut t = table_with(&[ProcessInfo::scanned_python(10, 1, &["gunicorn", "app:app"])]);
        t.apply(&ProcessEvent::NewTask {
            tid: 11,
            tgid: 10,
            parent_tid: 10,
            parent_tgid: 10,
            is_thread: true,
            comm: "x".into(),
            timestamp_ns: 0,
        });
        assert_eq!(t.len(), 1);
        t.apply(&ProcessEvent::NewTask {
            tid: 12,
            tgid: 12,
            parent_tid: 10,
            parent_tgid: 10,
            is_thread: false,
            comm: "gunicorn".into(),
            timestamp_ns: 0,
        });
        let child = t.get(12).expect("forked child is in the table");
        assert_eq!(child.ppid, 10);
        assert_eq!(child.cmdline, vec!["gunicorn", "app:app"]);
        assert_eq!(
            t.drain_lifecycle(),
            vec![Lifecycle::Forked { pid: 12, ppid: 10 }]
        );
    }

    #[test]
    fn thread_exits_accumulate_and_group_exit_removes() {
        let mut t = table_with(&[ProcessInfo::scanned_python(20, 1, &["x"])]);
        let counters = ThreadCounters {
            on_cpu_ns: 5,
            ..Default::default()
        };
        let exit = |tid, group_dead| ProcessEvent::Exit {
            tid,
            tgid: 20,
            group_dead,
            comm: "x".into(),
            counters,
            timestamp_ns: 0,
        };
        t.apply(&exit(21, false));
        assert_eq!(t.get(20).map(|p| p.exited_threads.on_cpu_ns), Some(5));
        t.apply(&exit(20, true));
        assert!(t.get(20).is_none());
        let gone: Vec<_> = t.exited().collect();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].totals.on_cpu_ns, 10);
        // An exit for a process we never knew is ignored.
        t.apply(&ProcessEvent::Exit {
            tid: 99,
            tgid: 99,
            group_dead: true,
            comm: String::new(),
            counters,
            timestamp_ns: 0,
        });
        assert_eq!(t.exited().count(), 1);
    }
}
