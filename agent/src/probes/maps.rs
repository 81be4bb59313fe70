//! Typed access to the kernel side's maps.
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use herdwatch_common::{CpuCurrent, ThreadCounters, stat};

use crate::error::{Error, Result};

/// Counters the kernel side keeps about its own losses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelDrops {
    pub events_dropped: u64,
    pub thread_insert_failed: u64,
    pub read_failed: u64,
    pub missed_switch_out: u64,
}

pub struct KernelMaps {
    threads: HashMap<MapData, u32, ThreadCounters>,
    stats: PerCpuArray<MapData, u64>,
    current: PerCpuArray<MapData, CpuCurrent>,
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
        Ok(Self {
            threads,
            stats,
            current,
        })
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

    pub fn drops(&self) -> KernelDrops {
        let sum = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        KernelDrops {
            events_dropped: sum(stat::EVENTS_DROPPED),
            thread_insert_failed: sum(stat::THREAD_INSERT_FAILED),
            read_failed: sum(stat::READ_FAILED),
            missed_switch_out: sum(stat::MISSED_SWITCH_OUT),
        }
    }
}
