//! Per-fingerprint and per-route statistics, bounded: beyond the configured number of distinct
//! fingerprints or routes, new ones are counted under "other" so a cardinality explosion (a
//! query built with literals in its text, a crawler walking random URLs) cannot grow memory or
//! labels.

use rustc_hash::FxHashMap;

mod routes;
use routes::RouteMap;

use herdwatch_protocol::{
    fingerprint::{fingerprint, fnv1a64},
    postgres::{Outcome, QueryEvent},
    route::RouteGrouper,
};

use crate::{
    model::{
        FinishedQuery, Label, OTHER_ID, QueryEnd, QueryObs, QueryStart, QueryStats, RecordSink,
        RouteCalls, SiteCalls,
    },
    probes::python_code::CallSite,
};

/// Who issued a query, as the stitcher knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub route: Option<&'a Label>,
    pub site: Option<&'a CallSite>,
    /// Paired by the thread heuristic: the route is a guess.
    pub heuristic: bool,
}

const MAX_PIDS_PER_QUERY: usize = 16;
const MAX_ROUTES_PER_QUERY: usize = 16;
const MAX_SITES_PER_QUERY: usize = 8;
/// Finished queries waiting for the detectors; past this they are counted, not kept.
const OUTBOX_MAX: usize = 65_536;

/// The id of a statement known only by name (prepared before the agent saw its text).
fn prepared_id(name: &str) -> String {
    format!("{:016x}", fnv1a64(format!("prepared:{name}").as_bytes()))
}

/// Remembers `pid` among the most recent ones (workers get replaced; the new ones matter).
fn remember_pid(pids: &mut Vec<u32>, pid: u32) {
    if pids.last() == Some(&pid) {
        return;
    }
    if let Some(i) = pids.iter().position(|p| *p == pid) {
        pids.remove(i);
    } else if pids.len() == MAX_PIDS_PER_QUERY {
        pids.remove(0);
    }
    pids.push(pid);
}

/// Raw statement texts whose fingerprints are kept; past this the cache starts over. The same
/// parameterised statement repeats endlessly, so this turns tokenizing into a hash lookup.
const FINGERPRINT_CACHE: usize = 4096;

#[derive(Debug, Clone)]
struct Known {
    id: Label,
    summary: String,
    operation: String,
    normalized: String,
}

#[derive(Debug)]
pub struct Aggregates {
    /// Keyed by the text itself (shared with the session that decoded it): exact, and
    /// hashed eight bytes at a time rather than FNV's one.
    fingerprints: hashbrown::HashMap<std::sync::Arc<str>, Known, rustc_hash::FxBuildHasher>,
    /// The id of each statement known only by name, so a prepared statement executed by
    /// name (asyncpg's, after an agent restart) costs a lookup, not two formats and a hash
    /// per query (8 % of the agent's CPU under uvicorn load). Bounded like `fingerprints`.
    prepared_ids: FxHashMap<Box<str>, Label>,
    /// Cumulative query time per issuing process (its DB wait), for pool time shares.
    db_wait_by_pid: FxHashMap<u32, u64>,
    queries: FxHashMap<String, QueryStats>,
    routes: RouteMap,
    /// The pool (by name) of each pool process, so requests and queries are told apart by
    /// the service that served or issued them.
    pool_of_pid: FxHashMap<u32, Label>,
    /// The label of requests served outside any pool.
    no_pool: Label,
    /// Grouped route names, so each request's route is a shared [`Label`].
    route_names: rustc_hash::FxHashSet<Label>,
    route_scratch: String,
    max_queries: usize,
    max_routes: usize,
    grouper: RouteGrouper,
    /// Finished queries for the detectors, drained by the pipeline after each event.
    pub outbox: Vec<QueryObs>,
    /// Queries just sent (answers still to come), for the detectors likewise.
    pub starts: Vec<QueryStart>,
    /// Queries just answered (their requests maybe still to come), likewise.
    pub ends: Vec<QueryEnd>,
    pub outbox_dropped: u64,
    /// Subscribers to finished exchanges and queries (exporters).
    sinks: Vec<Box<dyn RecordSink>>,
}

impl Aggregates {
    /// New route patterns (a config reload): requests from now on are grouped by them; routes
    /// already counted keep their names (a series is never renamed under its counts).
    pub fn set_route_grouper(&mut self, grouper: RouteGrouper) {
        self.grouper = grouper;
    }

    pub fn new(max_queries: usize, max_routes: usize, grouper: RouteGrouper) -> Self {
        Self {
            fingerprints: hashbrown::HashMap::default(),
            prepared_ids: FxHashMap::default(),
            db_wait_by_pid: FxHashMap::default(),
            queries: FxHashMap::default(),
            routes: hashbrown::HashMap::default(),
            route_names: rustc_hash::FxHashSet::default(),
            route_scratch: String::new(),
            pool_of_pid: FxHashMap::default(),
            no_pool: Label::from(""),
            max_queries,
            max_routes,
            grouper,
            outbox: Vec::new(),
            starts: Vec::new(),
            ends: Vec::new(),
            outbox_dropped: 0,
            sinks: Vec::new(),
        }
    }

    /// Which pool each pool process belongs to (master and workers), by pool name.
    pub fn set_pools(&mut self, pool_of_pid: FxHashMap<u32, Label>) {
        self.pool_of_pid = pool_of_pid;
    }

    /// The pool `pid` belongs to, if any.
    pub fn pool_of(&self, pid: u32) -> Option<&Label> {
        self.pool_of_pid.get(&pid)
    }

    /// Hands every finished exchange and query to `sink` from now on.
    pub fn subscribe(&mut self, sink: Box<dyn RecordSink>) {
        self.sinks.push(sink);
    }

    /// Hands every finished exchange and query to `sinks` from now on; returns the
    /// subscribers they replace.
    pub fn replace_subscribers(
        &mut self,
        sinks: Vec<Box<dyn RecordSink>>,
    ) -> Vec<Box<dyn RecordSink>> {
        std::mem::replace(&mut self.sinks, sinks)
    }

    /// Whether a subscriber wants the queries of each exchange (spans).
    pub fn wants_query_spans(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_query_spans())
    }

    /// Tells the subscribers a pool is known under `name`.
    pub fn pool_found(
        &mut self,
        name: &str,
        pool: &crate::procs::Pool,
        master_cmdline: &dyn Fn() -> Vec<String>,
    ) {
        for sink in &mut self.sinks {
            sink.pool_found(name, pool, master_cmdline);
        }
    }

    /// Counts a finished query of connection `conn` (to `server_port`, if known).
    pub fn record_query(
        &mut self,
        conn: (u32, u32),
        server_port: Option<u16>,
        q: &QueryEvent,
        caller: Caller<'_>,
        in_flight_routes: Vec<Label>,
    ) {
        let id = self.count_query(conn.0, q, caller);
        if self.outbox.len() >= OUTBOX_MAX {
            self.outbox_dropped += 1;
            return;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        self.outbox.push(QueryObs {
            fingerprint: id,
            pid: conn.0,
            conn,
            server_port,
            started_ms: ms(q.started_ns),
            first_response_ms: q.first_response_ns.map(ms),
            finished_ms: ms(q.finished_ns.max(q.started_ns)),
            route: caller.route.cloned(),
            in_flight_routes,
            call_site: caller.site.cloned(),
        });
    }

    /// Counts the query under its fingerprint; returns the fingerprint id it was counted under.
    fn count_query(&mut self, pid: u32, q: &QueryEvent, caller: Caller<'_>) -> Label {
        let id = self.statement_id(q.sql.as_ref(), q.statement.as_deref());
        if let Some(entry) = self.queries.get_mut(&*id) {
            // The common case: a statement seen before. No allocation past the lookup.
            Self::count(entry, pid, q, caller);
            Self::charge(
                &mut self.db_wait_by_pid,
                &mut self.sinks,
                self.pool_of_pid.get(&pid).map(|p| &**p),
                entry,
                pid,
                q,
            );
            return id;
        }
        // A statement not counted before: its own entry while there is room (described only
        // then), else the overflow entry.
        let entry = if self.queries.len() >= self.max_queries {
            self.queries
                .entry(OTHER_ID.to_string())
                .or_insert_with(|| QueryStats {
                    id: OTHER_ID.into(),
                    summary: "other".into(),
                    operation: "OTHER".into(),
                    normalized: "(fingerprints beyond the configured limit)".into(),
                    ..Default::default()
                })
        } else {
            let (summary, operation, normalized, text_unknown) = self.describe(q);
            let id = id.to_string();
            self.queries
                .entry(id.clone())
                .or_insert_with(|| QueryStats {
                    id,
                    summary,
                    operation,
                    normalized,
                    text_unknown,
                    ..Default::default()
                })
        };
        Self::count(entry, pid, q, caller);
        Self::charge(
            &mut self.db_wait_by_pid,
            &mut self.sinks,
            self.pool_of_pid.get(&pid).map(|p| &**p),
            entry,
            pid,
            q,
        );
        Label::from(entry.id.as_str())
    }

    /// The query's time goes to its process's DB wait, and the query to the subscribers. An
    /// associated function over the fields it needs, so callers can hold `entry` meanwhile.
    fn charge(
        db_wait_by_pid: &mut FxHashMap<u32, u64>,
        sinks: &mut [Box<dyn RecordSink>],
        pool: Option<&str>,
        entry: &QueryStats,
        pid: u32,
        q: &QueryEvent,
    ) {
        let took = q.finished_ns.saturating_sub(q.started_ns);
        let finished = FinishedQuery {
            pool,
            operation: &entry.operation,
            summary: &entry.summary,
            sqlstate: q.sqlstate.as_deref(),
            duration_ns: took,
        };
        for sink in sinks {
            sink.query(&finished);
        }
        *db_wait_by_pid.entry(pid).or_default() += took;
    }

    fn count(entry: &mut QueryStats, pid: u32, q: &QueryEvent, caller: Caller<'_>) {
        let took = q.finished_ns.saturating_sub(q.started_ns);
        entry.calls += 1;
        entry.rows += q.rows;
        entry.total_ns += took;
        entry.max_ns = entry.max_ns.max(took);
        entry.latency.record(took);
        match q.outcome {
            Outcome::Ok => {}
            Outcome::Error => {
                entry.errors += 1;
                *entry
                    .errors_by_sqlstate
                    .entry(q.sqlstate.clone().unwrap_or_else(|| "unknown".into()))
                    .or_default() += 1;
            }
            Outcome::Aborted => entry.aborted += 1,
        }
        remember_pid(&mut entry.pids, pid);
        if caller.heuristic {
            entry.heuristic_calls += 1;
        }
        if let Some(route) = caller.route {
            if let Some(known) = entry.routes.iter_mut().find(|r| *r.route == **route) {
                known.calls += 1;
            } else if entry.routes.len() < MAX_ROUTES_PER_QUERY {
                entry.routes.push(RouteCalls {
                    route: route.to_string(),
                    calls: 1,
                });
            }
        }
        if let Some(site) = caller.site {
            if let Some(known) = entry.call_sites.iter_mut().find(|s| s.site == *site) {
                known.calls += 1;
            } else if entry.call_sites.len() < MAX_SITES_PER_QUERY {
                entry.call_sites.push(SiteCalls {
                    site: site.clone(),
                    calls: 1,
                });
            }
        }
    }

    /// The fingerprint of `sql`, computed once per distinct text (one probe on a hit).
    /// A query of connection `conn` was sent at `started_ns`: its start goes to the
    /// detectors now, under the fingerprint its answer will be counted under.
    pub fn note_start(
        &mut self,
        conn: (u32, u32),
        sql: Option<&std::sync::Arc<str>>,
        statement: Option<&str>,
        started_ns: u64,
    ) {
        if self.starts.len() >= OUTBOX_MAX {
            self.outbox_dropped += 1;
            return;
        }
        let fingerprint = self.counted_under(sql, statement);
        self.starts.push(QueryStart {
            fingerprint,
            pid: conn.0,
            conn,
            started_ms: started_ns as f64 / 1e6,
        });
    }

    /// A query of connection `conn` was answered: its end goes to the detectors now, even
    /// when its request is known only later (asyncio Tasks answer after their queries).
    pub fn note_end(&mut self, conn: (u32, u32), q: &QueryEvent) {
        if self.ends.len() >= OUTBOX_MAX {
            self.outbox_dropped += 1;
            return;
        }
        let fingerprint = self.counted_under(q.sql.as_ref(), q.statement.as_deref());
        self.ends.push(QueryEnd {
            fingerprint,
            pid: conn.0,
            conn,
            started_ms: q.started_ns as f64 / 1e6,
            finished_ms: q.finished_ns.max(q.started_ns) as f64 / 1e6,
        });
    }

    /// The fingerprint a statement's calls are counted under (`other` past the limit).
    fn counted_under(
        &mut self,
        sql: Option<&std::sync::Arc<str>>,
        statement: Option<&str>,
    ) -> Label {
        let id = self.statement_id(sql, statement);
        if self.queries.contains_key(&*id) || self.queries.len() < self.max_queries {
            id
        } else {
            Label::from(OTHER_ID)
        }
    }

    /// A statement's id: the fingerprint of its text, or, known only by name, its prepared id.
    fn statement_id(
        &mut self,
        sql: Option<&std::sync::Arc<str>>,
        statement: Option<&str>,
    ) -> Label {
        match sql {
            Some(sql) => Self::fingerprint_of(&mut self.fingerprints, sql).id.clone(),
            None => self.prepared_label(statement.unwrap_or_default()),
        }
    }

    /// How a statement counted for the first time is shown: (summary, operation, normalized
    /// text, whether its text is unknown — prepared before the agent saw it).
    fn describe(&mut self, q: &QueryEvent) -> (String, String, String, bool) {
        match (&q.sql, &q.statement) {
            (Some(sql), _) => {
                let known = Self::fingerprint_of(&mut self.fingerprints, sql);
                (
                    known.summary.clone(),
                    known.operation.clone(),
                    known.normalized.clone(),
                    false,
                )
            }
            (None, name) => {
                let name = name.as_deref().unwrap_or_default();
                (
                    format!("EXECUTE {name}"),
                    "EXECUTE".to_string(),
                    format!(
                        "EXECUTE {name} -- prepared before herdwatch started; text not seen yet"
                    ),
                    true,
                )
            }
        }
    }

    /// `prepared_id(name)` as a shared label, computed once per name.
    fn prepared_label(&mut self, name: &str) -> Label {
        if let Some(id) = self.prepared_ids.get(name) {
            return id.clone();
        }
        if self.prepared_ids.len() >= FINGERPRINT_CACHE {
            self.prepared_ids.clear();
        }
        let id = Label::from(prepared_id(name).as_str());
        self.prepared_ids.insert(name.into(), id.clone());
        id
    }

    fn fingerprint_of<'a>(
        cache: &'a mut hashbrown::HashMap<std::sync::Arc<str>, Known, rustc_hash::FxBuildHasher>,
        sql: &std::sync::Arc<str>,
    ) -> &'a Known {
        if cache.len() >= FINGERPRINT_CACHE && !cache.contains_key(&**sql) {
            cache.clear();
        }
        cache
            .raw_entry_mut()
            .from_key(&**sql)
            .or_insert_with(|| {
                let f = fingerprint(sql);
                let known = Known {
                    id: f.hex_id().into(),
                    summary: f.summary,
                    operation: f.operation,
                    normalized: f.normalized,
                };
                (sql.clone(), known)
            })
            .1
    }

    /// A span for `q`, counted just now (its fingerprint is the outbox's latest).
    pub fn query_span(
        &self,
        q: &QueryEvent,
        server_port: Option<u16>,
        site: Option<&CallSite>,
    ) -> Option<crate::model::QuerySpan> {
        let id = &self.outbox.last()?.fingerprint;
        let stats = self.queries.get(&**id)?;
        Some(crate::model::QuerySpan {
            summary: stats.summary.clone(),
            operation: stats.operation.clone(),
            started_ns: q.started_ns,
            finished_ns: q.finished_ns.max(q.started_ns),
            rows: q.rows,
            sqlstate: q.sqlstate.clone(),
            server_port,
            call_site: site.cloned(),
            normalized: self
                .sinks
                .iter()
                .any(|s| s.wants_query_text())
                .then(|| stats.normalized.clone()),
        })
    }

    /// Total time `pid`'s queries took since start.
    /// Processes with a DB wait total.
    pub fn db_wait_processes(&self) -> usize {
        self.db_wait_by_pid.len()
    }

    pub fn db_wait_of(&self, pid: u32) -> u64 {
        self.db_wait_by_pid.get(&pid).copied().unwrap_or(0)
    }

    /// Processes with a DB wait total (live ones only, once exits are forgotten).
    pub fn db_wait_pids(&self) -> usize {
        self.db_wait_by_pid.len()
    }

    /// Forgets an exited process's DB wait total.
    pub fn forget_pid(&mut self, pid: u32) {
        self.db_wait_by_pid.remove(&pid);
    }

    /// Fingerprints, most total time first.
    pub fn queries(&self) -> Vec<QueryStats> {
        let mut v: Vec<_> = self.queries.values().cloned().collect();
        v.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.id.cmp(&b.id)));
        v
    }
}

#[cfg(test)]
pub(crate) mod tests;
