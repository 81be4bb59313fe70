//! herdwatch's Grafana datasource backend: asks every herdwatch agent of a fleet over its
//! gRPC API (TLS + token) and answers Grafana with merged frames: findings (one row per
//! finding across hosts), occurrences over time, pools, routes, queries; health of the
//! fleet; template-variable values; live findings.
pub mod error;
pub mod findings;
pub mod fleet;
pub mod plugin;
pub mod query;
pub mod rates;
pub mod settings;
pub mod tables;

pub use error::{Error, Result};
