//! The pipeline: one task owns all state (no locks on the hot path), fed by bounded channels,
//! publishing snapshots that everything else reads.
pub mod accounting;
pub mod aggregates;
pub mod connections;
pub mod sampler;
pub mod state;
pub mod statement_book;
pub mod statement_monitor;
pub mod tasks;
