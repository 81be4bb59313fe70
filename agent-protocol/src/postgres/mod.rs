//! PostgreSQL frontend/backend protocol v3: framing, message decoding, per-connection sessions.
pub mod framing;
pub mod messages;
pub mod session;

#[cfg(test)]
mod tests;

pub use framing::{Direction, Framer, Message, RawMessage};
pub use session::{LatestOps, Outcome, PgSession, QueryEvent, QueryProtocol, SessionEvent};
