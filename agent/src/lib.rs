//! herdwatch: an eBPF host agent that watches gunicorn/uvicorn fleets from the kernel and
//! names the repeating root cause behind "CPU high".
pub mod agent;
pub mod check;
pub mod config;
pub mod detect;
pub mod error;
pub mod export;
pub mod host;
pub mod model;
pub mod net;
pub mod pipeline;
pub mod probes;
pub mod procs;
pub mod state_file;
pub mod view;

pub use agent::Agent;
pub use config::Config;
pub use error::{Error, Result};
/// The pure protocol layer (PostgreSQL, HTTP/1.1, fingerprints, routes).
pub use herdwatch_protocol as protocol;
