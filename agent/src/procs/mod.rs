//! Processes: the table (seeded from /proc, kept current by kernel events) and the discovery
//! of gunicorn/uvicorn worker pools in it.
pub mod cgroup;
pub mod cmdline;
pub mod memory;
pub mod own_usage;
pub mod pools;
pub mod python;
pub mod table;
pub mod worker_state;

pub use pools::{Pool, PoolKind};
pub use table::{CpuTotals, ProcessInfo, ProcessTable};
