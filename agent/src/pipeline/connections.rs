//! The connection table: one protocol session per traced socket, created on open (or on first
//! data for a socket that was open before we started), freed on close, and bounded — the
//! least recently active connection is dropped when the table is full (a close we never saw).
//!
//! It also stitches requests to the work done for them. Every socket record carries the
//! calling thread's on-CPU total, so the CPU a thread used between two of its socket calls is
//! known exactly; it is charged to the HTTP request that thread last touched (read its request
//! or wrote its response). A PostgreSQL query finished on a thread is charged, as DB wait, to
//! that same request. For a gunicorn sync worker (one request per thread at a time) this is
//! exact. An asyncio worker serves many requests on one thread: there the kernel side walks
//! the Python stack at each query and response write, and a query belongs to the request whose
//! response its Task (coroutine) wrote (`tasks`). Where the stack cannot be read, the old
//! thread heuristic applies and each such query is counted as heuristic. CPU between two
//! socket calls of an asyncio thread still goes to the request of the latest call.
use std::{collections::VecDeque, sync::Arc};

mod attribution;
mod slots;

use slots::Spares;

use herdwatch_common::PyFrameRef;

use rustc_hash::FxHashMap;

use herdwatch_protocol::{
    Chunk,
    http::{HttpEvent, HttpSession},
    postgres::{PgSession, SessionEvent},
};

use super::{aggregates::Aggregates, tasks::TaskBook};
use crate::model::ConnectionStats;
use crate::{
    probes::{
        python_code::{CallSite, CodeCache},
        socket_events::{SocketEvent, SocketKind},
    },
    procs::python::CodeLayout,
};

#[derive(Debug)]
enum Session {
    Pg(Box<PgSession>),
    Http(Box<HttpSession>),
}

#[derive(Debug)]
struct Conn {
    key: ConnKey,
    /// Distinguishes this connection from earlier ones that used the same slot.
    serial: u32,
    session: Session,
    last_active_ns: u64,
    /// PostgreSQL: the server port, when the connect was seen.
    server_port: Option<u16>,
    /// HTTP: what each open request has cost so far, oldest first (as the session's queue).
    requests: VecDeque<RequestCost>,
    /// PostgreSQL: who sent the latest writes (Python stack facts), newest last, so a query
    /// finished later finds the write that started it.
    sent: VecDeque<Sent>,
    /// HTTP: the asyncio Task answering the front request (0 = none known).
    task: u64,
}

/// What the kernel side said of the stack behind one PostgreSQL write.
#[derive(Debug, Clone)]
struct Sent {
    ts: u64,
    /// The running coroutine (asyncio Task); 0 = none on the stack.
    task: u64,
    /// The whole stack was read: `task` is the truth, not a guess.
    walked: bool,
    site: Option<Arc<CallSite>>,
}

/// Writes remembered per PostgreSQL connection (a pipeline of this many queries still pairs).
const MAX_SENT: usize = 64;

/// The Python stack a thread's next socket record belongs to.
#[derive(Debug, Default)]
struct StackNote {
    ts: u64,
    task: u64,
    status: u32,
    frames: Vec<PyFrameRef>,
}

/// How a traced Python process serves requests, and how to name its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PythonProcess {
    /// Many requests per thread: queries pair with requests by Task, not by thread.
    pub asyncio: bool,
    /// None: its interpreter cannot be read (queries of an asyncio worker are then heuristic).
    pub layout: Option<CodeLayout>,
    pub boundary: WalkBoundary,
}

impl PythonProcess {
    pub fn new(asyncio: bool, layout: Option<CodeLayout>) -> Self {
        Self {
            asyncio,
            layout,
            boundary: WalkBoundary::Searching {
                stacks_left: BOUNDARY_SEARCH_STACKS,
            },
        }
    }
}

/// Where the kernel side's stack walks of a process may stop (`python_code::is_walk_boundary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkBoundary {
    /// Looked for in the next stacks: their code objects are read until it is found.
    Searching { stacks_left: u16 },
    /// This code object's address; the kernel side was told.
    Found(u64),
    /// Not in this process's stacks (uvloop runs Tasks from C; another server): walks go on
    /// to the chain's end, as they must.
    Absent,
}

/// Stacks of a process searched for its walk boundary before the search stops: a server's
/// request runner is on nearly every stack, so a few dozen without it mean there is none.
pub const BOUNDARY_SEARCH_STACKS: u16 = 64;

/// Work charged to one HTTP request while it is open.
#[derive(Debug, Clone)]
pub struct RequestCost {
    pub route: crate::model::Label,
    pub cpu_ns: u64,
    pub db_wait_ns: u64,
    pub queries: u64,
    /// The queries themselves, kept only when spans are exported (bounded).
    pub query_spans: Vec<crate::model::QuerySpan>,
}

/// Queries kept per request for its span; a request issuing more keeps the first ones.
const MAX_QUERY_SPANS: usize = 64;

/// (tgid, fd): how the kernel names a socket.
type ConnKey = (u32, u32);

/// A connection's slot in the table and the serial it was opened with: following it costs an
/// index, not a hash lookup, and a reference to a connection that has since closed (its slot
/// reused by another) finds nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ConnRef {
    slot: u32,
    /// 0: no connection (serials start at 1).
    serial: u32,
}

impl ConnRef {
    fn is_some(self) -> bool {
        self.serial != 0
    }
}

/// Per thread: its on-CPU total at its last socket call, and the HTTP connection it serves.
#[derive(Debug, Default, Clone, Copy)]
struct ThreadCursor {
    last_cpu_ns: u64,
    http_conn: ConnRef,
    /// The last HTTP connections this thread touched: an asyncio worker interleaves many.
    recent_http: [ConnRef; RECENT_HTTP],
}

const RECENT_HTTP: usize = 8;

const MAX_THREAD_CURSORS: usize = 65_536;

const MAX_OPEN_REQUESTS: usize = 256;

#[derive(Debug)]
pub struct Connections {
    /// The connections, by slot; `index` finds a socket's slot.
    conns: slab::Slab<Conn>,
    index: FxHashMap<ConnKey, u32>,
    next_serial: u32,
    threads: FxHashMap<u32, ThreadCursor>,
    /// Sessions and request queues of closed connections, for new ones.
    spares: Spares,
    /// Reused for each chunk's PostgreSQL events.
    pg_events: Vec<SessionEvent>,
    /// Reused for each chunk's HTTP events.
    http_events: Vec<HttpEvent>,
    /// Python stacks waiting for their thread's next record.
    stacks: FxHashMap<u32, StackNote>,
    python: FxHashMap<u32, PythonProcess>,
    /// Walk boundaries found since the pipeline last passed them on to the kernel side.
    boundaries_found: Vec<(u32, u64)>,
    codes: CodeCache,
    tasks: TaskBook<ConnRef>,
    max: usize,
    pub stats: ConnectionStats,
    /// Statement texts kept across agent restarts (see `statement_book`).
    pub statement_book: super::statement_book::StatementBook,
}

impl Connections {
    /// Threads with a cursor (the request or query they are in).
    pub fn threads_tracked(&self) -> usize {
        self.threads.len()
    }

    pub fn new(max: usize) -> Self {
        Self {
            conns: slab::Slab::new(),
            index: FxHashMap::default(),
            next_serial: 1,
            threads: FxHashMap::default(),
            spares: Spares::default(),
            pg_events: Vec::new(),
            http_events: Vec::new(),
            stacks: FxHashMap::default(),
            python: FxHashMap::default(),
            boundaries_found: Vec::new(),
            codes: CodeCache::default(),
            tasks: TaskBook::default(),
            max,
            stats: ConnectionStats::default(),
            statement_book: Default::default(),
        }
    }

    /// Charges the CPU `tid` used since its last socket call to the request it serves, and
    /// returns the thread's cursor as it was before this call.
    /// `serving`: the HTTP connection this call reads or writes, which the thread serves from
    /// now on (set here, in the same lookup).
    fn charge_cpu(&mut self, tid: u32, thread_on_cpu_ns: u64, serving: ConnRef) -> ThreadCursor {
        if self.threads.len() >= MAX_THREAD_CURSORS && !self.threads.contains_key(&tid) {
            // Losing cursors costs one call's attribution per thread, never memory.
            self.threads.clear();
        }
        let cursor = self.threads.entry(tid).or_default();
        let previous = *cursor;
        if thread_on_cpu_ns != 0 {
            cursor.last_cpu_ns = thread_on_cpu_ns;
        }
        if serving.is_some() {
            cursor.http_conn = serving;
            if !cursor.recent_http.contains(&serving) {
                cursor.recent_http.rotate_right(1);
                cursor.recent_http[0] = serving;
            }
        }
        if previous.last_cpu_ns != 0
            && thread_on_cpu_ns > previous.last_cpu_ns
            && let Some(req) = self
                .get_mut(previous.http_conn)
                .and_then(|c| c.requests.front_mut())
        {
            req.cpu_ns += thread_on_cpu_ns - previous.last_cpu_ns;
        }
        previous
    }

    /// Routes of the requests open on the thread's recent HTTP connections, when there are
    /// two or more different ones (an asyncio worker: any of them may have issued a query).
    /// Empty otherwise, without allocating: a sync worker's one request is the calling route.
    fn routes_open_beside(&self, cursor: &ThreadCursor) -> Vec<crate::model::Label> {
        // One lookup per recent connection: this runs for every query.
        let mut open: [Option<&crate::model::Label>; RECENT_HTTP] = [None; RECENT_HTTP];
        let mut n = 0;
        for &hc in &cursor.recent_http {
            if let Some(req) = self.get(hc).and_then(|c| c.requests.front()) {
                open[n] = Some(&req.route);
                n += 1;
            }
        }
        let open = &open[..n];
        let Some(Some(first)) = open.first() else {
            return Vec::new();
        };
        if open.iter().flatten().all(|r| r == first) {
            return Vec::new();
        }
        let mut routes: Vec<crate::model::Label> = Vec::new();
        for r in open.iter().flatten() {
            if !routes.contains(r) {
                routes.push((*r).clone());
            }
        }
        routes
    }

    /// HTTP requests read and not yet answered, per process.
    pub fn open_requests_by_pid(&self) -> std::collections::HashMap<u32, usize> {
        let mut open = std::collections::HashMap::new();
        for (_, c) in &self.conns {
            if !c.requests.is_empty() {
                *open.entry(c.key.0).or_default() += c.requests.len();
            }
        }
        open
    }

    /// A process exited: the kernel closed its fds without close() calls, so its connections
    /// end here. Requests it was serving are recorded as unanswered (a worker killed mid-request
    /// is worth seeing). Returns how many connections were dropped.
    pub fn drop_process(
        &mut self,
        tgid: u32,
        timestamp_ns: u64,
        aggregates: &mut Aggregates,
    ) -> usize {
        let keys: Vec<ConnKey> = self
            .index
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        for key in &keys {
            let Some(conn) = self.remove(*key) else {
                continue;
            };
            self.close(tgid, conn, timestamp_ns, aggregates);
        }
        for waiting in self.tasks.expire(timestamp_ns, Some(tgid)) {
            self.record_unanswered(waiting, aggregates);
        }
        self.forget_python(tgid);
        self.stats.open = self.conns.len();
        keys.len()
    }

    /// Ends a connection taken out of the table: an HTTP response that runs until close ends
    /// here, and requests never answered are recorded as such.
    fn close(&mut self, tgid: u32, mut conn: Conn, timestamp_ns: u64, aggregates: &mut Aggregates) {
        self.stats.closed += 1;
        if conn.task != 0 {
            self.unbind_task(tgid, conn.task, aggregates);
        }
        if let Session::Http(http) = &mut conn.session {
            for ev in http.on_close(timestamp_ns) {
                if let HttpEvent::Exchange(x) = ev {
                    let cost = conn.requests.pop_front();
                    self.stats.http_exchanges += 1;
                    aggregates.record_exchange(tgid, &x, cost.as_ref());
                }
            }
        }
        self.recycle(conn);
    }

    /// statement book: PostgreSQL's answer about one traced connection (monitoring DSN).
    pub fn apply_statement_answer(&mut self, answer: &super::statement_monitor::Answer) {
        let slot = self.index.get(&(answer.pid, answer.fd)).copied();
        if let Some(conn) = slot.and_then(|s| self.conns.get_mut(s as usize))
            && let Session::Pg(pg) = &mut conn.session
        {
            self.statement_book.apply_answer(answer, pg);
        }
    }

    pub fn apply(&mut self, event: SocketEvent<'_>, aggregates: &mut Aggregates) {
        match event {
            SocketEvent::Open {
                tgid,
                fd,
                kind,
                port,
                timestamp_ns,
                ..
            } => {
                let server_port = (kind == SocketKind::Postgres && port != 0).then_some(port);
                self.insert((tgid, fd), kind, true, timestamp_ns, server_port);
                self.stats.opened += 1;
            }
            SocketEvent::Close {
                tgid,
                fd,
                timestamp_ns,
                ..
            } => {
                if let Some(conn) = self.remove((tgid, fd)) {
                    self.close(tgid, conn, timestamp_ns, aggregates);
                }
            }
            SocketEvent::PyStack {
                tgid,
                tid,
                timestamp_ns,
                task,
                status,
                frames,
            } => {
                self.note_stack(tid, timestamp_ns, task, status, frames.iter());
                self.search_walk_boundary(tgid, tid);
            }
            data @ SocketEvent::Data { .. } => self.on_data(data, aggregates),
        }
        self.stats.open = self.conns.len();
    }

    /// A payload read or written on a traced socket: CPU charged to the request the thread
    /// serves, the Python stack behind a write noted, and the bytes fed to the session.
    fn on_data(&mut self, event: SocketEvent<'_>, aggregates: &mut Aggregates) {
        let SocketEvent::Data {
            tgid,
            tid,
            fd,
            kind,
            ingress,
            exit_ns,
            total_len,
            thread_on_cpu_ns,
            payload,
            tail,
            ..
        } = event
        else {
            return;
        };
        self.stats.data_events += 1;
        self.stats.bytes_seen += total_len;
        self.stats.bytes_captured += (payload.len() + tail.len()) as u64;
        let key = (tgid, fd);
        // A socket open before the agent started is first seen here.
        let known = self
            .index
            .get(&key)
            .and_then(|&slot| Some((slot, self.conns.get(slot as usize)?.serial)));
        let at = match known {
            Some((slot, serial)) => ConnRef { slot, serial },
            None => self.insert(key, kind, false, exit_ns, None),
        };
        let serving = if kind == SocketKind::HttpServer {
            at
        } else {
            ConnRef::default()
        };
        let cursor = self.charge_cpu(tid, thread_on_cpu_ns, serving);
        if !ingress {
            self.on_write_stack(tgid, tid, kind, at, exit_ns, aggregates);
        }
        let total = usize::try_from(total_len)
            .unwrap_or(usize::MAX)
            .max(payload.len() + tail.len());
        let chunk = Chunk {
            data: payload,
            total_len: total,
            timestamp_ns: exit_ns,
            tail,
        };
        // statement book: a connection first seen mid-stream learns the statements an
        // earlier run of the agent saw it prepare.
        if known.is_none() {
            self.seed_statements(key, at);
        }
        self.on_chunk(key, at, ingress, chunk, &cursor, aggregates);
    }

    /// statement book: teaches a connection's session what the book knows of it.
    fn seed_statements(&mut self, key: ConnKey, at: ConnRef) {
        if let Some(conn) = self.conns.get_mut(at.slot as usize)
            && let Session::Pg(pg) = &mut conn.session
        {
            self.statement_book.seed(key.0, key.1, pg);
        }
    }

    /// Feeds a chunk to the connection's session and acts on what it completes.
    fn on_chunk(
        &mut self,
        key: ConnKey,
        at: ConnRef,
        ingress: bool,
        chunk: Chunk<'_>,
        cursor: &ThreadCursor,
        aggregates: &mut Aggregates,
    ) {
        let tgid = key.0;
        let Some(conn) = self.conns.get_mut(at.slot as usize) else {
            return;
        };
        let server_port = conn.server_port;
        conn.last_active_ns = chunk.timestamp_ns;
        match &mut conn.session {
            Session::Pg(pg) => {
                let mut events = std::mem::take(&mut self.pg_events);
                if ingress {
                    pg.on_backend_into(chunk, &mut events);
                } else {
                    let ts = chunk.timestamp_ns;
                    pg.on_frontend_into(chunk, &mut events);
                    for (sql, statement) in pg.started_at(ts) {
                        aggregates.note_start(key, sql, statement.map(|n| n.as_str()), ts);
                    }
                    // statement book: keeps the named statements just parsed.
                    self.statement_book.learn(tgid, key.1, pg);
                }
                for ev in events.drain(..) {
                    match ev {
                        SessionEvent::Query(q) => {
                            self.on_query(key, at, server_port, cursor, q, aggregates);
                        }
                        SessionEvent::Error(_) => self.stats.protocol_errors += 1,
                        SessionEvent::Startup { .. } | SessionEvent::Encrypted => {}
                    }
                }
                self.pg_events = events;
            }
            Session::Http(http) => {
                let mut events = std::mem::take(&mut self.http_events);
                if ingress {
                    http.on_read_into(chunk, &mut events);
                } else {
                    http.on_write_into(chunk, &mut events);
                }
                let mut answered_task = 0;
                for ev in events.drain(..) {
                    match ev {
                        HttpEvent::RequestStarted { request, .. } => {
                            if conn.requests.len() >= MAX_OPEN_REQUESTS {
                                conn.requests.pop_front();
                            }
                            conn.requests.push_back(RequestCost {
                                route: aggregates.route_of(&request.target),
                                cpu_ns: 0,
                                db_wait_ns: 0,
                                queries: 0,
                                query_spans: Vec::new(),
                            });
                        }
                        HttpEvent::Exchange(x) => {
                            let cost = conn.requests.pop_front();
                            self.stats.http_exchanges += 1;
                            aggregates.record_exchange(tgid, &x, cost.as_ref());
                            answered_task = std::mem::take(&mut conn.task);
                        }
                        HttpEvent::Error(_) => self.stats.protocol_errors += 1,
                    }
                }
                self.http_events = events;
                if answered_task != 0 {
                    self.unbind_task(tgid, answered_task, aggregates);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
