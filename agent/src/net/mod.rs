//! Sockets learned from /proc: the listen sockets of worker pools and their accept queues.
pub mod listen;
pub mod seed;
pub mod sock_diag;

pub use listen::{Listener, Transport};
