//! Maps and globals shared by the programs, plus small helpers around them.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use herdwatch_common::{
    CpuCurrent, EVENT_RING_BYTES, THREAD_MAP_ENTRIES, ThreadCounters, TracepointOffsets, stat,
};

/// Per-thread scheduler counters keyed by thread id. LRU so a host with thread churn can never
/// fill it; exited threads are removed by the exit program after their totals are reported.
#[map]
pub static THREADS: LruHashMap<u32, ThreadCounters> =
    LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// Threads that ran their exit program, until the tid is handed out again (`task_newtask`).
/// An exiting thread still sleeps and wakes (closing files, deferred work) after
/// `sched_process_exit` removed its counters; without this, the next wakeup would recreate
/// them and they would stay for good — hundreds per thousand exits, each walked at every
/// snapshot. LRU: a tid evicted from here is long dead.
#[map]
pub static EXITED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(EXITED_ENTRIES, 0);
const EXITED_ENTRIES: u32 = 8_192;

/// What each CPU is running (index 0 of a per-CPU array).
#[map]
pub static CURRENT: PerCpuArray<CpuCurrent> = PerCpuArray::with_max_entries(1, 0);

/// Process lifecycle events for the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Drop and error counters, indexed by `herdwatch_common::stat::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Tracepoint field offsets, rewritten by the agent at load time from tracefs `format` files.
#[unsafe(no_mangle)]
static OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::LINUX_6_X86_64);

#[inline(always)]
pub fn offsets() -> TracepointOffsets {
    OFFSETS.load()
}

#[inline(always)]
pub fn count(index: u32) {
    add(index, 1);
}

#[inline(always)]
pub fn add(index: u32, value: u64) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += value };
    }
}
