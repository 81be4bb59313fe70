//! What a session knows of its connection's calls: prepared statements, portals and the
//! FIFO of operations awaiting their responses, fed one decoded message at a time.
use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap;

use super::{
    LatestOps, MAX_PENDING, MAX_STATEMENTS, Outcome, QueryEvent, QueryProtocol, SessionEvent,
};
use crate::postgres::{
    framing::Framer,
    messages::{Backend, Frontend, Name, Target},
};

#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) query: QueryEvent,
    pub(super) data_rows: u64,
    pub(super) tag_rows: Option<u64>,
}

#[derive(Debug)]
pub(super) enum Pending {
    /// Inline, not boxed: one allocation per query saved; the queue moves ~160 bytes instead.
    Op(InFlight),
    /// A Parse awaiting ParseComplete. If the server answers with an error instead, the
    /// statement failed before any Execute (asyncpg prepares first): that is a failed call.
    Parse(InFlight),
    /// A Sync: ReadyForQuery answers it.
    SyncPoint,
}

/// What the session knows of the connection's calls: a field apart from the framers, so a
/// framer can hand its messages (borrowed from the chunk) straight to it.
#[derive(Debug, Default)]
pub(super) struct Calls {
    pub(super) statements: FxHashMap<Name, (Arc<str>, bool)>,
    pub(super) statement_order: VecDeque<Name>,
    pub(super) portals: FxHashMap<Name, Name>,
    /// The statement bound to the unnamed portal.
    pub(super) unnamed_portal: Option<Name>,
    pub(super) pending: VecDeque<Pending>,
    /// An error happened; Executes until the next SyncPoint are skipped by the server.
    pub(super) aborting: bool,
    /// The statement (name, text) whose Parse failed: its own Executes are the same failed
    /// call, not further ones.
    pub(super) failed_parse: Option<(Option<Name>, Option<Arc<str>>)>,
    pub(super) encrypted: bool,
    /// Operations dropped because the FIFO was full (responses never seen).
    pub(super) pending_overflow: u64,
    /// Named statements parsed since [`PgSession::take_prepared`] last ran (bounded).
    pub(super) prepared: Vec<Name>,
    /// The latest operation sent (Query, Parse or Execute) and the one before it.
    pub(super) latest: LatestOps,
}

impl Calls {
    pub(super) fn remember_statement(&mut self, name: Name, sql: Arc<str>, truncated: bool) {
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
    pub(super) fn note_sent(&mut self, ts: u64, unknown_statement: Option<Name>) {
        if ts != self.latest.started_ns {
            self.latest.previous_started_ns = self.latest.started_ns;
            self.latest.started_ns = ts;
            self.latest.unknown_statement = None;
        }
        if unknown_statement.is_some() {
            self.latest.unknown_statement = unknown_statement;
        }
    }

    pub(super) fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.pending_overflow += 1;
        }
        self.pending.push_back(p);
    }

    pub(super) fn new_op(
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
    pub(super) fn frontend_message(
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
            } => self.parse_sent(statement, sql, truncated, ts),
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
            Frontend::Execute { portal } => self.execute_sent(portal, ts),
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

    /// A Parse: it awaits ParseComplete (a failed one is a failed call), and its statement
    /// is remembered for the Executes that name it.
    fn parse_sent(&mut self, statement: Name, sql: Arc<str>, truncated: bool, ts: u64) {
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
        // Bounded like the statement table: a caller that never takes them loses the newest,
        // never memory.
        if !statement.is_empty() && self.prepared.len() < MAX_STATEMENTS {
            self.prepared.push(statement.clone());
        }
        self.remember_statement(statement, sql, truncated);
    }

    /// An Execute: the call of the statement bound to `portal`, by its text when known.
    fn execute_sent(&mut self, portal: Name, ts: u64) {
        let statement = if portal.is_empty() {
            self.unnamed_portal.clone()
        } else {
            self.portals.get(&portal).cloned()
        };
        let (sql, truncated) = match statement.as_ref().and_then(|s| self.statements.get(s)) {
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

    pub(super) fn front_op(&mut self) -> Option<&mut InFlight> {
        match self.pending.front_mut() {
            Some(Pending::Op(op)) => Some(op),
            _ => None,
        }
    }

    pub(super) fn finish_front(&mut self, ts: u64, out: &mut Vec<SessionEvent>) {
        if let Some(Pending::Op(op)) = self.pending.pop_front() {
            let mut q = op.query;
            q.finished_ns = ts;
            q.rows = op.tag_rows.unwrap_or(op.data_rows);
            out.push(SessionEvent::Query(q));
        }
    }

    /// `frontend`: the other direction's framer (a refused encryption request changes how it
    /// reads).
    pub(super) fn backend_message(
        &mut self,
        msg: Backend,
        ts: u64,
        frontend: &mut Framer,
        out: &mut Vec<SessionEvent>,
    ) {
        let msg = if matches!(self.pending.front(), Some(Pending::Parse(_))) {
            match self.answer_parse(msg, ts, out) {
                Some(msg) => msg,
                None => return,
            }
        } else {
            msg
        };
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

    /// A Parse at the front of the queue is answered first: ParseComplete retires it and an
    /// error fails it (the message is used up: None). Anything else answers something later
    /// in the queue, and goes on to it.
    fn answer_parse(
        &mut self,
        msg: Backend,
        ts: u64,
        out: &mut Vec<SessionEvent>,
    ) -> Option<Backend> {
        match msg {
            Backend::ParseComplete => {
                self.pending.pop_front();
                None
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
                None
            }
            Backend::ReadyForQuery { .. } => Some(msg),
            // The Parse was evidently accepted (a ParseComplete we did not capture).
            _ => {
                self.pending.pop_front();
                Some(msg)
            }
        }
    }

    pub(super) fn ready_for_query(&mut self, ts: u64, out: &mut Vec<SessionEvent>) {
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
