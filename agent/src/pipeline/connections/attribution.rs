//! Which request a query belongs to: by thread on sync and gthread workers, by asyncio Task
//! (from the Python stacks the kernel side sends) on asyncio workers, by the counted heuristic
//! where a stack cannot be read; and the call site a stack names.
use herdwatch_common::{PyFrameRef, py_status};

use super::{
    BOUNDARY_SEARCH_STACKS, ConnKey, ConnRef, Connections, MAX_QUERY_SPANS, MAX_SENT,
    MAX_THREAD_CURSORS, PythonProcess, Sent, SocketKind, ThreadCursor, WalkBoundary,
};

/// Boundaries waiting to be written to the kernel side (one per new worker; the pipeline
/// passes them on at every snapshot).
const MAX_BOUNDARIES_PENDING: usize = 1024;
use crate::pipeline::{
    aggregates::Aggregates,
    tasks::{Placement, WaitingQuery},
};

impl Connections {
    /// Pairs `tgid`'s queries with requests as `process` says, from its next socket call on.
    pub fn set_python(&mut self, tgid: u32, process: PythonProcess) {
        self.python.insert(tgid, process);
    }

    pub fn forget_python(&mut self, tgid: u32) {
        if self.python.remove(&tgid).is_some() {
            self.codes.forget_process(tgid);
        }
    }

    /// Looks for `tgid`'s walk boundary in the stack just noted for `tid`, while searching.
    pub(super) fn search_walk_boundary(&mut self, tgid: u32, tid: u32) {
        let (Some(process), Some(note)) = (self.python.get_mut(&tgid), self.stacks.get(&tid))
        else {
            return;
        };
        let (WalkBoundary::Searching { stacks_left }, Some(layout)) =
            (process.boundary, process.layout)
        else {
            return;
        };
        process.boundary = match self.codes.walk_boundary(tgid, &layout, &note.frames) {
            Some(code) => {
                if self.boundaries_found.len() < MAX_BOUNDARIES_PENDING {
                    self.boundaries_found.push((tgid, code));
                }
                WalkBoundary::Found(code)
            }
            None if stacks_left <= 1 => WalkBoundary::Absent,
            None => WalkBoundary::Searching {
                stacks_left: stacks_left - 1,
            },
        };
    }

    /// The walk boundaries found since the last call, for the kernel side.
    pub fn take_walk_boundaries(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.boundaries_found)
    }

    /// Records, without a route, the queries whose Tasks never answered a request.
    pub fn expire_tasks(&mut self, now_ns: u64, aggregates: &mut Aggregates) {
        for waiting in self.tasks.expire(now_ns, None) {
            self.record_unanswered(waiting, aggregates);
        }
    }

    /// Tasks tracked, code objects cached, and workers whose walk boundary is known and whose
    /// stacks did not show one (for the agent's own accounting).
    pub fn python_state(&self) -> (usize, crate::probes::python_code::CodeStats, [usize; 2]) {
        let mut boundaries = [0, 0];
        for p in self.python.values() {
            match p.boundary {
                WalkBoundary::Found(_) => boundaries[0] += 1,
                WalkBoundary::Searching { stacks_left }
                    if stacks_left == BOUNDARY_SEARCH_STACKS => {}
                WalkBoundary::Searching { .. } | WalkBoundary::Absent => boundaries[1] += 1,
            }
        }
        (self.tasks.len(), self.codes.stats, boundaries)
    }

    /// Keeps a stack for the thread's next record.
    pub(super) fn note_stack(
        &mut self,
        tid: u32,
        ts: u64,
        task: u64,
        status: u32,
        frames: impl Iterator<Item = PyFrameRef>,
    ) {
        self.stats.py_stacks += 1;
        if status & py_status::TRUNCATED != 0 {
            self.stats.py_stacks_truncated += 1;
        }
        if status & py_status::NO_THREAD != 0 {
            self.stats.py_stacks_without_thread += 1;
        }
        if status & py_status::READ_FAILED != 0 {
            self.stats.py_stacks_unreadable += 1;
        }
        if self.stacks.len() >= MAX_THREAD_CURSORS && !self.stacks.contains_key(&tid) {
            self.stacks.clear();
        }
        let note = self.stacks.entry(tid).or_default();
        note.ts = ts;
        note.task = task;
        note.status = status;
        note.frames.clear();
        note.frames.extend(frames);
    }

    /// What the stack sent ahead of `tid`'s record at `ts` says: (task, whole stack read,
    /// call site when `with_site`).
    pub(super) fn stack_of(
        &mut self,
        tgid: u32,
        tid: u32,
        ts: u64,
        with_site: bool,
    ) -> Option<Sent> {
        let note = self.stacks.get_mut(&tid)?;
        if note.ts != ts {
            return None;
        }
        note.ts = 0;
        let site = match (with_site, self.python.get(&tgid).and_then(|p| p.layout)) {
            (true, Some(layout)) => self.codes.call_site(tgid, &layout, &note.frames),
            _ => None,
        };
        Some(Sent {
            ts,
            task: note.task,
            walked: note.status == 0,
            site,
        })
    }

    /// A query finished: find its request (by thread, or by Task on asyncio workers) and
    /// record it.
    pub(super) fn on_query(
        &mut self,
        key: ConnKey,
        at: ConnRef,
        server_port: Option<u16>,
        cursor: &ThreadCursor,
        query: herdwatch_protocol::postgres::QueryEvent,
        aggregates: &mut Aggregates,
    ) {
        self.stats.postgres_queries += 1;
        aggregates.note_end(key, &query);
        let sent = self
            .get(at)
            .and_then(|c| c.sent.iter().rev().find(|s| s.ts <= query.started_ns))
            .cloned();
        let finished_ns = query.finished_ns;
        let waiting = WaitingQuery {
            conn: key,
            server_port,
            query,
            site: sent.as_ref().and_then(|s| s.site.clone()),
        };
        if !self.python.get(&key.0).is_some_and(|p| p.asyncio) {
            // One request per thread at a time: the thread's request is the query's.
            self.charge_query(cursor.http_conn, waiting, Vec::new(), false, aggregates);
            return;
        }
        match sent {
            Some(s) if s.walked && s.task != 0 => {
                match self.tasks.place((key.0, s.task), waiting, finished_ns) {
                    Placement::Now(request, w) => {
                        self.stats.queries_by_task += 1;
                        self.charge_query(request, w, Vec::new(), false, aggregates);
                    }
                    Placement::Waiting => {}
                    Placement::Unattributed(w) => {
                        self.record_unanswered(w, aggregates);
                    }
                }
            }
            Some(s) if s.walked => {
                self.stats.queries_outside_tasks += 1;
                self.charge_query(ConnRef::default(), waiting, Vec::new(), false, aggregates);
            }
            _ => {
                self.stats.queries_heuristic += 1;
                let in_flight = self.routes_open_beside(cursor);
                self.charge_query(cursor.http_conn, waiting, in_flight, true, aggregates);
            }
        }
    }

    /// The asyncio Task `task` wrote to the HTTP connection at `at`: it answers the request
    /// in front, and the queries it finished meanwhile are that request's.
    pub(super) fn bind_task(
        &mut self,
        tgid: u32,
        at: ConnRef,
        task: u64,
        aggregates: &mut Aggregates,
    ) {
        let Some(conn) = self.get_mut(at) else { return };
        let before = std::mem::replace(&mut conn.task, task);
        if before == task {
            return;
        }
        if before != 0 {
            self.unbind_task(tgid, before, aggregates);
        }
        for w in self.tasks.bind((tgid, task), at) {
            self.stats.queries_by_task += 1;
            self.charge_query(at, w, Vec::new(), false, aggregates);
        }
    }

    /// The request a Task answered is over: the Task (or a later one at its address) binds
    /// afresh on its next write.
    pub(super) fn unbind_task(&mut self, tgid: u32, task: u64, aggregates: &mut Aggregates) {
        for w in self.tasks.unbind((tgid, task)) {
            self.record_unanswered(w, aggregates);
        }
    }

    /// Records, without a route, a query whose Task answered no request (or had no room to
    /// wait for it).
    pub(super) fn record_unanswered(&mut self, waiting: WaitingQuery, aggregates: &mut Aggregates) {
        self.stats.queries_task_unanswered += 1;
        self.charge_query(ConnRef::default(), waiting, Vec::new(), false, aggregates);
    }

    /// Charges a query to the request open at `request` (none: recorded without a route).
    pub(super) fn charge_query(
        &mut self,
        request: ConnRef,
        waiting: WaitingQuery,
        in_flight: Vec<crate::model::Label>,
        heuristic: bool,
        aggregates: &mut Aggregates,
    ) {
        let WaitingQuery {
            conn,
            server_port,
            query: q,
            site,
        } = waiting;
        if let Some(req) = self.get_mut(request).and_then(|c| c.requests.front_mut()) {
            req.db_wait_ns += q.finished_ns.saturating_sub(q.started_ns);
            req.queries += 1;
            self.stats.queries_in_requests += 1;
        }
        // Borrowed, not cloned: the query record takes the one reference it keeps.
        let route = self
            .get(request)
            .and_then(|c| c.requests.front())
            .map(|req| &req.route);
        let caller = crate::pipeline::aggregates::Caller {
            route,
            site: site.as_deref(),
            heuristic,
        };
        aggregates.record_query(conn, server_port, &q, caller, in_flight);
        if aggregates.wants_query_spans()
            && request.is_some()
            && let Some(span) = aggregates.query_span(&q, server_port, site.as_deref())
            && let Some(req) = self.get_mut(request).and_then(|c| c.requests.front_mut())
            && req.query_spans.len() < MAX_QUERY_SPANS
        {
            req.query_spans.push(span);
        }
    }

    /// A write's Python stack: remembered for the queries it starts (PostgreSQL), or binding
    /// its Task to the request it answers (HTTP, asyncio workers).
    pub(super) fn on_write_stack(
        &mut self,
        tgid: u32,
        tid: u32,
        kind: SocketKind,
        at: ConnRef,
        exit_ns: u64,
        aggregates: &mut Aggregates,
    ) {
        let postgres = kind == SocketKind::Postgres;
        let Some(sent) = self.stack_of(tgid, tid, exit_ns, postgres) else {
            return;
        };
        if postgres {
            if let Some(conn) = self.get_mut(at) {
                if conn.sent.len() >= MAX_SENT {
                    conn.sent.pop_front();
                }
                conn.sent.push_back(sent);
            }
        } else if sent.walked && sent.task != 0 {
            self.bind_task(tgid, at, sent.task, aggregates);
        }
    }
}
