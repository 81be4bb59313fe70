//! The statement book: the text of every named prepared statement the agent has seen, kept in
//! the state directory so a restarted agent still knows statements prepared before it started.
//!
//! psycopg (`prepare=True`, `prepare_threshold`) and asyncpg's statement cache prepare a
//! statement once per connection and execute it by name for as long as the connection lives —
//! hours. An agent that starts after the Parse sees only `Execute _pg3_4`. The book remembers
//! (connection, name) → text across agent restarts.
//!
//! Keying. A connection is (pid, the process's start time from `/proc/<pid>/stat`, the
//! socket's inode from `/proc/<pid>/fd/<fd>` → `socket:[N]`). A restarted app process that
//! got the same pid has another start time; a new connection on a reused fd has another
//! inode: neither inherits names it never prepared. Entries of processes that are gone (or
//! whose pid now names another process) are dropped when the book is loaded and saved.
//!
//! Literals: the book keeps the fingerprint's normalised text (literals as `?`), never the raw
//! SQL, so nothing a client sent as a literal is written to disk; fingerprinting the
//! normalised text again gives the same fingerprint. The text feeds only the session (the
//! same path a Parse takes), never a label.
//!
//! Bounded in entries and bytes; written atomically (temporary file, fsync, rename) at most
//! every [`SAVE_EVERY`] when it changed, and at shutdown. A file that is corrupt, truncated or
//! from a newer version is set aside with one warning and the book starts fresh; a state
//! directory that cannot be created or written means one warning and no persistence.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use herdwatch_protocol::postgres::PgSession;
use serde::{Deserialize, Serialize};

use crate::state_file;

/// The file in the state directory.
pub const FILE_NAME: &str = "statements.json";
/// Format version written; a file with a higher one is from a newer agent and not read.
const VERSION: u32 = 1;
/// Statements kept across all connections.
pub const MAX_ENTRIES: usize = 65_536;
/// Text bytes kept across all connections.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// Statements kept per connection (as many as a session keeps).
const MAX_PER_CONNECTION: usize = herdwatch_protocol::postgres::session::MAX_STATEMENTS;
/// A file larger than this is not read (it cannot be one we wrote within the bounds).
const MAX_FILE_BYTES: u64 = 2 * MAX_BYTES as u64 + 16 * 1024 * 1024;
/// How often a changed book is written.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// One traced connection, as stable as the kernel lets us name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when the process started.
    pub start_time: u64,
    /// The socket's inode.
    pub inode: u64,
}

#[derive(Debug, Default)]
struct ConnStatements {
    /// name → (normalised text, truncated).
    statements: HashMap<String, (Arc<str>, bool)>,
    /// When a statement was last learned here (book-wide counter): the least recent
    /// connection is dropped first when the book is full.
    touched: u64,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    name: String,
    sql: String,
    #[serde(default)]
    truncated: bool,
}

#[derive(Serialize, Deserialize)]
struct FileConn {
    #[serde(flatten)]
    id: ConnId,
    statements: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileBook {
    version: u32,
    connections: Vec<FileConn>,
}

#[derive(Debug)]
pub struct StatementBook {
    /// Off (no state directory configured): nothing is learned or looked up.
    enabled: bool,
    /// Where the book is written; None: kept for this run only (unusable state directory).
    path: Option<PathBuf>,
    /// `/proc`, or a stand-in tree in tests.
    proc_root: PathBuf,
    conns: HashMap<ConnId, ConnStatements>,
    /// Pids with entries: a connection of any other process needs no /proc lookup to seed.
    pids: HashMap<u32, usize>,
    entries: usize,
    bytes: usize,
    clock: u64,
    dirty: bool,
    last_save: Option<Instant>,
    /// Asks PostgreSQL for texts the book lacks (`[postgres] monitor_dsn`), when configured.
    pub monitor: Option<super::statement_monitor::MonitorLink>,
    /// Statements learned and seeded into sessions since the start (for tests and logs).
    pub learned: u64,
    pub seeded: u64,
}

impl Default for StatementBook {
    /// No book: persistence is off.
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            proc_root: PathBuf::from("/proc"),
            conns: HashMap::new(),
            pids: HashMap::new(),
            entries: 0,
            bytes: 0,
            clock: 0,
            dirty: false,
            last_save: None,
            monitor: None,
            learned: 0,
            seeded: 0,
        }
    }
}

impl StatementBook {
    /// The book kept in `dir` (created if missing, mode 0700), loaded if a previous run left
    /// one. Never fails: an unusable directory or file costs a warning, not the agent.
    pub fn open(dir: &Path) -> Self {
        Self::open_with_proc(dir, Path::new("/proc"))
    }

    /// As [`Self::open`], reading processes from `proc_root` instead of `/proc`.
    pub fn open_with_proc(dir: &Path, proc_root: &Path) -> Self {
        let mut book = Self::default();
        book.enabled = true;
        book.proc_root = proc_root.to_path_buf();
        if let Err(e) = state_file::writable_dir(dir) {
            tracing::warn!(
                "state directory {}: {e}; statements prepared before a restart will not be \
                 known after it",
                dir.display()
            );
            return book;
        }
        let path = dir.join(FILE_NAME);
        match state_file::read_versioned(&path, MAX_FILE_BYTES, VERSION) {
            Ok(Some(file)) => book.load(file),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(
                    "statement book {}: {why}; starting a fresh one",
                    path.display()
                );
                state_file::set_aside(&path);
            }
        }
        book.path = Some(path);
        book
    }

    fn load(&mut self, file: FileBook) {
        for conn in file.connections {
            // A process that is gone, or a pid now naming another process: not ours.
            if self.start_time(conn.id.pid) != Some(conn.id.start_time) {
                continue;
            }
            for e in conn.statements {
                self.insert(conn.id, &e.name, Arc::from(e.sql), e.truncated);
            }
        }
        // What was just read is on disk already (less the dead).
        self.dirty = false;
    }

    /// Statements (and text bytes) held.
    pub fn len(&self) -> (usize, usize) {
        (self.entries, self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The text of `name` on connection `id`, if the book has it.
    pub fn get(&self, id: &ConnId, name: &str) -> Option<(&Arc<str>, bool)> {
        self.conns
            .get(id)?
            .statements
            .get(name)
            .map(|(sql, t)| (sql, *t))
    }

    /// Keeps the statements `session` parsed since the last call, for the connection `fd` of
    /// process `pid`. Costs nothing unless the connection parsed a named statement.
    /// When a monitoring DSN is configured, an Execute of a statement whose text is unknown
    /// is looked up in PostgreSQL (once per operation; the answer comes back through
    /// [`Self::apply_answer`]).
    pub fn learn(&mut self, pid: u32, fd: u32, session: &mut PgSession) {
        if let Some(monitor) = &mut self.monitor {
            let latest = session.latest_ops();
            if latest.unknown_statement.is_some() {
                monitor.ask(pid, fd, latest.started_ns);
            }
        }
        if !session.has_prepared() {
            return;
        }
        if !self.enabled {
            session.take_prepared(|_, _, _| {});
            return;
        }
        // Resolved now rather than cached per connection: named Parses are rare (once per
        // statement per connection), and a cache would need every close and reopen of the
        // fd to stay right. A process that already exited is not worth keeping.
        let Some(id) = self.conn_id(pid, fd) else {
            session.take_prepared(|_, _, _| {});
            return;
        };
        let mut fresh: Vec<(String, Arc<str>, bool)> = Vec::new();
        session.take_prepared(|name, sql, truncated| {
            let normalized = herdwatch_protocol::fingerprint::fingerprint(sql).normalized;
            fresh.push((name.to_string(), Arc::from(normalized), truncated));
        });
        for (name, sql, truncated) in fresh {
            self.insert(id, &name, sql, truncated);
            self.learned += 1;
        }
    }

    /// A connection first seen mid-stream: teaches its session what the book knows of it.
    pub fn seed(&mut self, pid: u32, fd: u32, session: &mut PgSession) {
        if !self.pids.contains_key(&pid) {
            return;
        }
        let Some(id) = self.conn_id(pid, fd) else {
            return;
        };
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        for (name, (sql, truncated)) in &conn.statements {
            if session.learn_statement(name, sql.clone(), *truncated) {
                self.seeded += 1;
            }
        }
    }

    /// PostgreSQL's answer about the connection `session` belongs to: its text is learned
    /// (by the session, and by the book to survive a restart) when the answer can belong
    /// only to the latest operation, an Execute of a statement of unknown text.
    pub fn apply_answer(
        &mut self,
        answer: &super::statement_monitor::Answer,
        session: &mut PgSession,
    ) {
        use super::statement_monitor::{belongs_to_latest, normalised};
        let latest = session.latest_ops();
        let Some(name) = latest.unknown_statement.clone() else {
            return;
        };
        let matched = belongs_to_latest(
            answer.query_start_unix_us,
            crate::host::unix_minus_monotonic_ns(),
            latest.started_ns,
            latest.previous_started_ns,
        );
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        if !matched {
            monitor.stats.unmatched += 1;
            return;
        }
        let (text, truncated) = normalised(answer);
        let sql: Arc<str> = Arc::from(text);
        if session.learn_statement(&name, sql.clone(), truncated) {
            monitor.stats.learned += 1;
        }
        if self.enabled
            && let Some(id) = self.conn_id(answer.pid, answer.fd)
        {
            self.insert(id, &name, sql, truncated);
        }
    }

    fn insert(&mut self, id: ConnId, name: &str, sql: Arc<str>, truncated: bool) {
        let cost = name.len() + sql.len();
        if cost > MAX_BYTES / 16 {
            return; // one statement may not crowd out the rest
        }
        self.clock += 1;
        let clock = self.clock;
        let known = self
            .conns
            .get(&id)
            .and_then(|c| c.statements.get(name))
            .map(|(old, t)| (name.len() + old.len(), **old == *sql && *t == truncated));
        if let Some((_, true)) = known {
            if let Some(c) = self.conns.get_mut(&id) {
                c.touched = clock;
            }
            return;
        }
        let freed = known.map_or(0, |(old_cost, _)| old_cost);
        while !self.conns.is_empty()
            && (self.entries + usize::from(known.is_none()) > MAX_ENTRIES
                || self.bytes - freed + cost > MAX_BYTES)
        {
            // Full: the connection that learned least recently goes first (never `id`'s
            // statement being replaced, which `freed` already accounts).
            let Some(oldest) = self
                .conns
                .iter()
                .filter(|(k, _)| **k != id)
                .min_by_key(|(_, c)| c.touched)
                .map(|(k, _)| *k)
            else {
                return;
            };
            self.remove_conn(&oldest);
        }
        let conn = self.conns.entry(id).or_default();
        conn.touched = clock;
        if known.is_none() && conn.statements.len() >= MAX_PER_CONNECTION {
            return;
        }
        if conn.statements.is_empty() {
            *self.pids.entry(id.pid).or_default() += 1;
        }
        conn.statements.insert(name.to_string(), (sql, truncated));
        if known.is_none() {
            self.entries += 1;
        }
        self.bytes = self.bytes - freed + cost;
        self.dirty = true;
    }

    fn remove_conn(&mut self, id: &ConnId) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        self.entries -= conn.statements.len();
        self.bytes -= conn
            .statements
            .iter()
            .map(|(n, (s, _))| n.len() + s.len())
            .sum::<usize>();
        if !conn.statements.is_empty()
            && let Some(n) = self.pids.get_mut(&id.pid)
        {
            *n -= 1;
            if *n == 0 {
                self.pids.remove(&id.pid);
            }
        }
        self.dirty = true;
    }

    /// Drops the entries of processes that are gone or whose pid names another process now.
    pub fn prune_dead(&mut self) {
        let mut alive: HashMap<u32, Option<u64>> = HashMap::new();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let start = *alive
                .entry(id.pid)
                .or_insert_with(|| self.start_time(id.pid));
            if start != Some(id.start_time) {
                self.remove_conn(&id);
            }
        }
    }

    /// Writes the book when it changed and [`SAVE_EVERY`] has passed since the last write.
    pub fn save_if_due(&mut self, now: Instant) {
        if self.path.is_some()
            && self.dirty
            && self
                .last_save
                .is_none_or(|at| now.duration_since(at) >= SAVE_EVERY)
        {
            self.last_save = Some(now);
            self.save();
        }
    }

    /// Writes the book now (dead processes pruned first). A write that fails costs a warning
    /// and is tried again at the next save.
    pub fn save(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.prune_dead();
        let file = FileBook {
            version: VERSION,
            connections: self
                .conns
                .iter()
                .map(|(id, c)| FileConn {
                    id: *id,
                    statements: c
                        .statements
                        .iter()
                        .map(|(name, (sql, truncated))| FileEntry {
                            name: name.clone(),
                            sql: sql.to_string(),
                            truncated: *truncated,
                        })
                        .collect(),
                })
                .collect(),
        };
        match state_file::write_atomically(&path, &file) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!("statement book {}: {e}", path.display()),
        }
    }

    fn conn_id(&self, pid: u32, fd: u32) -> Option<ConnId> {
        let link = std::fs::read_link(
            self.proc_root
                .join(pid.to_string())
                .join("fd")
                .join(fd.to_string()),
        )
        .ok()?;
        let inode = socket_inode(link.to_str()?)?;
        Some(ConnId {
            pid,
            start_time: self.start_time(pid)?,
            inode,
        })
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        start_time_of(&stat)
    }
}

impl Drop for StatementBook {
    /// At shutdown: what this run learned is not lost even without an orderly stop.
    fn drop(&mut self) {
        if self.dirty {
            self.save();
        }
    }
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn start_time_of(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; starttime is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests;
