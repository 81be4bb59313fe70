//! Worker-pool lifecycle events (a gunicorn/uvicorn worker started or exited, a master
//! reloaded), as the lifecycle log derives them and the view and findings cite them.
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PoolChange {
    WorkerStarted {
        pid: u32,
    },
    WorkerExited {
        pid: u32,
    },
    /// Most of the workers were replaced while the master stayed: a reload (HUP, deploy).
    Reload {
        replaced: usize,
        workers: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolEvent {
    pub at_unix_ms: u64,
    pub pool: String,
    pub master: u32,
    #[serde(flatten)]
    pub change: PoolChange,
}

impl PoolEvent {
    pub fn describe(&self) -> String {
        let what = match &self.change {
            PoolChange::WorkerStarted { pid } => format!("worker {pid} started"),
            PoolChange::WorkerExited { pid } => format!("worker {pid} exited"),
            PoolChange::Reload { replaced, workers } => {
                format!(
                    "master {} reloaded: {replaced} of {workers} workers replaced",
                    self.master
                )
            }
        };
        format!("{} at {}: {what}", self.pool, clock_text(self.at_unix_ms))
    }
}

/// `HH:MM:SS` UTC.
pub fn clock_text(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!("{:02}:{:02}:{:02}Z", (s / 3600) % 24, (s / 60) % 60, s % 60)
}
