//! Everything that touches the kernel side: loading and attaching the programs, reading the
//! process-event ring buffer, the per-thread counter map and the drop counters.
pub mod btf;
pub mod events;
pub mod loader;
pub mod maps;
pub mod python_code;
pub mod reader;
pub mod socket_events;
pub mod syscall_abi;
pub mod tracefs;
pub mod trampolines;

pub use events::ProcessEvent;
pub use loader::{LoadOptions, PROGRAMS};
