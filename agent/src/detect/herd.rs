//! Thundering herd: the same query fingerprint started by many connections at once, standing
//! out against that fingerprint's own recent rate.
//!
//! Steady load also runs the same query on several workers at once; what makes a herd is the
//! burst. The starts of one fingerprint are grouped into clusters separated by quiet gaps of
//! at least `settle_ms` (the cache is filled: nobody runs it any more). A closed cluster is a
//! herd when its densest `window_ms` holds ≥ `min_copies` distinct connections, at least
//! `burst_factor` times the fingerprint's start rate over the preceding `baseline_s` (earlier
//! bursts excluded, so a herd that recurs every cache expiry keeps qualifying), and the whole
//! cluster is short — about as long as the copies take, since the stragglers are requests that
//! arrived while the refill ran. A stream that never falls quiet (every worker running the
//! same slow query back to back) never closes, or closes far too long to be a burst. Queries
//! faster than `min_query_ms`, and bursts whose duplicate copies cost less than
//! `min_wasted_ms` of database time, are ignored: duplicated cheap work is not what pegs a
//! database.
//!
//! Each burst is one occurrence of the fingerprint's finding, decided as soon as the quiet gap
//! has passed: no full baseline is needed first (a burst right after the agent starts is
//! judged against what was seen so far), so the first burst is reported within about
//! `settle_ms` plus the copies' duration of its last copy.
use std::collections::{BTreeMap, HashSet, VecDeque};

use rustc_hash::FxHashMap;

use super::{QueryEnd, QueryObs, QueryStart, finding::Signal};
use crate::model::{FindingKind, Label, QueryStats};

mod bursts;
mod report;

use bursts::{
    HerdCopies, busy_of, closed_clusters, herd_begins, in_span, is_echo, joins, note_copies,
};
use report::{describe, with_copies};

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HerdConfig {
    pub min_copies: usize,
    pub window_ms: u64,
    pub min_query_ms: f64,
    pub burst_factor: f64,
    pub baseline_s: u64,
    /// Database time a burst must spend on duplicate copies to be worth a finding.
    pub min_wasted_ms: f64,
    /// The quiet gap (no start of the fingerprint) that ends a burst: the cache is filled.
    /// Steady saturation — every worker running the same slow query back to back — never
    /// falls quiet, so it is never a burst. Also how long a finding waits after a burst's last
    /// copy before it is reported.
    pub settle_ms: u64,
}

impl Default for HerdConfig {
    fn default() -> Self {
        Self {
            min_copies: 4,
            window_ms: 250,
            min_query_ms: 10.0,
            burst_factor: 4.0,
            baseline_s: 30,
            min_wasted_ms: 1000.0,
            settle_ms: 300,
        }
    }
}

#[derive(Debug, Clone)]
struct Start {
    at_ms: u64,
    /// How long it took; while it runs, how long it has run so far (a lower bound).
    took_ms: f64,
    /// Still waiting for its answer (seen sent, not yet finished).
    running: bool,
    conn: (u32, u32),
    pid: u32,
    /// The route whose request issued the copy, as the pipeline attributed it.
    route: Option<Label>,
    /// The pipeline has said which request issued it (`route` None then means none).
    attributed: bool,
    call_site: Option<crate::probes::python_code::CallSite>,
}

/// A reported burst: its first and last start.
#[derive(Debug, Clone, Copy)]
struct Span {
    first_ms: u64,
    last_ms: u64,
}

#[derive(Debug, Default)]
struct Track {
    starts: VecDeque<Start>,
    fresh: bool,
    /// Bursts already reported, newest last: excluded from later baselines.
    bursts: VecDeque<Span>,
    /// Starts at or before this were in a cluster already decided (herd or not).
    decided_until_ms: Option<u64>,
    active: bool,
    last_seen_ms: u64,
    /// Copies per route over every reported burst but the latest (bounded): the routes the
    /// finding names are exactly those whose requests issued a copy.
    route_copies: BTreeMap<String, u64>,
    /// Its starts arrive as they are sent: no copy can be reported late.
    live: bool,
    /// Every start of the statement, fast ones included: its ordinary rate. A statement
    /// slowed down by someone else's herd keeps its rate; a herd's copies raise it.
    rate: StartRate,
    /// A copy finished since the last tick (its duration, route and call site are known now).
    finished: bool,
}

const MAX_ROUTES: usize = 32;

/// Starts counted per `RATE_BUCKET_MS`, kept as (bucket, count) for buckets with starts.
#[derive(Debug, Default)]
struct StartRate {
    buckets: VecDeque<(u64, u32)>,
}

const RATE_BUCKET_MS: u64 = 50;

impl StartRate {
    fn add(&mut self, at_ms: u64) {
        let bucket = at_ms / RATE_BUCKET_MS;
        // Starts arrive nearly in order: the bucket is at the back, or close to it.
        match self.buckets.iter().rposition(|(b, _)| *b <= bucket) {
            Some(i) if self.buckets[i].0 == bucket => self.buckets[i].1 += 1,
            Some(i) => self.buckets.insert(i + 1, (bucket, 1)),
            None => self.buckets.push_front((bucket, 1)),
        }
    }

    fn forget_before(&mut self, ms: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(b, _)| b * RATE_BUCKET_MS < ms)
        {
            self.buckets.pop_front();
        }
    }

    /// Starts in `[from_ms, to_ms)` outside the buckets `skip` says are a burst's.
    fn count(&self, from_ms: u64, to_ms: u64, skip: impl Fn(u64) -> bool) -> u64 {
        self.buckets
            .iter()
            .filter(|(b, _)| {
                let at = b * RATE_BUCKET_MS;
                at >= from_ms && at + RATE_BUCKET_MS <= to_ms && !skip(at)
            })
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

const MAX_STARTS: usize = 4096;
/// Longest a start may wait to be reported (queries are seen when they finish): a cluster is
/// decided once a copy as slow as its slowest (capped here) would have been reported.
const LATE_MS: u64 = 3_000;
/// Scheduling and delivery jitter between a query's end and the detector seeing it.
const LATE_SLACK_MS: u64 = 100;
const MAX_BURSTS: usize = 16;
const MAX_TRACKS: usize = 1024;
/// Copies without a route: outside any traced request, or not attributed.
const NO_ROUTE: &str = "(no traced request)";
/// Copies whose request is not known yet (still running, or their asyncio Task has not
/// answered yet): the finding is updated as they are.
const PENDING_ROUTE: &str = "(request not known yet)";

#[derive(Debug)]
pub struct HerdDetector {
    config: HerdConfig,
    tracks: FxHashMap<Label, Track>,
    watching_since_ms: Option<u64>,
    proxies: HashSet<u32>,
}

impl HerdDetector {
    pub fn new(config: HerdConfig) -> Self {
        Self {
            config,
            tracks: FxHashMap::default(),
            watching_since_ms: None,
            proxies: HashSet::new(),
        }
    }

    /// New thresholds (a config reload); tracks and the baseline clock are kept.
    pub fn reconfigure(&mut self, config: HerdConfig) {
        self.config = config;
    }

    /// Connection poolers: their server-side copies of client queries are not more copies.
    pub fn set_proxies(&mut self, pids: impl Iterator<Item = u32>) {
        self.proxies = pids.collect();
    }

    /// A query was sent: it counts as a copy from now on, running, so a herd is seen while
    /// its copies still run rather than after the slowest has finished.
    pub fn on_query_start(&mut self, q: &QueryStart) {
        if self.proxies.contains(&q.pid) {
            return;
        }
        let track = self.track(&q.fingerprint);
        if track.starts.len() == MAX_STARTS {
            track.starts.pop_front();
        }
        let at_ms = q.started_ms as u64;
        track.starts.push_back(Start {
            at_ms,
            took_ms: 0.0,
            running: true,
            conn: q.conn,
            pid: q.pid,
            route: None,
            attributed: false,
            call_site: None,
        });
        track.live = true;
        track.rate.add(at_ms);
        track.fresh = true;
        track.last_seen_ms = track.last_seen_ms.max(at_ms);
    }

    /// A query answered (its request may not be known yet): a copy's duration is known from
    /// here on, and a start that answered faster than `min_query_ms` was never a copy.
    pub fn on_query_end(&mut self, q: &QueryEnd) {
        if self.proxies.contains(&q.pid) {
            return;
        }
        let Some(track) = self.tracks.get_mut(&q.fingerprint) else {
            return;
        };
        let at_ms = q.started_ms as u64;
        let Some(i) = track
            .starts
            .iter()
            .rposition(|s| s.running && s.conn == q.conn && s.at_ms == at_ms)
        else {
            return;
        };
        let took_ms = q.finished_ms - q.started_ms;
        if took_ms < self.config.min_query_ms {
            track.starts.remove(i);
        } else if let Some(s) = track.starts.get_mut(i) {
            s.running = false;
            s.took_ms = took_ms;
            track.finished = true;
            track.fresh = true;
        }
    }

    /// A query with its request: the copy learns its route and call site. For statements
    /// whose starts were not seen, the copy is known from here.
    pub fn on_query(&mut self, q: &QueryObs) {
        if self.proxies.contains(&q.pid) {
            return;
        }
        let took_ms = q.finished_ms - q.started_ms;
        let at_ms = q.started_ms as u64;
        let min_query_ms = self.config.min_query_ms;
        if let Some(track) = self.tracks.get_mut(&q.fingerprint)
            && track.live
        {
            // Seen sent (and maybe answered): only who issued it is news.
            let seen = track
                .starts
                .iter()
                .rposition(|s| s.conn == q.conn && s.at_ms == at_ms);
            if took_ms < min_query_ms {
                if let Some(i) = seen {
                    track.starts.remove(i);
                }
            } else if let Some(s) = seen.and_then(|i| track.starts.get_mut(i)) {
                s.running = false;
                s.took_ms = took_ms;
                s.route = q.route.clone();
                s.attributed = true;
                s.call_site = q.call_site.clone();
                track.finished = true;
                track.fresh = true;
            }
            return;
        }
        if took_ms < min_query_ms {
            // Not a copy, but part of the statement's ordinary rate.
            if let Some(track) = self.tracks.get_mut(&q.fingerprint) {
                track.rate.add(at_ms);
            }
            return;
        }
        let track = self.track(&q.fingerprint);
        track.rate.add(at_ms);
        if track.starts.len() == MAX_STARTS {
            track.starts.pop_front();
        }
        track.starts.push_back(Start {
            at_ms,
            took_ms,
            running: false,
            conn: q.conn,
            pid: q.pid,
            route: q.route.clone(),
            attributed: true,
            call_site: q.call_site.clone(),
        });
        track.fresh = true;
        track.last_seen_ms = track.last_seen_ms.max(at_ms);
    }

    /// The fingerprint's track, made room for within `MAX_TRACKS`.
    fn track(&mut self, fingerprint: &Label) -> &mut Track {
        if self.tracks.len() >= MAX_TRACKS && !self.tracks.contains_key(fingerprint) {
            // Keep the bound: forget the fingerprint quiet the longest.
            if let Some(k) = self
                .tracks
                .iter()
                .min_by_key(|(_, t)| t.last_seen_ms)
                .map(|(k, _)| k.clone())
            {
                self.tracks.remove(&k);
            }
        }
        self.tracks.entry(fingerprint.clone()).or_default()
    }

    /// Evaluates fingerprints with new queries. `now_ms` is on the queries' clock; `to_unix`
    /// converts it to wall time.
    pub fn tick(
        &mut self,
        now_ms: u64,
        queries: &[QueryStats],
        host: &str,
        to_unix: impl Fn(u64) -> u64,
    ) -> Vec<Signal> {
        let ctx = TickContext {
            now_ms,
            watching_since: *self.watching_since_ms.get_or_insert(now_ms),
            config: &self.config,
            queries,
            host,
            to_unix: &to_unix,
        };
        let mut signals = Vec::new();
        let (mut herd_copies, order) = judging_order(&mut self.tracks);
        for (_, fp) in &order {
            let Some(track) = self.tracks.get_mut(fp) else {
                continue;
            };
            ctx.judge(fp, track, &mut herd_copies, &mut signals);
        }
        signals
    }
}

/// The copies of every burst known, by connection, and the fingerprints in the order they are
/// judged. What a herd's requests run right after their copy (a pool's reset, a second
/// statement) bursts with it and is its echo, not a herd of its own. Statements are judged
/// oldest undecided start first, so a burst is known before its echo is judged.
fn judging_order(tracks: &mut FxHashMap<Label, Track>) -> (HerdCopies, Vec<(u64, Label)>) {
    let mut herd_copies = HerdCopies::default();
    for (fp, track) in tracks.iter_mut() {
        let starts = track.starts.make_contiguous();
        starts.sort_by_key(|s| s.at_ms);
        if let Some(b) = track.bursts.back() {
            note_copies(&mut herd_copies, fp, in_span(starts, *b));
        }
    }
    let mut order: Vec<(u64, Label)> = tracks
        .iter()
        .map(|(fp, t)| {
            let undecided = t
                .starts
                .iter()
                .map(|s| s.at_ms)
                .filter(|at| t.decided_until_ms.is_none_or(|d| *at > d))
                .min()
                .unwrap_or(u64::MAX);
            (undecided, fp.clone())
        })
        .collect();
    order.sort();
    (herd_copies, order)
}

/// What one tick judges every fingerprint with.
struct TickContext<'a, F: Fn(u64) -> u64> {
    now_ms: u64,
    watching_since: u64,
    config: &'a HerdConfig,
    queries: &'a [QueryStats],
    host: &'a str,
    to_unix: &'a F,
}

impl<F: Fn(u64) -> u64> TickContext<'_, F> {
    /// Judges one fingerprint's starts: ends a quiet occurrence, grows the latest burst with
    /// late copies, and reports new bursts.
    fn judge(
        &self,
        fp: &Label,
        track: &mut Track,
        herd_copies: &mut HerdCopies,
        signals: &mut Vec<Signal>,
    ) {
        let horizon = self
            .now_ms
            .saturating_sub(self.config.baseline_s * 1000 + 60_000);
        while track.starts.front().is_some_and(|s| s.at_ms < horizon) {
            track.starts.pop_front();
        }
        track.rate.forget_before(horizon);
        // An occurrence ends once its fingerprint has been quiet long enough that no burst
        // can still be pending; then the fingerprint is left alone until it runs again.
        let quiet_until =
            track.last_seen_ms + self.config.window_ms + self.config.settle_ms + LATE_MS + 2_000;
        if !track.fresh && self.now_ms > quiet_until {
            if track.active {
                track.active = false;
                signals.push(Signal::Ended {
                    kind: FindingKind::ThunderingHerd,
                    pattern: fp.to_string(),
                });
            }
            return;
        }
        track.fresh = false;
        let finished = std::mem::take(&mut track.finished);
        for s in track.starts.iter_mut().filter(|s| s.running) {
            s.took_ms = self.now_ms.saturating_sub(s.at_ms) as f64;
        }
        // Sorted by start in this tick's first pass; a running copy's elapsed time moves
        // no start.
        track.starts.make_contiguous();
        self.grow_latest_burst(fp, track, finished, signals);
        self.judge_clusters(fp, track, herd_copies, signals);
    }

    /// Copies of the latest burst reported after it was decided (slow copies finish late),
    /// and copies started while its copies still ran (caches per worker and route refill as
    /// each gets its next request): they belong to it, not to a new cluster or the next
    /// baseline. The burst is over once the database has been done with it for `settle_ms`.
    fn grow_latest_burst(
        &self,
        fp: &Label,
        track: &mut Track,
        finished: bool,
        signals: &mut Vec<Signal>,
    ) {
        let (starts, _) = track.starts.as_slices();
        let Some(b) = track.bursts.back_mut() else {
            return;
        };
        let from = starts.partition_point(|s| s.at_ms <= b.last_ms);
        let mut busy = busy_of(starts, *b, self.config);
        let mut grew = false;
        for s in &starts[from..] {
            if !joins(s.at_ms, *b, busy, self.config) {
                break;
            }
            b.last_ms = s.at_ms;
            busy.until = busy.until.max(s.at_ms + s.took_ms as u64);
            grew = true;
        }
        track.decided_until_ms = track.decided_until_ms.max(Some(b.last_ms));
        if (grew || finished) && track.active {
            let copies = in_span(starts, *b);
            let report = self.describe(fp, copies, &track.route_copies);
            signals.push(Signal::Ongoing(Box::new(report)));
        }
    }

    /// Decides the clusters closed since the last decision: each one a herd (a new
    /// occurrence), part of the burst before it, or not a herd.
    fn judge_clusters(
        &self,
        fp: &Label,
        track: &mut Track,
        herd_copies: &mut HerdCopies,
        signals: &mut Vec<Signal>,
    ) {
        let (starts, _) = track.starts.as_slices();
        let late = !track.live;
        let config = self.config;
        for cluster in closed_clusters(starts, track.decided_until_ms, config, self.now_ms, late) {
            let (first, last) = cluster;
            // A wave decided in the same tick as the burst before it, started while that
            // burst's copies still ran: the same burst.
            if let Some(b) = track.bursts.back_mut()
                && joins(starts[first].at_ms, *b, busy_of(starts, *b, config), config)
            {
                b.last_ms = b.last_ms.max(starts[last].at_ms);
                track.decided_until_ms = Some(starts[last].at_ms);
                continue;
            }
            let Some(first) = herd_begins(starts, cluster, track, config, self.watching_since)
            else {
                // Not (yet) a herd. Copies still running may join it until no copy can
                // be pending any more; only then is the verdict final.
                if self.now_ms >= starts[last].at_ms + config.settle_ms + LATE_MS {
                    track.decided_until_ms = Some(starts[last].at_ms);
                }
                continue;
            };
            track.decided_until_ms = Some(starts[last].at_ms);
            let copies = &starts[first..=last];
            if is_echo(herd_copies, fp, copies) {
                continue;
            }
            note_copies(herd_copies, fp, copies);
            // The previous burst is complete: its copies join the finding's totals.
            if let Some(prev) = track.bursts.back().copied() {
                track.route_copies = with_copies(&track.route_copies, in_span(starts, prev));
            }
            if track.bursts.len() == MAX_BURSTS {
                track.bursts.pop_front();
            }
            track.bursts.push_back(Span {
                first_ms: starts[first].at_ms,
                last_ms: starts[last].at_ms,
            });
            let report = self.describe(fp, copies, &track.route_copies);
            signals.push(Signal::Onset(Box::new(report)));
            track.active = true;
        }
    }

    /// The finding for `copies` of `fp`, with the copies of earlier bursts by route.
    fn describe(
        &self,
        fp: &Label,
        copies: &[Start],
        earlier: &BTreeMap<String, u64>,
    ) -> super::finding::Report {
        let stats = self.queries.iter().find(|q| *q.id == **fp);
        let all = with_copies(earlier, copies);
        describe(fp, copies, stats, &all, self.host, self.to_unix)
    }
}

#[cfg(test)]
mod tests;
