//! Thundering herd: the same query fingerprint started by many connections at once, standing
//! out against that fingerprint's own recent rate.
//!
//! Steady load also runs the same query on several workers at once; what makes a herd is the
//! burst: ≥ `min_copies` distinct connections within `window_ms`, at least `burst_factor` times
//! the fingerprint's start rate over the preceding `baseline_s` (earlier bursts excluded, so a
//! herd that recurs every cache expiry keeps qualifying). Queries faster than `min_query_ms`,
//! and bursts whose duplicate copies cost less than `min_wasted_ms` of database time, are
//! ignored: duplicated cheap work is not what pegs a database.
use crate::pipeline::aggregates::Label;
use std::collections::{BTreeSet, HashSet, VecDeque};

use rustc_hash::FxHashMap;

use super::{
    QueryObs,
    finding::{Evidence, FindingKind, Report, Severity, Signal, Subject},
};
use crate::pipeline::aggregates::QueryStats;

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
    /// After a burst the rate must fall back (the cache is filled): its start rate over this
    /// long after the window stays below the burst's by `burst_factor`. Steady saturation —
    /// every worker running the same slow query back to back — never falls back.
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
            settle_ms: 2000,
        }
    }
}

#[derive(Debug, Clone)]
struct Start {
    at_ms: u64,
    took_ms: f64,
    conn: (u32, u32),
    pid: u32,
    route: Option<Label>,
    in_flight_routes: Vec<Label>,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    first_ms: u64,
    last_ms: u64,
}

#[derive(Debug, Default)]
struct Track {
    starts: VecDeque<Start>,
    fresh: bool,
    /// Bursts already reported, newest last.
    bursts: VecDeque<Span>,
    active: bool,
    last_seen_ms: u64,
    /// Every route seen issuing (or waiting beside) a copy, across bursts (bounded): a
    /// burst's own copies need not touch every endpoint that issues the query.
    routes: BTreeSet<String>,
}

const MAX_ROUTES: usize = 32;

const MAX_STARTS: usize = 4096;
/// How long after a start its query may still be reported (it is seen when it finishes).
const LATE_MS: u64 = 3_000;
const MAX_BURSTS: usize = 16;
const MAX_TRACKS: usize = 1024;

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

    pub fn on_query(&mut self, q: &QueryObs) {
        if self.proxies.contains(&q.pid) {
            return;
        }
        let took_ms = q.finished_ms - q.started_ms;
        if took_ms < self.config.min_query_ms {
            return;
        }
        if self.tracks.len() >= MAX_TRACKS && !self.tracks.contains_key(&q.fingerprint) {
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
        let track = self.tracks.entry(q.fingerprint.clone()).or_default();
        if track.starts.len() == MAX_STARTS {
            track.starts.pop_front();
        }
        let at_ms = q.started_ms as u64;
        track.starts.push_back(Start {
            at_ms,
            took_ms,
            conn: q.conn,
            pid: q.pid,
            route: q.route.clone(),
            in_flight_routes: q.in_flight_routes.clone(),
        });
        track.fresh = true;
        track.last_seen_ms = track.last_seen_ms.max(at_ms);
        for r in q.route.iter().chain(&q.in_flight_routes) {
            if track.routes.len() < MAX_ROUTES && !track.routes.contains(&**r) {
                track.routes.insert(r.to_string());
            }
        }
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
        // Queries are seen when they finish: leave slow ones time to report their starts.
        let settled = now_ms.saturating_sub(LATE_MS);
        let mut signals = Vec::new();
        for (fp, track) in &mut self.tracks {
            let horizon = now_ms.saturating_sub(baseline_ms + 60_000);
            while track.starts.front().is_some_and(|s| s.at_ms < horizon) {
                track.starts.pop_front();
            }
            // Windows become decidable settle + LATE after they end: keep evaluating a
            // fingerprint that long after its latest start, then leave it alone.
            let decidable_until = track.last_seen_ms
                + self.config.window_ms
                + self.config.settle_ms
                + LATE_MS
                + 2_000;
            if !track.fresh && now_ms > decidable_until {
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
            track.starts.make_contiguous().sort_by_key(|s| s.at_ms);
            let (starts, _) = track.starts.as_slices();
            let mut extended_latest = false;
            for (first, last) in
                qualifying_windows(starts, &track.bursts, &self.config, watching_since, settled)
            {
                let span = Span {
                    first_ms: starts[first].at_ms,
                    last_ms: starts[last].at_ms,
                };
                let w = self.config.window_ms;
                match track
                    .bursts
                    .iter_mut()
                    .rposition(|b| span.first_ms <= b.last_ms + w && span.last_ms + w >= b.first_ms)
                {
                    Some(i) => {
                        let b = &mut track.bursts[i];
                        b.first_ms = b.first_ms.min(span.first_ms);
                        b.last_ms = b.last_ms.max(span.last_ms);
                        if i + 1 == track.bursts.len() {
                            extended_latest = true;
                        }
                    }
                    None => {
                        if track.bursts.len() == MAX_BURSTS {
                            track.bursts.pop_front();
                        }
                        track.bursts.push_back(span);
                        let stats = queries.iter().find(|q| *q.id == **fp);
                        let report =
                            describe(fp, starts, span, stats, &track.routes, host, &to_unix);
                        signals.push(Signal::Onset(Box::new(report)));
                        track.active = true;
                    }
                }
            }
            if extended_latest
                && track.active
                && let Some(span) = track.bursts.back().copied()
            {
                let stats = queries.iter().find(|q| *q.id == **fp);
                let report = describe(fp, starts, span, stats, &track.routes, host, &to_unix);
                signals.push(Signal::Ongoing(Box::new(report)));
            }
        }
        signals
    }
}

/// Index ranges `[first, last]` of windows that qualify as a burst, outside known bursts'
/// baselines. `starts` is sorted by start time.
fn qualifying_windows(
    starts: &[Start],
    known: &VecDeque<Span>,
    config: &HerdConfig,
    watching_since_ms: u64,
    evaluate_until_ms: u64,
) -> Vec<(usize, usize)> {
    let baseline_ms = config.baseline_s * 1000;
    let in_known = |at: u64| known.iter().any(|b| at >= b.first_ms && at <= b.last_ms);
    // known_before[i]: how many of starts[..i] belong to earlier bursts.
    let mut known_before = Vec::with_capacity(starts.len() + 1);
    known_before.push(0usize);
    for s in starts {
        let n = known_before.last().copied().unwrap_or(0);
        known_before.push(n + usize::from(in_known(s.at_ms)));
    }
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut end = 0;
    let mut lo = 0;
    let mut after_end = 0;
    for first in 0..starts.len() {
        let w0 = starts[first].at_ms;
        // Without a full baseline behind it, steady load that began before we watched would
        // look like a burst.
        if w0 < watching_since_ms + baseline_ms {
            continue;
        }
        end = end.max(first);
        while end + 1 < starts.len() && starts[end + 1].at_ms <= w0 + config.window_ms {
            end += 1;
        }
        let copies = end + 1 - first;
        if copies < config.min_copies {
            continue;
        }
        while starts[lo].at_ms + baseline_ms < w0 {
            lo += 1;
        }
        let before = (first - lo) - (known_before[first] - known_before[lo]);
        let per_window = before as f64 * config.window_ms as f64 / baseline_ms.max(1) as f64;
        if (copies as f64) < config.burst_factor * per_window {
            continue;
        }
        let window_end = starts[end].at_ms;
        if window_end + config.settle_ms > evaluate_until_ms {
            // Too early to know whether the rate falls back; the next tick decides.
            continue;
        }
        after_end = after_end.max(end);
        while after_end + 1 < starts.len()
            && starts[after_end + 1].at_ms <= window_end + config.settle_ms
        {
            after_end += 1;
        }
        let after_per_window =
            (after_end - end) as f64 * config.window_ms as f64 / config.settle_ms.max(1) as f64;
        if after_per_window * config.burst_factor > copies as f64 {
            continue;
        }
        let conns: HashSet<(u32, u32)> = starts[first..=end].iter().map(|s| s.conn).collect();
        if conns.len() < config.min_copies {
            continue;
        }
        let wasted: f64 = starts[first + 1..=end].iter().map(|s| s.took_ms).sum();
        if wasted < config.min_wasted_ms {
            continue;
        }
        match found.last_mut() {
            Some(prev) if first <= prev.1 => prev.1 = end,
            _ => found.push((first, end)),
        }
    }
    found
}

fn describe(
    fp: &str,
    starts: &[Start],
    span: Span,
    stats: Option<&QueryStats>,
    known_routes: &BTreeSet<String>,
    host: &str,
    to_unix: &impl Fn(u64) -> u64,
) -> Report {
    let copies: Vec<&Start> = starts
        .iter()
        .filter(|s| s.at_ms >= span.first_ms && s.at_ms <= span.last_ms)
        .collect();
    let conns: HashSet<(u32, u32)> = copies.iter().map(|s| s.conn).collect();
    let pids: HashSet<u32> = copies.iter().map(|s| s.pid).collect();
    let total_ms: f64 = copies.iter().map(|s| s.took_ms).sum();
    let first_took = copies.first().map(|s| s.took_ms).unwrap_or(0.0);
    let duplicates_ms = total_ms - first_took;
    // The copies' own routes, and on asyncio workers every request open beside them: in a
    // herd those requests are all waiting for the same refill.
    let mut routes: BTreeSet<String> = copies
        .iter()
        .flat_map(|s| s.route.iter().chain(&s.in_flight_routes))
        .map(|r| r.to_string())
        .collect();
    if let Some(q) = stats {
        routes.extend(q.routes.iter().map(|r| r.route.clone()));
    }
    routes.extend(known_routes.iter().cloned());
    let routes: Vec<String> = routes.into_iter().collect();
    let summary = stats
        .map(|q| q.summary.clone())
        .unwrap_or_else(|| format!("fingerprint {fp}"));
    let mean_ms = total_ms / copies.len().max(1) as f64;
    let span_ms = span.last_ms - span.first_ms;
    let route_text = if routes.is_empty() {
        "outside any traced HTTP request".to_string()
    } else {
        format!("from {} route(s): {}", routes.len(), routes.join(", "))
    };
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
            query_summary: Some(summary.clone()),
            fingerprint: Some(fp.to_string()),
            routes: routes.clone(),
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
            "{} copies of `{summary}` started within {span_ms} ms on {} connections in {} \
             processes, {route_text}: every worker missed the same cache entry at once and \
             ran the same query ({mean_ms:.0} ms each, {:.1} s of database time on duplicates).",
            copies.len(),
            conns.len(),
            pids.len(),
            duplicates_ms / 1000.0
        ),
        prevention: format!(
            "Single-flight the cache refill: one lock per cache key so one worker runs \
             `{summary}` while the others wait for (or are served the stale) result; add jitter \
             to the expiry so workers do not miss together."
        ),
        remediation: "Put the refill behind a per-key lock (advisory lock, Redis SET NX, or an \
             in-process future shared by requests) and serve stale while refreshing. Killing the \
             query only hides it until the next expiry."
            .to_string(),
        annotations: Vec::new(),
        onset_unix_ms: to_unix(span.first_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(fp: &str, conn: u32, start: f64, took: f64) -> QueryObs {
        QueryObs {
            fingerprint: fp.into(),
            pid: 100 + conn / 2,
            conn: (100 + conn / 2, conn),
            server_port: Some(5432),
            started_ms: start,
            first_response_ms: Some(start + took),
            finished_ms: start + took,
            route: Some(format!("/api/e{}", conn % 6).into()),
            in_flight_routes: Vec::new(),
            call_site: None,
        }
    }

    fn run(d: &mut HerdDetector, now: u64) -> Vec<Signal> {
        d.tick(now, &[], "h", |ms| ms)
    }

    #[test]
    fn a_recurring_burst_is_one_finding_with_occurrences_and_steady_load_is_none() {
        let mut d = HerdDetector::new(HerdConfig {
            baseline_s: 10,
            ..HerdConfig::default()
        });
        assert!(run(&mut d, 0).is_empty());
        // Steady: 4 connections each running a 200 ms query back to back, for 90 s.
        for c in 0..4u32 {
            let mut t = 37.0 * f64::from(c);
            while t < 90_000.0 {
                d.on_query(&obs("steady", c, t, 200.0));
                t += 200.0;
            }
        }
        // A deploy makes every worker run a new slow query back to back from 15 s on: a
        // sudden steady stream, not a burst that falls back.
        for c in 0..4u32 {
            let mut t = 15_000.0 + 11.0 * f64::from(c);
            while t < 90_000.0 {
                d.on_query(&obs("new-steady", c, t, 250.0));
                t += 250.0;
            }
        }
        // Herd: 12 copies within 40 ms at 20 s, 40 s and 60 s, quiet in between.
        let mut onsets = 0;
        for (k, at) in [20_000.0, 40_000.0, 60_000.0].into_iter().enumerate() {
            for c in 0..12u32 {
                d.on_query(&obs("herd", c, at + f64::from(c) * 3.0, 400.0));
            }
            // Undecided until the rate has had time to fall back.
            assert!(run(&mut d, at as u64 + 2_000).is_empty());
            let signals = run(&mut d, at as u64 + 6_000);
            for s in &signals {
                match s {
                    Signal::Onset(r) => {
                        assert_eq!(r.pattern, "herd", "{r:?}");
                        assert_eq!(r.subject.routes.len(), 6);
                        onsets += 1;
                    }
                    Signal::Ongoing(r) => assert_eq!(r.pattern, "herd"),
                    Signal::Ended { pattern, .. } => assert_eq!(pattern, "herd"),
                }
            }
            assert_eq!(onsets, k + 1);
            // A quiet tick ends the occurrence.
            let quiet = run(&mut d, at as u64 + 14_000);
            assert!(
                quiet
                    .iter()
                    .all(|s| matches!(s, Signal::Ended { pattern, .. } if pattern == "herd"))
            );
        }
    }

    #[test]
    fn copies_from_too_few_connections_or_too_fast_are_not_a_herd() {
        let mut d = HerdDetector::new(HerdConfig {
            baseline_s: 1,
            ..HerdConfig::default()
        });
        run(&mut d, 0);
        for i in 0..10 {
            d.on_query(&obs("two-conns", i % 2, 5_000.0 + f64::from(i), 100.0));
            d.on_query(&obs("fast", i, 5_000.0 + f64::from(i), 1.0));
        }
        assert!(run(&mut d, 12_000).is_empty());
    }
}
