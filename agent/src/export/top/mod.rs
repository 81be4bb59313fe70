//! `herdwatch top`: an interactive terminal view of a running agent, read over its API (the
//! `WatchSnapshots` stream of `herdwatch.v1`): no second eBPF load, and it works against any
//! agent whose socket it can reach. A leaf like the other exporters; it reads wire types
//! only. One job per module:
//! - `feed`: follows the agent's snapshots, and reconnects when the agent goes away;
//! - `model`: the latest snapshot and the route rates measured between two of them;
//! - `rows`: each pane's rows from the snapshot, how they sort and what a filter matches;
//! - `state`: everything the screen shows (pane, selection, sort, filter, link);
//! - `input`: keys → state changes;
//! - `render`: the screen as a pure function of the state, one module per pane;
//! - `terminal`: raw mode and the alternate screen, restored on quit, error and panic;
//! - `app`: the loop tying them together;
//! - `print`: one frame as plain text (`--print`), drawn into a buffer;
//! - `recording`: snapshots kept in a file (`--record`) and read back (`--from`);
//! - `cli`: the flags, and which of the above they ask for.
mod app;
mod cli;
mod feed;
#[cfg(test)]
mod fixture;
mod input;
mod model;
mod print;
pub mod recording;
mod render;
mod rows;
mod state;
mod terminal;

pub use app::run;
pub use cli::{TopArgs, main};
