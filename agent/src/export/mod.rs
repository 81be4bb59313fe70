//! What leaves the pipeline: the local API that `herdwatch findings` reads.
pub mod api;
