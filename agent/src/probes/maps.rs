//! Typed access to the kernel side's maps.
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
};
use std::collections::{HashMap as StdHashMap, HashSet};

use herdwatch_common::{
    CpuCurrent, PyProcess, SocketInfo, ThreadCounters, socket_key, stat, tgid_lane,
};

use super::socket_events::SocketKind;

use crate::error::{Error, Result};

/// Counters the kernel side keeps about its own losses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelDrops {
    pub events_dropped: u64,
    pub thread_insert_failed: u64,
    pub read_failed: u64,
    pub missed_switch_out: u64,
    pub socket_events_dropped: u64,
    pub socket_insert_failed: u64,
    pub payload_read_failed: u64,
}

pub struct KernelMaps {
    threads: HashMap<MapData, u32, ThreadCounters>,
    stats: PerCpuArray<MapData, u64>,
    current: PerCpuArray<MapData, CpuCurrent>,
    sockets: HashMap<MapData, u64, SocketInfo>,
    pg_ports: HashMap<MapData, u16, u8>,
    http_servers: HashMap<MapData, u32, u8>,
    py_procs: HashMap<MapData, u32, PyProcess>,
    /// What was last written to HTTP_SERVERS, to sync by difference.
    http_server_set: HashSet<u32>,
    /// The kernel side's filter of thread groups that may have traced sockets, as far as the
    /// agent marks them: pool workers and processes with sockets seeded from /proc.
    agent_tgids: Array<MapData, u64>,
    /// Processes the agent seeded sockets of, and the words of AGENT_TGIDS as last written.
    seeded_tgids: HashSet<u32>,
    agent_words: StdHashMap<u32, u64>,
    tgid_words: u32,
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                name,
                detail: "not in the eBPF object".into(),
            })
        };
        let threads = HashMap::try_from(take(ebpf, "THREADS")?).map_err(|e| Error::Map {
            name: "THREADS",
            detail: e.to_string(),
        })?;
        let stats = PerCpuArray::try_from(take(ebpf, "STATS")?).map_err(|e| Error::Map {
            name: "STATS",
            detail: e.to_string(),
        })?;
        let current = PerCpuArray::try_from(take(ebpf, "CURRENT")?).map_err(|e| Error::Map {
            name: "CURRENT",
            detail: e.to_string(),
        })?;
        let map_err = |name: &'static str| {
            move |e: aya::maps::MapError| Error::Map {
                name,
                detail: e.to_string(),
            }
        };
        let sockets = HashMap::try_from(take(ebpf, "SOCKETS")?).map_err(map_err("SOCKETS"))?;
        let pg_ports = HashMap::try_from(take(ebpf, "PG_PORTS")?).map_err(map_err("PG_PORTS"))?;
        let http_servers =
            HashMap::try_from(take(ebpf, "HTTP_SERVERS")?).map_err(map_err("HTTP_SERVERS"))?;
        let py_procs = HashMap::try_from(take(ebpf, "PY_PROCS")?).map_err(map_err("PY_PROCS"))?;
        let agent_tgids =
            Array::try_from(take(ebpf, "AGENT_TGIDS")?).map_err(map_err("AGENT_TGIDS"))?;
        // The loader sized the filter maps from pid_max; their size is the one answer.
        let tgid_words = agent_tgids.len();
        Ok(Self {
            threads,
            stats,
            current,
            sockets,
            pg_ports,
            http_servers,
            py_procs,
            http_server_set: HashSet::new(),
            agent_tgids,
            seeded_tgids: HashSet::new(),
            agent_words: StdHashMap::new(),
            tgid_words,
        })
    }

    /// Thread groups marked in AGENT_TGIDS (pool workers and processes with seeded sockets).
    pub fn marked_processes(&self) -> usize {
        self.http_server_set.union(&self.seeded_tgids).count()
    }

    /// Writes `tgid`'s byte of AGENT_TGIDS: set while it is a pool worker or has seeded
    /// sockets.
    fn remark(&mut self, tgid: u32) {
        let Some((word, shift)) = tgid_lane(tgid, self.tgid_words) else {
            return; // beyond the filter: the kernel side always looks such ids up
        };
        let on = self.http_server_set.contains(&tgid) || self.seeded_tgids.contains(&tgid);
        let old = self.agent_words.get(&word).copied().unwrap_or(0);
        let lane = 0xffu64 << shift;
        let new = if on { old | (1 << shift) } else { old & !lane };
        if new == old {
            return;
        }
        match self.agent_tgids.set(word, new, 0) {
            Ok(()) if new == 0 => {
                self.agent_words.remove(&word);
            }
            Ok(()) => {
                self.agent_words.insert(word, new);
            }
            Err(e) => tracing::warn!("AGENT_TGIDS word {word}: {e}"),
        }
    }

    /// All live threads' counters. Entries that vanish while iterating (a thread exiting) are
    /// skipped: their totals arrive with the exit event.
    pub fn threads(&self) -> Vec<(u32, ThreadCounters)> {
        self.threads.iter().filter_map(|r| r.ok()).collect()
    }

    /// (thread id, switched in at) of the task each CPU runs now; the idle task is left out.
    pub fn running_now(&self) -> Vec<CpuCurrent> {
        self.current
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().copied().filter(|c| c.tid != 0).collect())
            .unwrap_or_default()
    }

    /// Destination ports whose connections are PostgreSQL (or PgBouncer).
    pub fn set_pg_ports(&mut self, ports: &[u16]) -> Result<()> {
        for port in ports {
            self.pg_ports.insert(port, 1, 0).map_err(|e| Error::Map {
                name: "PG_PORTS",
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Makes HTTP_SERVERS equal `tgids` (pool workers whose accepted connections are traced).
    pub fn sync_http_servers(&mut self, tgids: &HashSet<u32>) {
        for gone in self.http_server_set.difference(tgids) {
            let _ = self.http_servers.remove(gone);
        }
        for new in tgids.difference(&self.http_server_set) {
            if let Err(e) = self.http_servers.insert(new, 1, 0) {
                tracing::warn!("HTTP_SERVERS insert for {new}: {e}");
            }
        }
        let changed: Vec<u32> = tgids
            .symmetric_difference(&self.http_server_set)
            .copied()
            .collect();
        self.http_server_set = tgids.clone();
        for tgid in changed {
            self.remark(tgid);
        }
    }

    /// Walks `tgid`'s Python frames at its socket calls from now on.
    pub fn set_python(&mut self, tgid: u32, process: &PyProcess) -> Result<()> {
        self.py_procs
            .insert(tgid, process, 0)
            .map_err(|e| Error::Map {
                name: "PY_PROCS",
                detail: e.to_string(),
            })
    }

    /// Stops `tgid`'s walks at the code object `code` (`PyProcess::boundary_code`).
    pub fn set_walk_boundary(&mut self, tgid: u32, code: u64) -> Result<()> {
        let map_err = |e: aya::maps::MapError| Error::Map {
            name: "PY_PROCS",
            detail: e.to_string(),
        };
        let mut process = self.py_procs.get(&tgid, 0).map_err(map_err)?;
        process.boundary_code = code;
        self.py_procs.insert(tgid, process, 0).map_err(map_err)
    }

    pub fn forget_python(&mut self, tgid: u32) {
        let _ = self.py_procs.remove(&tgid);
    }

    /// Starts tracing an existing socket (found in /proc at start).
    pub fn track_socket(&mut self, tgid: u32, fd: u32, kind: SocketKind) -> Result<()> {
        if self.seeded_tgids.insert(tgid) {
            self.remark(tgid);
        }
        self.sockets
            .insert(
                socket_key(tgid, fd),
                SocketInfo {
                    kind: kind.raw(),
                    _reserved: 0,
                },
                0,
            )
            .map_err(|e| Error::Map {
                name: "SOCKETS",
                detail: e.to_string(),
            })
    }

    /// Removes the traced sockets of processes that exited.
    pub fn forget_sockets_of(&mut self, tgids: &HashSet<u32>) {
        let stale: Vec<u64> = self
            .sockets
            .keys()
            .filter_map(Result::ok)
            .filter(|k| tgids.contains(&((k >> 32) as u32)))
            .collect();
        for key in stale {
            let _ = self.sockets.remove(&key);
        }
        for tgid in tgids {
            if self.seeded_tgids.remove(tgid) {
                self.remark(*tgid);
            }
        }
    }

    /// Python stacks walked since the programs were loaded, and their total kernel time (ns).
    pub fn python_walks(&self) -> (u64, u64) {
        (self.stat(stat::PY_WALKS), self.stat(stat::PY_WALK_NS))
    }

    /// TCP connects the kernel side did not trace because their destination already showed
    /// it does not speak PostgreSQL.
    pub fn connects_known_not_postgres(&self) -> u64 {
        self.stat(stat::KNOWN_NOT_POSTGRES)
    }

    /// One `STATS` counter summed over the CPUs.
    fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    pub fn drops(&self) -> KernelDrops {
        let sum = |index: u32| self.stat(index);
        KernelDrops {
            events_dropped: sum(stat::EVENTS_DROPPED),
            thread_insert_failed: sum(stat::THREAD_INSERT_FAILED),
            read_failed: sum(stat::READ_FAILED),
            missed_switch_out: sum(stat::MISSED_SWITCH_OUT),
            socket_events_dropped: sum(stat::SOCKET_EVENTS_DROPPED),
            socket_insert_failed: sum(stat::SOCKET_INSERT_FAILED),
            payload_read_failed: sum(stat::PAYLOAD_READ_FAILED),
        }
    }
}
