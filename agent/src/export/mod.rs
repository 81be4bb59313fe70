//! What leaves the pipeline: the local API that `herdwatch findings` reads, and the
//! Prometheus endpoint.
pub mod api;
pub mod names;
pub mod prometheus;
