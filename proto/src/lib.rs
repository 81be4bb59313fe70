//! `herdwatch.v1`: the herdwatch agent's gRPC API — messages, the `AgentService` server trait
//! and its client — generated at build time from `proto/herdwatch/v1/*.proto`.
//!
//! Enum fields are plain `i32` on the wire types (prost keeps values it does not know, from a
//! newer peer); `FindingKind::try_from(value)` says whether a value is known.

/// Generated code: its docs are the .proto comments, and its shape is prost's.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("herdwatch.v1");
}

pub use v1::*;
