//! One PostgreSQL connection seen from both sides: turns frontend and backend chunks into
//! completed queries with timing, rows and errors.
//!
//! Responses come back in request order, so in-flight operations wait in a FIFO: a simple
//! Query completes at ReadyForQuery; an extended-protocol Execute at CommandComplete,
//! EmptyQueryResponse, PortalSuspended or ErrorResponse. After an error the server skips
//! everything up to Sync, so Executes still queued before that Sync complete as `Aborted`.
//! Statements prepared before we saw the connection are attributed by name, never dropped.
use std::sync::Arc;

use super::{
    framing::{Direction, Framer},
    messages::{Name, decode_backend, decode_frontend},
};
use crate::{Chunk, ProtocolError};

mod calls;

use calls::{Calls, Pending};

/// Bounds per connection, so a client that never closes what it prepares cannot grow us.
pub const MAX_STATEMENTS: usize = 1024;
pub const MAX_PENDING: usize = 4096;
/// Table sizes a reused session keeps; larger ones are freed.
const KEEP_ENTRIES_ON_REUSE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryProtocol {
    Simple,
    Extended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// Skipped by the server after an earlier error in the same pipeline.
    Aborted,
}

/// A finished query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent {
    /// The SQL text (possibly truncated). None when the statement was prepared before we
    /// started watching and has not been seen since.
    /// Shared with the connection's statement table: a statement executed a million times is
    /// one allocation, not a million.
    pub sql: Option<Arc<str>>,
    pub sql_truncated: bool,
    /// The prepared statement's name for extended-protocol queries ("" = unnamed).
    pub statement: Option<Name>,
    pub protocol: QueryProtocol,
    pub started_ns: u64,
    /// First response byte for this query (server work done, results flowing).
    pub first_response_ns: Option<u64>,
    pub finished_ns: u64,
    /// From the CommandComplete tag, else the DataRows counted.
    pub rows: u64,
    /// `SELECT`, `INSERT`, … from the tag.
    pub command: Option<Name>,
    pub outcome: Outcome,
    pub sqlstate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Startup {
        user: Option<String>,
        database: Option<String>,
    },
    /// TLS or GSS encryption was accepted: from here the bytes are ciphertext.
    Encrypted,
    Query(QueryEvent),
    Error(ProtocolError),
}

#[derive(Debug)]
pub struct PgSession {
    frontend: Framer,
    backend: Framer,
    calls: Calls,
}

/// When the latest two operations were sent, and whether the latest executed a statement
/// whose text is unknown: what a lookup of the server's own view of the connection
/// (`pg_stat_activity`) is matched against.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LatestOps {
    pub started_ns: u64,
    pub previous_started_ns: u64,
    /// The latest operation executed this named statement, whose text the session lacks.
    pub unknown_statement: Option<Name>,
}

impl PgSession {
    /// A connection seen from its start (StartupMessage or SSLRequest first).
    pub fn new() -> Self {
        Self::with_framers(
            Framer::new(Direction::Frontend),
            Framer::new(Direction::Backend),
        )
    }

    /// A connection already open when we started watching: typed messages only.
    pub fn mid_stream() -> Self {
        Self::with_framers(
            Framer::mid_stream(Direction::Frontend),
            Framer::mid_stream(Direction::Backend),
        )
    }

    fn with_framers(frontend: Framer, backend: Framer) -> Self {
        Self {
            frontend,
            backend,
            calls: Calls::default(),
        }
    }

    /// Makes this session the one `new()` (`from_start`) or `mid_stream()` would return, for
    /// another connection, keeping its buffers and tables (emptied) so the new connection
    /// allocates nothing for them. Every other field is fresh by construction.
    pub fn reuse(&mut self, from_start: bool) {
        let fresh = if from_start {
            Self::new()
        } else {
            Self::mid_stream()
        };
        self.frontend.renew(fresh.frontend);
        self.backend.renew(fresh.backend);
        let old = std::mem::replace(&mut self.calls, fresh.calls);
        let Calls {
            mut statements,
            mut statement_order,
            mut portals,
            mut pending,
            ..
        } = old;
        // Tables a busy connection grew large are let go rather than kept.
        let small = |capacity: usize| capacity <= KEEP_ENTRIES_ON_REUSE;
        if small(statements.capacity()) && small(statement_order.capacity()) {
            statements.clear();
            statement_order.clear();
            self.calls.statements = statements;
            self.calls.statement_order = statement_order;
        }
        if small(portals.capacity()) {
            portals.clear();
            self.calls.portals = portals;
        }
        if small(pending.capacity()) {
            pending.clear();
            self.calls.pending = pending;
        }
    }

    /// The connection switched to TLS or GSS encryption: nothing more is read from it.
    pub fn encrypted(&self) -> bool {
        self.calls.encrypted
    }

    /// Operations dropped because too many were in flight (responses never seen).
    pub fn pending_overflow(&self) -> u64 {
        self.calls.pending_overflow
    }

    /// Queries sent but not answered yet.
    pub fn in_flight(&self) -> usize {
        self.calls
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Op(_)))
            .count()
    }

    /// Teaches the session the text of a statement prepared before it was watched (kept by
    /// the agent across its restarts, or read from PostgreSQL), so its Executes carry the
    /// text. A name the session has seen parsed keeps its own text. Returns whether it was
    /// learned.
    pub fn learn_statement(&mut self, name: &str, sql: Arc<str>, truncated: bool) -> bool {
        if name.is_empty() || self.calls.statements.contains_key(name) {
            return false;
        }
        self.calls
            .remember_statement(Name::from(name), sql, truncated);
        true
    }

    /// Whether named statements were parsed since [`Self::take_prepared`] last ran: a check
    /// that costs nothing on the hot path.
    pub fn has_prepared(&self) -> bool {
        !self.calls.prepared.is_empty()
    }

    /// Hands each named statement parsed since the last call (name, text, truncated) to
    /// `each`, for a caller that keeps statements beyond the connection. Unnamed statements
    /// are parsed again for every use and never handed over.
    pub fn take_prepared(&mut self, mut each: impl FnMut(&str, &Arc<str>, bool)) {
        let Calls {
            prepared,
            statements,
            ..
        } = &mut self.calls;
        for name in prepared.drain(..) {
            if let Some((sql, truncated)) = statements.get(&name) {
                each(&name, sql, *truncated);
            }
        }
    }

    /// The latest operations sent on this connection (see [`LatestOps`]).
    pub fn latest_ops(&self) -> &LatestOps {
        &self.calls.latest
    }

    /// Chunks either framer skipped while resynchronising.
    pub fn skipped_chunks(&self) -> u64 {
        self.frontend.skipped_chunks + self.backend.skipped_chunks
    }

    pub fn on_frontend(&mut self, chunk: Chunk<'_>) -> Vec<SessionEvent> {
        let mut out = Vec::new();
        self.on_frontend_into(chunk, &mut out);
        out
    }

    pub fn on_backend(&mut self, chunk: Chunk<'_>) -> Vec<SessionEvent> {
        let mut out = Vec::new();
        self.on_backend_into(chunk, &mut out);
        out
    }

    /// As [`Self::on_frontend`], appending to `out`: a caller reusing one vector allocates
    /// nothing per chunk. Messages are decoded where they lie in the chunk.
    pub fn on_frontend_into(&mut self, chunk: Chunk<'_>, out: &mut Vec<SessionEvent>) {
        let framers = (&mut self.frontend, &mut self.backend);
        on_chunk(
            framers,
            &mut self.calls,
            chunk,
            out,
            decode_frontend,
            Calls::frontend_message,
        );
    }

    /// As [`Self::on_backend`], appending to `out`.
    /// The queries the frontend chunk stamped `ts` sent (text, or statement name when the
    /// text is not known): their starts, known before their answers.
    pub fn started_at(&self, ts: u64) -> impl Iterator<Item = (Option<&Arc<str>>, Option<&Name>)> {
        self.calls
            .pending
            .iter()
            .rev()
            .take_while(move |p| match p {
                Pending::Op(op) | Pending::Parse(op) => op.query.started_ns == ts,
                Pending::SyncPoint => true,
            })
            .filter_map(|p| match p {
                Pending::Op(op) => Some((op.query.sql.as_ref(), op.query.statement.as_ref())),
                _ => None,
            })
    }

    pub fn on_backend_into(&mut self, chunk: Chunk<'_>, out: &mut Vec<SessionEvent>) {
        let framers = (&mut self.backend, &mut self.frontend);
        on_chunk(
            framers,
            &mut self.calls,
            chunk,
            out,
            decode_backend,
            Calls::backend_message,
        );
    }
}

/// Frames `chunk` with the first of `framers`, decodes each message where it lies and hands
/// it to `handle`, which may change how the second (the other direction) reads. Nothing is
/// read once the connection is encrypted.
fn on_chunk<M>(
    (reading, other): (&mut Framer, &mut Framer),
    calls: &mut Calls,
    chunk: Chunk<'_>,
    out: &mut Vec<SessionEvent>,
    decode: impl Fn(&super::framing::Message<'_>) -> Result<M, ProtocolError>,
    handle: impl Fn(&mut Calls, M, u64, &mut Framer, &mut Vec<SessionEvent>),
) {
    if calls.encrypted {
        return;
    }
    reading.push_with(chunk, |m| match m.and_then(|m| Ok((decode(&m)?, m))) {
        Ok((msg, m)) => handle(calls, msg, m.timestamp_ns, other, out),
        Err(e) => out.push(SessionEvent::Error(e)),
    });
}

impl Default for PgSession {
    fn default() -> Self {
        Self::new()
    }
}
