//! Sustained saturation: host CPU (or run-queue wait) above a threshold for a sustained time.
//! The finding names who used the CPU — pools, processes, routes — and which route's request
//! rate the CPU tracks, because "CPU 91 %" alone names nothing.
use crate::model::finding::{Evidence, FindingKind, Severity, Subject};
use std::collections::{BTreeMap, VecDeque};

use super::{
    finding::{Report, Signal},
    sustain::{Phase, Sustain},
    window::RouteWindow,
};
use crate::model::{PoolView, ProcessView};

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SaturationConfig {
    /// Host CPU busy share (0..=1).
    pub cpu: f64,
    pub for_s: u64,
    /// Run-queue wait, milliseconds per second per CPU: 250 means on average a quarter of a
    /// runnable task waits for every CPU. The kernel gives run-queue delay per thread as a
    /// total, not per slice, so this is a mean, not a p99.
    pub run_queue_ms_per_s_per_cpu: f64,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        Self {
            cpu: 0.8,
            for_s: 60,
            run_queue_ms_per_s_per_cpu: 250.0,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Sample {
    cpu: f64,
    route_rates: BTreeMap<String, f64>,
    route_cpu_ns: BTreeMap<String, u64>,
    processes: Vec<(String, f64)>,
    pools: Vec<(String, f64)>,
}

/// Samples kept for correlation and shares.
const SAMPLES: usize = 180;

pub struct SaturationInput<'a> {
    pub now_unix_ms: u64,
    pub interval_ms: u64,
    pub host: &'a str,
    /// What saturates: `host vm`, or `cgroup /docker/abc`; the finding's pattern.
    pub pattern: &'a str,
    /// How the sentence names it: `Host CPU`, `CPU of cgroup /docker/abc (quota 0.5 CPUs)`.
    pub scope: &'a str,
    /// CPUs the scope may use: all of the host's, or the cgroup's quota.
    pub capacity_cpus: f64,
    pub cpu_utilization: Option<f64>,
    pub processes: &'a [ProcessView],
    pub pools: &'a [PoolView],
    pub routes: &'a [RouteWindow],
}

#[derive(Debug, Default)]
pub struct SaturationDetector {
    pub config: SaturationConfig,
    sustain: Sustain,
    samples: VecDeque<Sample>,
    /// Samples taken since the condition began holding.
    in_episode: usize,
}

impl SaturationDetector {
    pub fn new(config: SaturationConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn tick(&mut self, input: &SaturationInput) -> Vec<Signal> {
        let Some(cpu) = input.cpu_utilization else {
            return Vec::new();
        };
        if input.interval_ms == 0 {
            return Vec::new();
        }
        let secs = input.interval_ms as f64 / 1000.0;
        let run_queue: f64 = input
            .processes
            .iter()
            .map(|p| p.run_delay_ms_per_s)
            .sum::<f64>()
            / input.capacity_cpus.max(0.001);
        let sample = Sample {
            cpu,
            route_rates: input
                .routes
                .iter()
                .map(|r| (r.label(), r.requests as f64 / secs))
                .collect(),
            route_cpu_ns: input.routes.iter().map(|r| (r.label(), r.cpu_ns)).collect(),
            processes: input
                .processes
                .iter()
                .take(5)
                .map(|p| (format!("{} (pid {})", p.comm, p.pid), p.cpu_percent))
                .collect(),
            pools: input
                .pools
                .iter()
                .map(|p| (p.name.clone(), p.cpu_percent))
                .collect(),
        };
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        let holds = cpu >= self.config.cpu || run_queue >= self.config.run_queue_ms_per_s_per_cpu;
        let hold_ms = self.config.for_s * 1000;
        let phase = self
            .sustain
            .update(holds, input.now_unix_ms, hold_ms, hold_ms.min(30_000));
        match phase {
            Phase::Quiet => {
                self.in_episode = 0;
                Vec::new()
            }
            Phase::Pending => {
                self.in_episode += 1;
                Vec::new()
            }
            Phase::Ended => {
                self.in_episode = 0;
                vec![Signal::Ended {
                    kind: FindingKind::Saturation,
                    pattern: input.pattern.to_string(),
                }]
            }
            Phase::Onset(since) | Phase::Ongoing(since) => {
                self.in_episode += 1;
                let report = self.describe(input, since, run_queue);
                vec![if matches!(phase, Phase::Onset(_)) {
                    Signal::Onset(Box::new(report))
                } else {
                    Signal::Ongoing(Box::new(report))
                }]
            }
        }
    }

    /// Correlation of CPU with each route's request rate, over all samples kept (the
    /// episode plus what led into it).
    fn rate_correlations(&self, routes: &[(String, u64)]) -> Vec<(String, f64)> {
        routes
            .iter()
            .filter_map(|(label, _)| {
                let xs: Vec<f64> = self.samples.iter().map(|s| s.cpu).collect();
                let ys: Vec<f64> = self
                    .samples
                    .iter()
                    .map(|s| s.route_rates.get(label).copied().unwrap_or(0.0))
                    .collect();
                pearson(&xs, &ys).map(|r| (label.clone(), r))
            })
            .collect()
    }

    fn describe(&self, input: &SaturationInput, since: u64, run_queue: f64) -> Report {
        let n = self.in_episode.clamp(1, self.samples.len());
        let episode: Vec<&Sample> = self.samples.iter().rev().take(n).collect();
        let mean_cpu = episode.iter().map(|s| s.cpu).sum::<f64>() / episode.len() as f64;
        let pools = top_shares(&episode, |s| &s.pools);
        let processes = top_shares(&episode, |s| &s.processes);
        let (routes, total_route_cpu) = top_routes(&episode);
        let correlations = self.rate_correlations(&routes);
        let cpus = input.capacity_cpus.max(0.001);
        let mut evidence = vec![
            Evidence::new("cpu_utilization", mean_cpu, "ratio"),
            Evidence::new("capacity", input.capacity_cpus, "CPUs"),
            Evidence::new("threshold", self.config.cpu, "ratio"),
            Evidence::new(
                "held_for",
                input.now_unix_ms.saturating_sub(since) as f64 / 1000.0,
                "s",
            ),
            Evidence::new("run_queue_wait_per_cpu", run_queue, "ms/s"),
        ];
        let mut sentence = format!(
            "{} averaged {:.0} % for {:.0} s.",
            input.scope,
            100.0 * mean_cpu,
            input.now_unix_ms.saturating_sub(since) as f64 / 1000.0
        );
        cite_shares(&mut sentence, "Pools", &pools, cpus);
        cite_shares(&mut sentence, "Processes", &processes, cpus);
        for (i, (_, ns)) in routes.iter().enumerate() {
            let s = *ns as f64 / total_route_cpu.max(1) as f64;
            evidence.push(Evidence::new(&format!("route_{i}_cpu_share"), s, "ratio"));
        }
        if let Some((label, _)) = routes.first() {
            sentence.push_str(&format!(" Of the CPU spent in requests, {label} used most"));
            if let Some((_, r)) = correlations.iter().find(|(l, _)| l == label) {
                if *r >= 0.5 {
                    sentence.push_str(&format!("; CPU tracks its request rate (r = {r:.2})"));
                } else {
                    // Fewer requests while CPU rises: the requests are waiting, not working.
                    sentence.push_str(&format!(
                        "; CPU does not follow its request rate (r = {r:.2})"
                    ));
                }
                evidence.push(Evidence::new("top_route_rate_correlation", *r, "pearson"));
            }
            sentence.push('.');
        }
        Report {
            kind: FindingKind::Saturation,
            pattern: input.pattern.to_string(),
            severity: if mean_cpu >= 0.95 {
                Severity::Critical
            } else {
                Severity::Warning
            },
            subject: Subject {
                host: input.host.to_string(),
                pool: pools.first().map(|p| p.0.clone()),
                route: routes.first().map(|r| r.0.clone()),
                routes: routes.iter().map(|r| r.0.clone()).collect(),
                ..Subject::default()
            },
            evidence,
            root_cause: sentence,
            prevention: PREVENTION.to_string(),
            remediation: REMEDIATION.to_string(),
            annotations: Vec::new(),
            onset_unix_ms: since,
        }
    }
}

const PREVENTION: &str = "CPU saturation is the symptom: look at the starvation, herd and cron \
                          findings for the pattern behind it; if none, the top route's CPU per \
                          request is the budget to cut.";

const REMEDIATION: &str = "Scale out the pool serving the top route, or cut its CPU per request; \
                           killing the busiest process only moves the load.";

/// The three largest of a per-sample breakdown (pools or processes, % of one CPU), averaged
/// over the episode.
fn top_shares(episode: &[&Sample], pick: fn(&Sample) -> &Vec<(String, f64)>) -> Vec<(String, f64)> {
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    for s in episode {
        for (k, v) in pick(s) {
            *sum.entry(k.clone()).or_default() += v / episode.len() as f64;
        }
    }
    let mut v: Vec<(String, f64)> = sum.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(3);
    v
}

/// The three routes that used most CPU over the episode, and the CPU all routes used (ns).
fn top_routes(episode: &[&Sample]) -> (Vec<(String, u64)>, u64) {
    let mut route_cpu: BTreeMap<String, u64> = BTreeMap::new();
    for s in episode {
        for (k, v) in &s.route_cpu_ns {
            *route_cpu.entry(k.clone()).or_default() += v;
        }
    }
    let total: u64 = route_cpu.values().sum();
    let mut routes: Vec<(String, u64)> = route_cpu.into_iter().collect();
    routes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    routes.truncate(3);
    (routes, total)
}

/// ` Pools: a 40 %, b 20 %.` — shares of the capacity (`cpus`), when there are any.
fn cite_shares(sentence: &mut String, what: &str, shares: &[(String, f64)], cpus: f64) {
    if shares.is_empty() {
        return;
    }
    let text: Vec<String> = shares
        .iter()
        .map(|(p, pct)| format!("{p} {:.0} %", 100.0 * (pct / 100.0 / cpus)))
        .collect();
    sentence.push_str(&format!(" {what}: {}.", text.join(", ")));
}

/// Pearson correlation; None when either series is flat or too short.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 5 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (xs[i] - mx, ys[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= f64::EPSILON || syy <= f64::EPSILON {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_of_linear_series_is_one() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let ys = [2.0, 4.0, 6.0, 8.0, 10.0];
        assert!((pearson(&xs, &ys).unwrap_or(0.0) - 1.0).abs() < 1e-9);
        assert_eq!(pearson(&xs, &[1.0; 5]), None);
    }

    #[test]
    fn sustained_cpu_names_the_route_it_tracks() {
        let mut d = SaturationDetector::new(SaturationConfig {
            for_s: 10,
            ..SaturationConfig::default()
        });
        let mut signals = Vec::new();
        for i in 0..20u64 {
            let load = if i < 8 { 0.2 } else { 0.9 };
            let routes = vec![RouteWindow {
                method: "POST".into(),
                route: "/api/checkout".into(),
                requests: (load * 100.0) as u64,
                cpu_ns: (load * 1e9) as u64,
                ..RouteWindow::default()
            }];
            signals.extend(d.tick(&SaturationInput {
                now_unix_ms: i * 2000,
                interval_ms: 2000,
                host: "h",
                pattern: "host h",
                scope: "Host CPU",
                capacity_cpus: 2.0,
                cpu_utilization: Some(load),
                processes: &[],
                pools: &[],
                routes: &routes,
            }));
        }
        let onset = signals
            .iter()
            .find_map(|s| match s {
                Signal::Onset(r) => Some(r),
                _ => None,
            })
            .expect("an onset");
        assert_eq!(onset.onset_unix_ms, 16_000);
        assert_eq!(onset.subject.route.as_deref(), Some("POST /api/checkout"));
        assert!(
            onset.root_cause.contains("r = 1.00"),
            "{}",
            onset.root_cause
        );
    }
}
