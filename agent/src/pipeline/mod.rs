//! The pipeline: one task owns all state (no locks on the hot path), fed by bounded channels,
//! publishing snapshots that everything else reads.
pub mod aggregates;
pub mod connections;
pub mod state;
pub mod statement_book;
pub mod statement_monitor;
pub mod tasks;
