//! Blocked-worker starvation: nearly every worker of a pool busy for a sustained time while
//! requests queue (accept backlog) or latency climbs. Names the route and the query holding
//! the workers, compares the route with its own earlier latency, and cites a reload (deploy)
//! that came just before.
use crate::model::finding::{Evidence, FindingKind, Severity, Subject};
use std::collections::{HashMap, VecDeque};

use super::{
    finding::{Report, Signal},
    lifecycle::LifecycleLog,
    naming::{QUERY_TEXT_CHARS, bounded, query_name},
    sustain::{Phase, Sustain},
    window::{QueryWindow, RouteWindow, bound_text, merge},
};
use crate::model::{Histogram, PoolView, TimeShare};

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StarvationConfig {
    /// Share of a pool's workers busy (0..=1).
    pub busy_share: f64,
    pub for_s: u64,
    /// Latency counts as rising when the window's p99 bound is this many times the baseline's.
    pub latency_rise: f64,
    /// How far back a reload or worker exit is linked to the finding.
    pub lifecycle_lookback_s: u64,
}

impl Default for StarvationConfig {
    fn default() -> Self {
        Self {
            busy_share: 0.9,
            for_s: 10,
            latency_rise: 2.0,
            lifecycle_lookback_s: 600,
        }
    }
}

/// Windows of latency kept as a route's baseline (at the default 2 s interval, 10 minutes).
const BASELINE_WINDOWS: usize = 300;

#[derive(Debug, Default)]
struct PoolTrack {
    sustain: Sustain,
    /// Per route label: histograms of windows when the pool was healthy.
    baseline: HashMap<String, VecDeque<Histogram>>,
    /// Since the condition began holding: worker time per route and query, time shares.
    episode: Episode,
    /// (unix ms, busy share, accept backlog) of the last few seconds.
    recent: VecDeque<(u64, f64, u32)>,
    /// Healthy windows not yet old enough for the baseline: (unix ms, route, latency).
    pending: VecDeque<(u64, String, Histogram)>,
}

/// How old a healthy window must be before it counts as the route's normal latency: a
/// starvation builds up over seconds before it holds, and those seconds are not normal.
const BASELINE_LAG_MS: u64 = 15_000;

/// Busy share and backlog are instantaneous samples; a sync worker caught between a response
/// and its next accept() reads idle for that instant. Judge them over this much time.
const SMOOTHING_MS: u64 = 5_000;

/// A statement over a starvation episode: how a person reads it, and what it cost.
#[derive(Debug, Default)]
struct EpisodeQuery {
    summary: String,
    normalized: String,
    /// The application line issuing most of its calls.
    call_site: Option<String>,
    time_ns: u64,
    calls: u64,
}

#[derive(Debug, Default)]
struct Episode {
    routes: HashMap<String, (u64, Histogram)>,
    /// Per statement id: its names, time and calls over the episode.
    queries: HashMap<String, EpisodeQuery>,
    on_cpu: f64,
    db_wait: f64,
    shares: u32,
    max_backlog: u32,
    busy_sum: f64,
    samples: u32,
}

pub struct StarvationInput<'a> {
    pub now_unix_ms: u64,
    pub host: &'a str,
    pub pools: &'a [PoolView],
    pub routes: &'a [RouteWindow],
    pub queries: &'a [QueryWindow],
    pub lifecycle: &'a LifecycleLog,
}

#[derive(Debug, Default)]
pub struct StarvationDetector {
    pub config: StarvationConfig,
    pools: HashMap<String, PoolTrack>,
}

impl StarvationDetector {
    pub fn new(config: StarvationConfig) -> Self {
        Self {
            config,
            pools: HashMap::new(),
        }
    }

    pub fn tick(&mut self, input: &StarvationInput) -> Vec<Signal> {
        let mut signals = Vec::new();
        let now = input.now_unix_ms;
        for view in input.pools {
            let workers = view.worker_states.len();
            if workers == 0 {
                continue;
            }
            let track = self.pools.entry(view.name.clone()).or_default();
            let mine = |pids: &[u32]| pids.iter().any(|p| view.pool.workers.contains(p));
            let routes: Vec<&RouteWindow> = input.routes.iter().filter(|r| mine(&r.pids)).collect();
            let rising = latency_rising(track, &routes, self.config.latency_rise);
            let (busy, backlog) = track.smoothed(
                now,
                view.busy_workers as f64 / workers as f64,
                view.accept_queue().unwrap_or(0),
            );
            let holds = busy >= self.config.busy_share && (backlog > 0 || rising);
            let hold_ms = self.config.for_s * 1000;
            let phase = track.sustain.update(holds, now, hold_ms, hold_ms);
            if matches!(phase, Phase::Quiet | Phase::Ended) {
                track.episode = Episode::default();
                track.learn_baseline(&routes, now);
                if phase == Phase::Ended {
                    signals.push(Signal::Ended {
                        kind: FindingKind::Starvation,
                        pattern: view.name.clone(),
                    });
                }
                continue;
            }
            // The latency just before the condition held belongs to the incident, not to the
            // route's normal.
            track.pending.clear();
            let queries: Vec<&QueryWindow> =
                input.queries.iter().filter(|q| mine(&q.pids)).collect();
            track
                .episode
                .record(&routes, &queries, view.time_share, busy, backlog);
            let since = match phase {
                Phase::Onset(s) | Phase::Ongoing(s) => s,
                _ => continue,
            };
            let report = describe(view, track, since, input, &self.config);
            signals.push(match phase {
                Phase::Onset(_) => Signal::Onset(Box::new(report)),
                _ => Signal::Ongoing(Box::new(report)),
            });
        }
        let names: Vec<&String> = input.pools.iter().map(|p| &p.name).collect();
        self.pools.retain(|k, _| names.contains(&k));
        signals
    }
}

/// Whether the routes' p99 over the window rose `rise` times above their baseline p99.
fn latency_rising(track: &PoolTrack, routes: &[&RouteWindow], rise: f64) -> bool {
    let mut window_hist = Histogram::default();
    let mut base_hist = Histogram::default();
    for r in routes {
        merge(&mut window_hist, &r.latency);
        for h in track.baseline.get(&r.label()).into_iter().flatten() {
            merge(&mut base_hist, h);
        }
    }
    match (
        window_hist.quantile_upper_ms(0.99),
        base_hist.quantile_upper_ms(0.99),
    ) {
        (now_p99, Some(base)) => now_p99.map_or(f64::INFINITY, |p| p as f64) >= rise * base as f64,
        _ => false,
    }
}

impl PoolTrack {
    /// Adds this snapshot's busy share and accept backlog; returns them smoothed over
    /// `SMOOTHING_MS` (mean busy share, largest backlog).
    fn smoothed(&mut self, now: u64, busy_now: f64, backlog_now: u32) -> (f64, u32) {
        self.recent.push_back((now, busy_now, backlog_now));
        while self
            .recent
            .front()
            .is_some_and(|(t, _, _)| t + SMOOTHING_MS < now)
        {
            self.recent.pop_front();
        }
        let busy = self.recent.iter().map(|r| r.1).sum::<f64>() / self.recent.len() as f64;
        let backlog = self.recent.iter().map(|r| r.2).max().unwrap_or(0);
        (busy, backlog)
    }

    /// Queues this window's route latencies for the baseline. Windows join the baseline
    /// only once they are old enough that no starvation was developing in them.
    fn learn_baseline(&mut self, routes: &[&RouteWindow], now: u64) {
        for r in routes {
            self.pending.push_back((now, r.label(), r.latency.clone()));
        }
        while self
            .pending
            .front()
            .is_some_and(|(t, _, _)| t + BASELINE_LAG_MS < now)
        {
            let Some((_, label, hist)) = self.pending.pop_front() else {
                break;
            };
            let q = self.baseline.entry(label).or_default();
            if q.len() == BASELINE_WINDOWS {
                q.pop_front();
            }
            q.push_back(hist);
        }
    }
}

impl Episode {
    /// Adds one snapshot of a starving pool: its routes, its queries, its time shares.
    fn record(
        &mut self,
        routes: &[&RouteWindow],
        queries: &[&QueryWindow],
        time_share: Option<TimeShare>,
        busy: f64,
        backlog: u32,
    ) {
        for r in routes {
            let e = self.routes.entry(r.label()).or_default();
            e.0 += r.total_ns;
            merge(&mut e.1, &r.latency);
        }
        for q in queries {
            let e = self.queries.entry(q.id.clone()).or_default();
            e.summary.clone_from(&q.summary);
            e.normalized.clone_from(&q.normalized);
            e.call_site.clone_from(&q.call_site);
            e.time_ns += q.total_ns;
            e.calls += q.calls;
        }
        if let Some(s) = time_share {
            self.on_cpu += s.on_cpu;
            self.db_wait += s.db_wait;
            self.shares += 1;
        }
        self.max_backlog = self.max_backlog.max(backlog);
        self.busy_sum += busy;
        self.samples += 1;
    }
}

const AFTER_RELOAD: &str = "Roll back the deploy that reloaded the workers, or add workers while \
                            the query is fixed. herdwatch does not kill or cancel anything.";

const ADD_WORKERS: &str = "Add workers (or threads) to absorb the DB wait while the query is \
                           fixed. herdwatch does not kill or cancel anything.";

impl Episode {
    /// Mean share of worker time on CPU and waiting on the database over the episode.
    fn mean_shares(&self) -> (f64, f64) {
        if self.shares > 0 {
            (
                self.on_cpu / f64::from(self.shares),
                self.db_wait / f64::from(self.shares),
            )
        } else {
            (0.0, 0.0)
        }
    }
}

/// The numbers every starvation finding rests on: workers, busy share, how long, backlog,
/// and how the workers' time went.
fn episode_evidence(ep: &Episode, workers: usize, held_s: f64) -> Vec<Evidence> {
    let (on_cpu, db_wait) = ep.mean_shares();
    vec![
        Evidence::new("workers", workers as f64, "workers"),
        Evidence::new(
            "busy_share",
            ep.busy_sum / f64::from(ep.samples.max(1)),
            "ratio",
        ),
        Evidence::new("held_for", held_s, "s"),
        Evidence::new(
            "accept_backlog_max",
            f64::from(ep.max_backlog),
            "connections",
        ),
        Evidence::new("worker_time_on_cpu", on_cpu, "ratio"),
        Evidence::new("worker_time_db_wait", db_wait, "ratio"),
        Evidence::new(
            "worker_time_other",
            (1.0 - on_cpu - db_wait).max(0.0),
            "ratio",
        ),
    ]
}

fn describe(
    view: &PoolView,
    track: &PoolTrack,
    since: u64,
    input: &StarvationInput,
    config: &StarvationConfig,
) -> Report {
    let ep = &track.episode;
    let workers = view.worker_states.len();
    let held_s = input.now_unix_ms.saturating_sub(since) as f64 / 1000.0;
    let (on_cpu, db_wait) = ep.mean_shares();
    let route_time: u64 = ep.routes.values().map(|r| r.0).sum();
    let top_route = ep
        .routes
        .iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.0.cmp(a.0)));
    let top_query = ep
        .queries
        .iter()
        .max_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(b.0.cmp(a.0)));
    let mut evidence = episode_evidence(ep, workers, held_s);
    let mut sentence = format!(
        "{:.0} % of the {workers} workers of {} were busy for {held_s:.0} s \
         ({:.0} % of worker time on CPU, {:.0} % waiting on PostgreSQL)",
        100.0 * ep.busy_sum / f64::from(ep.samples.max(1)),
        view.name,
        100.0 * on_cpu,
        100.0 * db_wait
    );
    if ep.max_backlog > 0 {
        sentence.push_str(&format!(
            " with up to {} connections waiting in the accept queue",
            ep.max_backlog
        ));
    }
    sentence.push('.');
    let mut subject = Subject {
        host: input.host.to_string(),
        pool: Some(view.name.clone()),
        ..Subject::default()
    };
    let mut prevention = format!(
        "Keep slow synchronous work off {}'s request path (background job, index, or \
         statement_timeout) and size its workers for the DB wait they carry.",
        view.name
    );
    if let Some((label, (time, hist))) = top_route {
        let share = *time as f64 / route_time.max(1) as f64;
        cite_top_route(track, label, share, hist, &mut evidence, &mut sentence);
        subject.route = Some(label.clone());
    }
    if let Some((id, q)) = top_query {
        prevention = cite_top_query(id, q, &mut evidence, &mut sentence, &mut subject);
    }
    let lookback = config.lifecycle_lookback_s * 1000;
    let annotations = input.lifecycle.notes(
        &view.name,
        since.saturating_sub(lookback),
        input.now_unix_ms,
    );
    if let Some(last) = annotations.last() {
        sentence.push_str(&format!(" It began after: {last}."));
    }
    Report {
        kind: FindingKind::Starvation,
        pattern: view.name.clone(),
        severity: Severity::Critical,
        subject,
        evidence,
        root_cause: sentence,
        prevention,
        remediation: if annotations.iter().any(|a| a.contains("reloaded")) {
            AFTER_RELOAD.to_string()
        } else {
            ADD_WORKERS.to_string()
        },
        annotations,
        onset_unix_ms: since,
    }
}

/// Adds the route that held most of the request time, and its p99 before and during, to
/// the finding.
fn cite_top_route(
    track: &PoolTrack,
    label: &str,
    share: f64,
    hist: &Histogram,
    evidence: &mut Vec<Evidence>,
    sentence: &mut String,
) {
    let base: Histogram =
        track
            .baseline
            .get(label)
            .into_iter()
            .flatten()
            .fold(Histogram::default(), |mut acc, h| {
                merge(&mut acc, h);
                acc
            });
    let before = base.quantile_upper_ms(0.99);
    let during = hist.quantile_upper_ms(0.99);
    evidence.push(Evidence::new("top_route_worker_time_share", share, "ratio"));
    if let Some(b) = before {
        evidence.push(Evidence::new("top_route_p99_before", b as f64, "ms"));
    }
    evidence.push(Evidence::new(
        "top_route_p99_during",
        during.map_or(f64::INFINITY, |d| d as f64),
        "ms",
    ));
    sentence.push_str(&format!(
        " {label} held {:.0} % of the request time",
        100.0 * share
    ));
    if before.is_some() {
        sentence.push_str(&format!(
            "; its p99 went {} → {}",
            bound_text(before),
            bound_text(during)
        ));
    }
    sentence.push('.');
}

/// Adds the statement the pool's time went to, named by text and id, to the finding;
/// returns the prevention that names it.
fn cite_top_query(
    id: &str,
    q: &EpisodeQuery,
    evidence: &mut Vec<Evidence>,
    sentence: &mut String,
    subject: &mut Subject,
) -> String {
    let (time, calls) = (q.time_ns, q.calls);
    let per_call = time as f64 / 1e6 / calls.max(1) as f64;
    evidence.push(Evidence::new("top_query_time", time as f64 / 1e6, "ms"));
    evidence.push(Evidence::new("top_query_mean", per_call, "ms"));
    // Named by text and id: the summary alone (`SELECT`) names no statement.
    let name = query_name(id, &q.normalized);
    let issued = q
        .call_site
        .as_deref()
        .map(|s| format!(", issued at {s}"))
        .unwrap_or_default();
    sentence.push_str(&format!(
        " Most of it was spent in {name}{issued} ({calls} calls, {per_call:.0} ms each)."
    ));
    let prevention = format!(
        "Take {name} off the synchronous path of {}: run it in a background job, give \
         it the index it lacks, or bound it with statement_timeout; workers blocked on the \
         database cannot accept requests.",
        subject.route.as_deref().unwrap_or("the request")
    );
    subject.query_summary = Some(q.summary.clone());
    subject.query_text = Some(bounded(&q.normalized, QUERY_TEXT_CHARS));
    subject.fingerprint = Some(id.to_string());
    prevention
}
