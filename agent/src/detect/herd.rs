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
use crate::model::finding::{Evidence, FindingKind, RouteCopies, Severity, Subject};
use std::collections::{BTreeMap, HashSet, VecDeque};

use rustc_hash::FxHashMap;

use super::{
    QueryEnd, QueryObs, QueryStart,
    finding::{Report, Signal},
    naming::{QUERY_TEXT_CHARS, bounded, query_name},
};
use crate::model::{Label, QueryStats};

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
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
        let watching_since = *self.watching_since_ms.get_or_insert(now_ms);
        let baseline_ms = self.config.baseline_s * 1000;
        let mut signals = Vec::new();
        // The copies of every burst known, by connection: what a herd's requests run right
        // after their copy (a pool's reset, a second statement) bursts with it and is its
        // echo, not a herd of its own. Statements are judged oldest undecided start first, so
        // a burst is known before its echo is judged.
        let mut herd_copies = HerdCopies::default();
        for (fp, track) in &mut self.tracks {
            let starts = track.starts.make_contiguous();
            starts.sort_by_key(|s| s.at_ms);
            if let Some(b) = track.bursts.back() {
                note_copies(&mut herd_copies, fp, in_span(starts, *b));
            }
        }
        let mut order: Vec<(u64, Label)> = self
            .tracks
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
        for (_, fp) in &order {
            let Some(track) = self.tracks.get_mut(fp) else {
                continue;
            };
            let horizon = now_ms.saturating_sub(baseline_ms + 60_000);
            while track.starts.front().is_some_and(|s| s.at_ms < horizon) {
                track.starts.pop_front();
            }
            track.rate.forget_before(horizon);
            // An occurrence ends once its fingerprint has been quiet long enough that no burst
            // can still be pending; then the fingerprint is left alone until it runs again.
            let quiet_until = track.last_seen_ms
                + self.config.window_ms
                + self.config.settle_ms
                + LATE_MS
                + 2_000;
            if !track.fresh && now_ms > quiet_until {
                if track.active {
                    track.active = false;
                    signals.push(Signal::Ended {
                        kind: FindingKind::ThunderingHerd,
                        pattern: fp.to_string(),
                    });
                }
                continue;
            }
            track.fresh = false;
            let finished = std::mem::take(&mut track.finished);
            for s in track.starts.iter_mut().filter(|s| s.running) {
                s.took_ms = now_ms.saturating_sub(s.at_ms) as f64;
            }
            // Sorted by start in this tick's first pass; a running copy's elapsed time moves
            // no start.
            track.starts.make_contiguous();
            let (starts, _) = track.starts.as_slices();
            // Copies of the latest burst reported after it was decided (slow copies finish
            // late), and copies started while its copies still ran (caches per worker and
            // route refill as each gets its next request): they belong to it, not to a new
            // cluster or the next baseline. The burst is over once the database has been
            // done with it for `settle_ms`.
            if let Some(b) = track.bursts.back_mut() {
                let from = starts.partition_point(|s| s.at_ms <= b.last_ms);
                let mut busy_until = busy_until(starts, *b);
                let mut grew = false;
                for s in &starts[from..] {
                    if !joins(s.at_ms, *b, busy_until, &self.config) {
                        break;
                    }
                    b.last_ms = s.at_ms;
                    busy_until = busy_until.max(s.at_ms + s.took_ms as u64);
                    grew = true;
                }
                track.decided_until_ms = track.decided_until_ms.max(Some(b.last_ms));
                if (grew || finished) && track.active {
                    let span = *b;
                    let copies = in_span(starts, span);
                    let stats = queries.iter().find(|q| *q.id == **fp);
                    let all = with_copies(&track.route_copies, copies);
                    let report = describe(fp, copies, stats, &all, host, &to_unix);
                    signals.push(Signal::Ongoing(Box::new(report)));
                }
            }
            let late = !track.live;
            for cluster in
                closed_clusters(starts, track.decided_until_ms, &self.config, now_ms, late)
            {
                let (first, last) = cluster;
                // A wave decided in the same tick as the burst before it, started while that
                // burst's copies still ran: the same burst.
                if let Some(b) = track.bursts.back_mut()
                    && joins(
                        starts[first].at_ms,
                        *b,
                        busy_until(starts, *b),
                        &self.config,
                    )
                {
                    b.last_ms = b.last_ms.max(starts[last].at_ms);
                    track.decided_until_ms = Some(starts[last].at_ms);
                    continue;
                }
                let Some(first) = herd_begins(starts, cluster, track, &self.config, watching_since)
                else {
                    // Not (yet) a herd. Copies still running may join it until no copy can
                    // be pending any more; only then is the verdict final.
                    if now_ms >= starts[last].at_ms + self.config.settle_ms + LATE_MS {
                        track.decided_until_ms = Some(starts[last].at_ms);
                    }
                    continue;
                };
                track.decided_until_ms = Some(starts[last].at_ms);
                let copies = &starts[first..=last];
                if is_echo(&herd_copies, fp, copies) {
                    continue;
                }
                note_copies(&mut herd_copies, fp, copies);
                let span = Span {
                    first_ms: starts[first].at_ms,
                    last_ms: starts[last].at_ms,
                };
                // The previous burst is complete: its copies join the finding's totals.
                if let Some(prev) = track.bursts.back().copied() {
                    track.route_copies = with_copies(&track.route_copies, in_span(starts, prev));
                }
                if track.bursts.len() == MAX_BURSTS {
                    track.bursts.pop_front();
                }
                track.bursts.push_back(span);
                let stats = queries.iter().find(|q| *q.id == **fp);
                let all = with_copies(&track.route_copies, copies);
                let report = describe(fp, copies, stats, &all, host, &to_unix);
                signals.push(Signal::Onset(Box::new(report)));
                track.active = true;
            }
        }
        signals
    }
}

/// Remembers a burst's copies by connection (the latest start on each).
fn note_copies(herd_copies: &mut HerdCopies, fp: &Label, copies: &[Start]) {
    for c in copies.iter().filter(|c| !c.running) {
        let end = c.at_ms + c.took_ms as u64;
        let e = herd_copies
            .entry(c.conn)
            .or_insert((c.at_ms, end, fp.clone()));
        if c.at_ms >= e.0 {
            *e = (c.at_ms, end, fp.clone());
        }
    }
}

/// Whether most `copies` of `fp` started on their connections as a copy of another
/// statement's burst had just answered there (within `ECHO_GAP_MS`): the same requests going
/// on (a pool's reset, the handler's next statement), not a herd of their own.
fn is_echo(herd_copies: &HerdCopies, fp: &Label, copies: &[Start]) -> bool {
    let following = copies
        .iter()
        .filter(|s| {
            herd_copies.get(&s.conn).is_some_and(|(_, end, other)| {
                other != fp && *end <= s.at_ms + 1 && s.at_ms <= end + ECHO_GAP_MS
            })
        })
        .count();
    2 * following >= copies.len()
}

/// The latest answered copy of any burst on each connection: (start, end, statement).
type HerdCopies = FxHashMap<(u32, u32), (u64, u64, Label)>;

/// How soon after a burst copy answers the same request's next statement starts.
const ECHO_GAP_MS: u64 = 100;

/// Whether a copy started at `at_ms` belongs to burst `b`: it started while the burst's
/// copies still ran or within `settle_ms` of the last one, and the burst stays a burst — no
/// longer than `LATE_MS` from its first copy (a database slow enough to keep every copy
/// running must not chain the next cache expiry's burst onto this one).
fn joins(at_ms: u64, b: Span, busy_until: u64, config: &HerdConfig) -> bool {
    at_ms < b.last_ms.max(busy_until) + config.settle_ms && at_ms < b.first_ms + LATE_MS
}

/// When the database was last busy with a burst's copies (running ones count so far).
fn busy_until(starts: &[Start], span: Span) -> u64 {
    in_span(starts, span)
        .iter()
        .map(|s| s.at_ms + s.took_ms as u64)
        .max()
        .unwrap_or(span.last_ms)
}

/// The starts within a burst's span.
fn in_span(starts: &[Start], span: Span) -> &[Start] {
    let a = starts.partition_point(|s| s.at_ms < span.first_ms);
    let b = starts.partition_point(|s| s.at_ms <= span.last_ms);
    &starts[a..b.max(a)]
}

/// The route a copy is counted under.
fn route_label(s: &Start) -> &str {
    match (&s.route, s.attributed) {
        (Some(r), _) => r,
        (None, true) => NO_ROUTE,
        (None, false) => PENDING_ROUTE,
    }
}

/// `totals` plus one per copy under its route (bounded to `MAX_ROUTES` routes).
fn with_copies(totals: &BTreeMap<String, u64>, copies: &[Start]) -> BTreeMap<String, u64> {
    let mut out = totals.clone();
    for s in copies {
        let route = route_label(s);
        if let Some(n) = out.get_mut(route) {
            *n += 1;
        } else if out.len() < MAX_ROUTES {
            out.insert(route.to_string(), 1);
        }
    }
    out
}

/// Index ranges `[first, last]` of the clusters of `starts` (sorted by start time) that begin
/// after `decided_until_ms` and have closed by `now_ms`: the next start is `settle_ms` or more
/// later, or none has been reported by the time a copy as slow as the cluster's slowest would
/// have been.
fn closed_clusters(
    starts: &[Start],
    decided_until_ms: Option<u64>,
    config: &HerdConfig,
    now_ms: u64,
    reported_late: bool,
) -> Vec<(usize, usize)> {
    let begin = match decided_until_ms {
        Some(t) => starts.partition_point(|s| s.at_ms <= t),
        None => 0,
    };
    let mut out = Vec::new();
    let mut first = begin;
    while first < starts.len() {
        let mut last = first;
        let mut slowest = starts[first].took_ms;
        while last + 1 < starts.len()
            && starts[last + 1].at_ms < starts[last].at_ms + config.settle_ms
        {
            last += 1;
            slowest = slowest.max(starts[last].took_ms);
        }
        let followed = last + 1 < starts.len();
        // Starts seen as they are sent leave nothing to wait for; starts learnt from answers
        // may still be reported as late as the slowest copy takes.
        let late = if reported_late {
            (slowest.ceil() as u64).min(LATE_MS) + LATE_SLACK_MS
        } else {
            LATE_SLACK_MS
        };
        if !followed && now_ms < starts[last].at_ms + config.settle_ms + late {
            // Still open: a straggler may yet be reported. Starts seen as they are sent are
            // all here already, so a burst can be judged while it goes on (its later copies
            // join it); one learnt from answers waits.
            if !reported_late {
                out.push((first, last));
            }
            break;
        }
        out.push((first, last));
        first = last + 1;
    }
    out
}

/// Whether the closed cluster `[first, last]` is a herd, and if so where it begins: at its
/// first window with `min_copies` connections, so a start of the ordinary trickle just before
/// the copies is not its onset.
fn herd_begins(
    starts: &[Start],
    (first, last): (usize, usize),
    track: &Track,
    config: &HerdConfig,
    watching_since_ms: u64,
) -> Option<usize> {
    let cluster = &starts[first..=last];
    let slowest = cluster.iter().map(|s| s.took_ms).fold(0.0, f64::max);
    // A burst's stragglers are requests that arrived while the first copies ran; a stream
    // lasting much longer than its queries is load, not a burst.
    let span_ms = cluster[cluster.len() - 1].at_ms - cluster[0].at_ms;
    if span_ms as f64 > config.window_ms as f64 + 2.0 * slowest {
        return None;
    }
    // The densest window: most distinct connections starting within `window_ms`.
    let mut densest = (0usize, 0usize);
    // The burst begins at the first window crowded enough to be one.
    let mut begin = None;
    let mut end = 0;
    for w in 0..cluster.len() {
        end = end.max(w);
        while end + 1 < cluster.len()
            && cluster[end + 1].at_ms <= cluster[w].at_ms + config.window_ms
        {
            end += 1;
        }
        let conns: HashSet<(u32, u32)> = cluster[w..=end].iter().map(|s| s.conn).collect();
        if begin.is_none() && conns.len() >= config.min_copies {
            begin = Some(w);
        }
        densest = densest.max((conns.len(), end + 1 - w));
    }
    let (conns, copies) = densest;
    let begin = begin?;
    if conns < config.min_copies {
        return None;
    }
    // Baseline: the fingerprint's other starts over the preceding `baseline_s`, or over what
    // was watched of it (steady load that began before the agent shows in any stretch of it).
    let t0 = cluster[0].at_ms;
    let baseline_ms = config.baseline_s * 1000;
    let observed_ms = t0
        .saturating_sub(watching_since_ms)
        .clamp(config.window_ms, baseline_ms.max(config.window_ms));
    // Every start counts, fast ones included (a statement that only got slow keeps its rate).
    let in_known = |at: u64| {
        track
            .bursts
            .iter()
            .any(|b| at + RATE_BUCKET_MS > b.first_ms && at <= b.last_ms)
    };
    let before = track
        .rate
        .count(t0.saturating_sub(observed_ms), t0, in_known);
    let per_window = before as f64 * config.window_ms as f64 / observed_ms as f64;
    if (copies as f64) < config.burst_factor * per_window {
        return None;
    }
    let wasted: f64 = cluster[begin + 1..].iter().map(|s| s.took_ms).sum();
    (wasted >= config.min_wasted_ms).then_some(first + begin)
}

fn describe(
    fp: &str,
    copies: &[Start],
    stats: Option<&QueryStats>,
    all_route_copies: &BTreeMap<String, u64>,
    host: &str,
    to_unix: &impl Fn(u64) -> u64,
) -> Report {
    let conns: HashSet<(u32, u32)> = copies.iter().map(|s| s.conn).collect();
    let pids: HashSet<u32> = copies.iter().map(|s| s.pid).collect();
    let total_ms: f64 = copies.iter().map(|s| s.took_ms).sum();
    let first_took = copies.first().map(|s| s.took_ms).unwrap_or(0.0);
    let duplicates_ms = total_ms - first_took;
    // This burst's copies per route: the route whose request issued each copy.
    // and the line it was issued from (the first copy's that has one).
    let mut per_route: BTreeMap<&str, (u64, Option<String>)> = BTreeMap::new();
    for s in copies {
        let entry = per_route.entry(route_label(s)).or_default();
        entry.0 += 1;
        if entry.1.is_none() {
            entry.1 = s.call_site.as_ref().map(|c| c.to_string());
        }
    }
    let mut by_count: Vec<(&str, (u64, Option<String>))> = per_route.into_iter().collect();
    by_count.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    let route_copies: Vec<RouteCopies> = by_count
        .iter()
        .map(|(route, (n, site))| RouteCopies {
            route: route.to_string(),
            copies: *n,
            call_site: site.clone(),
        })
        .collect();
    let routes: Vec<String> = all_route_copies
        .keys()
        .filter(|r| *r != NO_ROUTE && *r != PENDING_ROUTE)
        .cloned()
        .collect();
    // A person reads the statement's text and id; the summary stays a label only.
    let name = query_name(fp, stats.map_or("", |q| q.normalized.as_str()));
    let first_ms = copies.first().map_or(0, |s| s.at_ms);
    let span_ms = copies.last().map_or(0, |s| s.at_ms) - first_ms;
    let mean_ms = total_ms / copies.len().max(1) as f64;
    let route_text = by_count
        .iter()
        .map(|(r, (n, site))| match site {
            Some(site) => format!("{r} ×{n} (issued at {site})"),
            None => format!("{r} ×{n}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Report {
        kind: FindingKind::ThunderingHerd,
        pattern: fp.to_string(),
        severity: if duplicates_ms >= 10_000.0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        subject: Subject {
            host: host.to_string(),
            query_summary: stats.map(|q| q.summary.clone()),
            query_text: stats.map(|q| bounded(&q.normalized, QUERY_TEXT_CHARS)),
            fingerprint: Some(fp.to_string()),
            routes: routes.clone(),
            route_copies,
            ..Subject::default()
        },
        evidence: vec![
            Evidence::new("concurrent_copies", copies.len() as f64, "queries"),
            Evidence::new("distinct_connections", conns.len() as f64, "connections"),
            Evidence::new("distinct_processes", pids.len() as f64, "processes"),
            Evidence::new("start_spread", span_ms as f64, "ms"),
            Evidence::new("mean_duration", mean_ms, "ms"),
            Evidence::new("db_time_on_duplicates", duplicates_ms, "ms"),
            Evidence::new("routes_issuing", routes.len() as f64, "routes"),
        ],
        root_cause: format!(
            "{} copies of {name} started within {span_ms} ms on {} connections in {} \
             processes (copies by route: {route_text}): every worker missed the same cache \
             entry at once and ran the same query ({mean_ms:.0} ms each, {:.1} s of database \
             time on duplicates).",
            copies.len(),
            conns.len(),
            pids.len(),
            duplicates_ms / 1000.0
        ),
        prevention: format!(
            "Single-flight the cache refill: one lock per cache key so one worker runs \
             {name} while the others wait for (or are served the stale) result; add jitter \
             to the expiry so workers do not miss together."
        ),
        remediation: "Put the refill behind a per-key lock (advisory lock, Redis SET NX, or an \
             in-process future shared by requests) and serve stale while refreshing. Killing the \
             query only hides it until the next expiry."
            .to_string(),
        annotations: Vec::new(),
        onset_unix_ms: to_unix(first_ms),
    }
}

#[cfg(test)]
mod tests;
