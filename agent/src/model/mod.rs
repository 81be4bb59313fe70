//! Plain data everyone shares, at the bottom of the one-way flow (probes/procs/net ->
//! pipeline -> detect -> export): snapshot views, statistics, findings, pool events and the
//! records the pipeline hands out. No behaviour beyond trivial accessors, and no imports from
//! pipeline, detect or export.
pub mod finding;
pub mod pool_event;
pub mod records;
pub mod snapshot;
pub mod stats;

pub use finding::{Finding, FindingKind, Severity, Transition};
pub use pool_event::{PoolChange, PoolEvent};
pub use records::{
    ActivityObserver, FinishedExchange, FinishedQuery, QueryEnd, QueryObs, QuerySpan, QueryStart,
    RecordSink,
};
pub use snapshot::{
    AgentStats, CgroupView, HostView, PoolView, ProcessView, PythonStats, Snapshot, TableSizes,
    TimeShare, WorkerView,
};
pub use stats::{
    ConnectionStats, ExportDrops, Histogram, LATENCY_BUCKETS_MS, Label, Latency, OTHER_ID,
    QueryStats, RouteCalls, RouteStats, SiteCalls,
};
