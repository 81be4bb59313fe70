//! Sockets learned from /proc: the listen sockets of worker pools and their accept queues.
pub mod listen;

pub use listen::{Listener, Transport};
