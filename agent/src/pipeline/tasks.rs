//! Which HTTP request an asyncio Task serves, and the queries it finished before it said.
//!
//! In an asyncio worker the request is read by the event loop before its Task exists, and the
//! Task's queries finish before its response is written; only the response write (walked in
//! the kernel) shows which connection the Task serves. So a Task's finished queries wait here
//! until its first write to an HTTP connection binds it, then go to that request all at once.
//! A Task that never writes a response (a background task, or a child task the request handed
//! its work to) lets its queries go unattributed after `MAX_WAIT_NS` — never to a guessed route.
use std::sync::Arc;

use herdwatch_protocol::postgres::QueryEvent;
use rustc_hash::FxHashMap;

use crate::probes::python_code::CallSite;

/// A Task is named by its process and its coroutine frame's address.
pub type TaskKey = (u32, u64);

/// A finished query waiting for its Task to show its request.
#[derive(Debug)]
pub struct WaitingQuery {
    pub conn: (u32, u32),
    pub server_port: Option<u16>,
    pub query: QueryEvent,
    pub site: Option<Arc<CallSite>>,
}

#[derive(Debug)]
struct Task<B> {
    bound: Option<B>,
    waiting: Vec<WaitingQuery>,
    /// When its first waiting query finished (kernel monotonic ns).
    since_ns: u64,
}

/// Tasks known per process, bounded; `B` says where a bound Task's request is.
#[derive(Debug)]
pub struct TaskBook<B> {
    tasks: FxHashMap<TaskKey, Task<B>>,
}

/// Tasks tracked at once (a worker runs hundreds; a host a few dozen workers).
const MAX_TASKS: usize = 16_384;
/// Queries one Task may hold before it binds (a handler issuing more is rare; the rest wait
/// no more: they go unattributed at once).
const MAX_WAITING: usize = 256;
/// How long a Task's queries wait for its response: longer than any sane request.
pub const MAX_WAIT_NS: u64 = 60_000_000_000;

impl<B> Default for TaskBook<B> {
    fn default() -> Self {
        Self {
            tasks: FxHashMap::default(),
        }
    }
}

/// What to do with a query finished by a Task.
#[derive(Debug)]
pub enum Placement<B> {
    /// The Task already serves this request: charge it now.
    Now(B, WaitingQuery),
    /// It waits for the Task's response.
    Waiting,
    /// No room to wait: record it without a request.
    Unattributed(WaitingQuery),
}

impl<B: Copy> TaskBook<B> {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// A query `key` finished at `now_ns`.
    pub fn place(&mut self, key: TaskKey, q: WaitingQuery, now_ns: u64) -> Placement<B> {
        if self.tasks.len() >= MAX_TASKS && !self.tasks.contains_key(&key) {
            return Placement::Unattributed(q);
        }
        let task = self.tasks.entry(key).or_insert_with(|| Task {
            bound: None,
            waiting: Vec::new(),
            since_ns: now_ns,
        });
        match task.bound {
            Some(at) => Placement::Now(at, q),
            None if task.waiting.len() >= MAX_WAITING => Placement::Unattributed(q),
            None => {
                if task.waiting.is_empty() {
                    task.since_ns = now_ns;
                }
                task.waiting.push(q);
                Placement::Waiting
            }
        }
    }

    /// The Task wrote to the request at `at`: it serves it from now on. Returns the queries
    /// that waited for it.
    pub fn bind(&mut self, key: TaskKey, at: B) -> Vec<WaitingQuery> {
        if self.tasks.len() >= MAX_TASKS && !self.tasks.contains_key(&key) {
            return Vec::new();
        }
        let task = self.tasks.entry(key).or_insert_with(|| Task {
            bound: None,
            waiting: Vec::new(),
            since_ns: 0,
        });
        task.bound = Some(at);
        std::mem::take(&mut task.waiting)
    }

    /// The request the Task served is over (answered, or its connection gone): a later Task
    /// at the same address is another Task.
    pub fn unbind(&mut self, key: TaskKey) -> Vec<WaitingQuery> {
        self.tasks
            .remove(&key)
            .map(|t| t.waiting)
            .unwrap_or_default()
    }

    /// Queries that waited longer than `MAX_WAIT_NS` (their Tasks never answered a request),
    /// and those of `tgid` when it is given (the process exited).
    pub fn expire(&mut self, now_ns: u64, exited: Option<u32>) -> Vec<WaitingQuery> {
        let mut out = Vec::new();
        self.tasks.retain(|&(tgid, _), t| {
            let gone = exited == Some(tgid);
            if gone || (!t.waiting.is_empty() && now_ns.saturating_sub(t.since_ns) > MAX_WAIT_NS) {
                out.append(&mut t.waiting);
            }
            !gone && (t.bound.is_some() || !t.waiting.is_empty())
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herdwatch_protocol::postgres::{Outcome, QueryProtocol};

    fn q(ts: u64) -> WaitingQuery {
        WaitingQuery {
            conn: (1, 9),
            server_port: Some(5432),
            query: QueryEvent {
                sql: Some("select 1".into()),
                sql_truncated: false,
                statement: None,
                protocol: QueryProtocol::Simple,
                started_ns: ts,
                first_response_ns: None,
                finished_ns: ts,
                rows: 1,
                command: None,
                outcome: Outcome::Ok,
                sqlstate: None,
            },
            site: None,
        }
    }

    #[test]
    fn queries_wait_for_their_task_to_answer() {
        let mut book: TaskBook<u32> = TaskBook::default();
        assert!(matches!(book.place((1, 0xa0), q(1), 1), Placement::Waiting));
        assert!(matches!(book.place((1, 0xa0), q(2), 2), Placement::Waiting));
        assert!(matches!(book.place((1, 0xb0), q(3), 3), Placement::Waiting));
        let released = book.bind((1, 0xa0), 7);
        assert_eq!(released.len(), 2, "both of task a's queries, none of b's");
        assert!(matches!(
            book.place((1, 0xa0), q(4), 4),
            Placement::Now(7, _)
        ));
        assert!(book.unbind((1, 0xa0)).is_empty());
        assert!(
            matches!(book.place((1, 0xa0), q(5), 5), Placement::Waiting),
            "a new task at a reused address is not bound to the old request"
        );
    }

    #[test]
    fn tasks_that_never_answer_let_go_of_their_queries() {
        let mut book: TaskBook<u32> = TaskBook::default();
        book.place((1, 0xa0), q(1), 1);
        book.place((2, 0xa0), q(1), 1);
        assert!(book.expire(2, None).is_empty(), "not yet");
        assert_eq!(book.expire(2, Some(2)).len(), 1, "the exited process's");
        assert_eq!(book.expire(MAX_WAIT_NS + 2, None).len(), 1);
        assert!(book.is_empty());
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book: TaskBook<u32> = TaskBook::default();
        for task in 0..MAX_TASKS as u64 {
            book.place((1, task), q(1), 1);
        }
        assert!(matches!(
            book.place((1, u64::MAX), q(1), 1),
            Placement::Unattributed(_)
        ));
        for _ in 0..MAX_WAITING {
            book.place((1, 0), q(1), 1);
        }
        assert!(matches!(
            book.place((1, 0), q(1), 1),
            Placement::Unattributed(_)
        ));
        assert_eq!(book.len(), MAX_TASKS);
    }
}
