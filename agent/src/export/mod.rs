//! What leaves the pipeline: the local API that `herdwatch findings` reads, and the
//! Prometheus endpoint, OTLP, and `herdwatch top` (a client of the API).
pub mod api;
pub mod delivery;
pub mod health;
pub mod http;
pub mod idle;
pub mod listen;
pub mod logs;
pub mod names;
pub mod otlp;
pub mod prometheus;
pub mod resource;
pub mod spans;
pub mod top;
