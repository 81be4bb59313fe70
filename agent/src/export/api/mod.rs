//! The agent's API: gRPC (`herdwatch.v1.AgentService`, crate `herdwatch-proto`) on a Unix
//! socket that only root may open (mode 0600) and, when configured, on TCP with TLS and a
//! bearer token; plus `grpc.health.v1`. `herdwatch findings` and any gRPC client read the
//! agent through it; `herdwatch top` will.
//!
//! A leaf of the one-way flow: it reads the published snapshots; model, pipeline and detect
//! never import it (the agent's wiring hands its drop counters to the snapshot, as it does
//! OTLP's). One job per module:
//! - `server`: binds the listeners and runs tonic on each with its bounds;
//! - `socket_file`: claims the socket's path (never deleting anything but a stale socket)
//!   and removes the agent's own socket at exit;
//! - `tcp`: the TCP listener's settings, checked (and its files read) before the agent starts;
//! - `tls`: rustls configs from PEM files, for the server and for clients;
//! - `auth`: the bearer token: read from a private file, checked in constant time;
//! - `service`: answers each call from the latest snapshot;
//! - `watch_stream`: feeds a Watch stream through a bounded buffer, and cuts off a client
//!   that stops reading;
//! - `transitions`: turns successive snapshots' findings into onsets, updates, resolutions;
//! - `bounds`: the limits, and the counters of what they turned away;
//! - `convert`: model ⟷ wire types, the only place both are named;
//! - `client`: the CLI's side, over the socket or TCP.
pub mod auth;
mod bounds;
pub mod client;
pub mod convert;
mod server;
mod service;
pub mod socket_file;
mod tcp;
mod tls;
mod transitions;
mod watch_stream;

pub use bounds::{ApiCounters, ApiLimits};
pub use server::{Served, serve};
pub use service::AgentApi;
pub use tcp::TcpApi;
pub use transitions::{Change, FindingTracker};
