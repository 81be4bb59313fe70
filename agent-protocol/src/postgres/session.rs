//! One PostgreSQL connection seen from both sides: turns frontend and backend chunks into
//! completed queries with timing, rows and errors.
//!
//! Responses come back in request order, so in-flight operations wait in a FIFO: a simple
//! Query completes at ReadyForQuery; an extended-protocol Execute at CommandComplete,
//! EmptyQueryResponse, PortalSuspended or ErrorResponse. After an error the server skips
//! everything up to Sync, so Executes still queued before that Sync complete as `Aborted`.
//! Statements prepared before we saw the connection are attributed by name, never dropped.
use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use super::{
    framing::{Direction, Framer},
    messages::{Backend, Frontend, Name, Target, decode_backend, decode_frontend},
};
use crate::{Chunk, ProtocolError};

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
struct InFlight {
    query: QueryEvent,
    data_rows: u64,
    tag_rows: Option<u64>,
}

#[derive(Debug)]
enum Pending {
    /// Inline, not boxed: one allocation per query saved; the queue moves ~160 bytes instead.
    Op(InFlight),
    /// A Parse awaiting ParseComplete. If the server answers with an error instead, the
    /// statement failed before any Execute (asyncpg prepares first): that is a failed call.
    Parse(InFlight),
    /// A Sync: ReadyForQuery answers it.
    SyncPoint,
}

#[derive(Debug)]
pub struct PgSession {
    frontend: Framer,
    backend: Framer,
    calls: Calls,
}

/// What the session knows of the connection's calls: a field apart from the framers, so a
/// framer can hand its messages (borrowed from the chunk) straight to it.
#[derive(Debug, Default)]
struct Calls {
    statements: FxHashMap<Name, (Arc<str>, bool)>,
    statement_order: VecDeque<Name>,
    portals: FxHashMap<Name, Name>,
    /// The statement bound to the unnamed portal.
    unnamed_portal: Option<Name>,
    pending: VecDeque<Pending>,
    /// An error happened; Executes until the next SyncPoint are skipped by the server.
    aborting: bool,
    /// The statement (name, text) whose Parse failed: its own Executes are the same failed
    /// call, not further ones.
    failed_parse: Option<(Option<Name>, Option<Arc<str>>)>,
    encrypted: bool,
    /// Operations dropped because the FIFO was full (responses never seen).
    pending_overflow: u64,
    /// Named statements parsed since [`PgSession::take_prepared`] last ran (bounded).
    prepared: Vec<Name>,
    /// The latest operation sent (Query, Parse or Execute) and the one before it.
    latest: LatestOps,
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

impl Calls {
    fn remember_statement(&mut self, name: Name, sql: Arc<str>, truncated: bool) {
        if !self.statements.contains_key(&name) {
            if self.statements.len() >= MAX_STATEMENTS
                && let Some(oldest) = self.statement_order.pop_front()
            {
                self.statements.remove(&oldest);
            }
            self.statement_order.push_back(name.clone());
        }
        self.statements.insert(name, (sql, truncated));
    }

    /// An operation was sent at `ts` (several in one chunk share its time: one operation).
    fn note_sent(&mut self, ts: u64, unknown_statement: Option<Name>) {
        if ts != self.latest.started_ns {
            self.latest.previous_started_ns = self.latest.started_ns;
            self.latest.started_ns = ts;
            self.latest.unknown_statement = None;
        }
        if unknown_statement.is_some() {
            self.latest.unknown_statement = unknown_statement;
        }
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.pending_overflow += 1;
        }
        self.pending.push_back(p);
    }

    fn new_op(
        &self,
        sql: Option<Arc<str>>,
        truncated: bool,
        statement: Option<Name>,
        protocol: QueryProtocol,
        ts: u64,
    ) -> Pending {
        Pending::Op(InFlight {
            query: QueryEvent {
                sql,
                sql_truncated: truncated,
                statement,
                protocol,
                started_ns: ts,
                first_response_ns: None,
                finished_ns: ts,
                rows: 0,
                command: None,
                outcome: Outcome::Ok,
                sqlstate: None,
            },
            data_rows: 0,
            tag_rows: None,
        })
    }

    /// `backend`: the other direction's framer (an encryption request changes how it reads).
    fn frontend_message(
        &mut self,
        msg: Frontend,
        ts: u64,
        backend: &mut Framer,
        out: &mut Vec<SessionEvent>,
    ) {
        match msg {
            Frontend::Startup { user, database } => {
                out.push(SessionEvent::Startup { user, database })
            }
            Frontend::SslRequest | Frontend::GssEncRequest => {
                backend.expect_single_byte();
            }
            Frontend::Query { sql, truncated } => {
                self.note_sent(ts, None);
                let op = self.new_op(Some(sql), truncated, None, QueryProtocol::Simple, ts);
                self.push_pending(op);
            }
            Frontend::Parse {
                statement,
                sql,
                truncated,
            } => {
                self.note_sent(ts, None);
                let op = self.new_op(
                    Some(sql.clone()),
                    truncated,
                    Some(statement.clone()),
                    QueryProtocol::Extended,
                    ts,
                );
                if let Pending::Op(op) = op {
                    self.push_pending(Pending::Parse(op));
                }
                // Bounded like the statement table: a caller that never takes them loses the
                // newest, never memory.
                if !statement.is_empty() && self.prepared.len() < MAX_STATEMENTS {
                    self.prepared.push(statement.clone());
                }
                self.remember_statement(statement, sql, truncated);
            }
            // Drivers bind the unnamed portal almost always: kept apart, it costs no hashing.
            Frontend::Bind { portal, statement } if portal.is_empty() => {
                self.unnamed_portal = Some(statement);
            }
            Frontend::Bind { portal, statement } => {
                self.portals.insert(portal, statement);
                if self.portals.len() > MAX_STATEMENTS {
                    self.portals.clear(); // portals live one transaction; losing them costs a name
                }
            }
            Frontend::Execute { portal } => {
                let statement = if portal.is_empty() {
                    self.unnamed_portal.clone()
                } else {
                    self.portals.get(&portal).cloned()
                };
                let (sql, truncated) = match statement.as_ref().and_then(|s| self.statements.get(s))
                {
                    Some((sql, t)) => (Some(sql.clone()), *t),
                    None => (None, false),
                };
                let unknown = match &statement {
                    Some(name) if sql.is_none() && !name.is_empty() => Some(name.clone()),
                    _ => None,
                };
                self.note_sent(ts, unknown);
                // An unknown portal still names something: the portal itself.
                let statement = statement.or(Some(portal));
                let op = self.new_op(sql, truncated, statement, QueryProtocol::Extended, ts);
                self.push_pending(op);
            }
            Frontend::Close {
                target: Target::Statement,
                name,
            } => {
                self.statements.remove(&name);
            }
            Frontend::Close {
                target: Target::Portal,
                name,
            } => {
                if name.is_empty() {
                    self.unnamed_portal = None;
                } else {
                    self.portals.remove(&name);
                }
            }
            Frontend::Sync => self.push_pending(Pending::SyncPoint),
            Frontend::Terminate => {}
            Frontend::Describe { .. }
            | Frontend::Flush
            | Frontend::CancelRequest
            | Frontend::CopyData
            | Frontend::CopyDone
            | Frontend::CopyFail
            | Frontend::Other(_) => {}
        }
    }

    fn front_op(&mut self) -> Option<&mut InFlight> {
        match self.pending.front_mut() {
            Some(Pending::Op(op)) => Some(op),
            _ => None,
        }
    }

    fn finish_front(&mut self, ts: u64, out: &mut Vec<SessionEvent>) {
        if let Some(Pending::Op(op)) = self.pending.pop_front() {
            let mut q = op.query;
            q.finished_ns = ts;
            q.rows = op.tag_rows.unwrap_or(op.data_rows);
            out.push(SessionEvent::Query(q));
        }
    }

    /// `frontend`: the other direction's framer (a refused encryption request changes how it
    /// reads).
    fn backend_message(
        &mut self,
        msg: Backend,
        ts: u64,
        frontend: &mut Framer,
        out: &mut Vec<SessionEvent>,
    ) {
        // A Parse at the front is answered first: ParseComplete retires it, an error fails it.
        if matches!(self.pending.front(), Some(Pending::Parse(_))) {
            match msg {
                Backend::ParseComplete => {
                    self.pending.pop_front();
                    return;
                }
                Backend::Error { sqlstate, .. } => {
                    if let Some(Pending::Parse(op)) = self.pending.pop_front() {
                        let mut q = op.query;
                        self.failed_parse = Some((q.statement.clone(), q.sql.clone()));
                        q.finished_ns = ts;
                        q.first_response_ns = Some(ts);
                        q.outcome = Outcome::Error;
                        q.sqlstate = sqlstate;
                        out.push(SessionEvent::Query(q));
                    }
                    self.aborting = true;
                    return;
                }
                Backend::ReadyForQuery { .. } => {}
                // Anything else answers something later in the queue; the Parse was
                // evidently accepted (a ParseComplete we did not capture).
                _ => {
                    self.pending.pop_front();
                }
            }
        }
        if let Some(op) = self.front_op()
            && op.query.first_response_ns.is_none()
            && !matches!(msg, Backend::Notice | Backend::ParameterStatus)
        {
            op.query.first_response_ns = Some(ts);
        }
        match msg {
            Backend::EncryptionAnswer { accepted: true } => {
                self.encrypted = true;
                out.push(SessionEvent::Encrypted);
            }
            Backend::EncryptionAnswer { accepted: false } => frontend.expect_untyped(),
            Backend::DataRow => {
                if let Some(op) = self.front_op() {
                    op.data_rows += 1;
                }
            }
            Backend::CommandComplete { command, rows } => {
                let simple = matches!(self.front_op(), Some(op) if op.query.protocol == QueryProtocol::Simple);
                if let Some(op) = self.front_op() {
                    op.query.command.get_or_insert(command);
                    if let Some(rows) = rows {
                        op.tag_rows = Some(op.tag_rows.unwrap_or(0) + rows);
                    }
                }
                if !simple {
                    self.finish_front(ts, out);
                }
            }
            Backend::EmptyQuery | Backend::PortalSuspended => {
                let simple = matches!(self.front_op(), Some(op) if op.query.protocol == QueryProtocol::Simple);
                if !simple {
                    self.finish_front(ts, out);
                }
            }
            Backend::Error { sqlstate, .. } => {
                let simple = match self.front_op() {
                    Some(op) => {
                        op.query.outcome = Outcome::Error;
                        op.query.sqlstate = op.query.sqlstate.take().or(sqlstate);
                        op.query.protocol == QueryProtocol::Simple
                    }
                    None => true,
                };
                if !simple {
                    self.finish_front(ts, out);
                    self.aborting = true;
                }
            }
            Backend::ReadyForQuery { .. } => self.ready_for_query(ts, out),
            _ => {}
        }
    }

    fn ready_for_query(&mut self, ts: u64, out: &mut Vec<SessionEvent>) {
        match self.pending.front() {
            Some(Pending::Op(op)) if op.query.protocol == QueryProtocol::Simple => {
                self.finish_front(ts, out);
            }
            _ => {
                // Extended protocol: this answers the oldest Sync. Anything still queued before
                // it was skipped by the server after an error.
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::SyncPoint => break,
                        // Skipped by the server after an error: not a call of its own.
                        Pending::Parse(_) => {}
                        Pending::Op(op) => {
                            let mut q = op.query;
                            let same_failed_call = self
                                .failed_parse
                                .as_ref()
                                .is_some_and(|(name, sql)| *name == q.statement && *sql == q.sql);
                            if self.aborting && same_failed_call {
                                continue;
                            }
                            q.finished_ns = ts;
                            q.outcome = if self.aborting {
                                Outcome::Aborted
                            } else {
                                Outcome::Ok
                            };
                            out.push(SessionEvent::Query(q));
                        }
                    }
                }
                self.aborting = false;
                self.failed_parse = None;
            }
        }
    }
}

impl Default for PgSession {
    fn default() -> Self {
        Self::new()
    }
}
