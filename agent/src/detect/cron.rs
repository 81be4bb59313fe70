//! Cron alignment: periodic tasks that start at the same offset of the same period, so their
//! bursts land on the database together (five jobs at :00 and :30 flooding one pool).
//!
//! A task is a command line (cron starts a new process each time, so pids mean nothing). Its
//! onsets are the first query of a new process, or the first after `quiet_s` of silence from a
//! long-running scheduler. A task whose latest interval between onsets matches a configured
//! period (within the tolerance) is periodic, with an offset = onset mod period. Two or more
//! periodic tasks sharing a period and an offset are aligned; each time they fire together is
//! one occurrence of one finding, whose id comes from the period and the task set.
use crate::model::finding::{Evidence, FindingKind, Severity, Subject};
use crate::model::pool_event::clock_text;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::{
    QueryObs,
    finding::{Report, Signal},
};

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CronConfig {
    /// Periods looked for, seconds (add short ones for tests and demos).
    pub periods_s: Vec<u64>,
    /// Silence that makes the next query of a process a new onset, s.
    pub quiet_s: u64,
    /// How close onsets or offsets must be to count as the same, s (at least; 5 % of the
    /// period for long periods).
    pub tolerance_s: f64,
    pub min_tasks: usize,
    /// A new process that uses at least this much CPU is a task run even without queries
    /// (its onset is its exec), ms.
    pub min_cpu_ms: u64,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            periods_s: vec![60, 300, 1800, 3600],
            quiet_s: 30,
            tolerance_s: 2.0,
            min_tasks: 2,
            min_cpu_ms: 200,
        }
    }
}

#[derive(Debug, Default)]
struct Task {
    onsets: VecDeque<u64>,
    fingerprints: HashMap<String, u64>,
    last_seen_ms: u64,
}

#[derive(Debug, Default)]
struct Group {
    last_firing_ms: u64,
    active: bool,
    period_s: u64,
    members: BTreeSet<String>,
}

const MAX_TASKS: usize = 256;
const MAX_PIDS: usize = 65_536;
const ONSETS_KEPT: usize = 32;
const FINGERPRINTS_PER_TASK: usize = 32;
const PROXIES: [&str; 3] = ["pgbouncer", "pgcat", "odyssey"];

#[derive(Debug, Default)]
pub struct CronDetector {
    pub config: CronConfig,
    tasks: HashMap<String, Task>,
    /// pid → (last query unix ms, task key); None = not a task (a pool worker or proxy).
    pids: HashMap<u32, Option<(u64, String)>>,
    excluded: HashSet<u32>,
    groups: HashMap<String, Group>,
}

/// Circular distance between two offsets within `period`.
fn offset_distance(a: u64, b: u64, period: u64) -> u64 {
    let d = a.abs_diff(b) % period.max(1);
    d.min(period - d)
}

impl CronDetector {
    pub fn new(config: CronConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    fn tolerance_ms(&self, period_s: u64) -> u64 {
        tolerance_ms(&self.config, period_s)
    }

    /// `start_unix_ms` is the query's start on the wall clock; `name` resolves a pid to
    /// (comm, command line), called only when the pid is new.
    pub fn on_query(
        &mut self,
        q: &QueryObs,
        start_unix_ms: u64,
        name: impl FnOnce(u32) -> Option<(String, String)>,
    ) {
        if self.excluded.contains(&q.pid) {
            return;
        }
        let quiet = self.config.quiet_s * 1000;
        if self.pids.len() >= MAX_PIDS && !self.pids.contains_key(&q.pid) {
            self.pids.clear();
        }
        let (is_onset, key) = match self.pids.get(&q.pid) {
            Some(None) => return,
            Some(Some((last, key))) => (start_unix_ms >= last + quiet, key.clone()),
            None => {
                let Some((comm, cmdline)) = name(q.pid) else {
                    return;
                };
                if PROXIES.contains(&comm.as_str()) {
                    self.pids.insert(q.pid, None);
                    return;
                }
                if self.tasks.len() >= MAX_TASKS
                    && !self.tasks.contains_key(&cmdline)
                    && let Some(k) = self
                        .tasks
                        .iter()
                        .min_by_key(|(_, t)| t.last_seen_ms)
                        .map(|(k, _)| k.clone())
                {
                    self.tasks.remove(&k);
                }
                self.tasks.entry(cmdline.clone()).or_default();
                (true, cmdline)
            }
        };
        self.pids.insert(q.pid, Some((start_unix_ms, key.clone())));
        if is_onset {
            self.record_onset(&key, start_unix_ms);
        }
        let task = self.tasks.entry(key).or_default();
        task.last_seen_ms = task.last_seen_ms.max(start_unix_ms);
        if task.fingerprints.len() < FINGERPRINTS_PER_TASK
            || task.fingerprints.contains_key(&*q.fingerprint)
        {
            *task
                .fingerprints
                .entry(q.fingerprint.to_string())
                .or_default() += 1;
        }
    }

    /// One run of a task began at `at_unix_ms`; runs closer than the tolerance are one.
    fn record_onset(&mut self, key: &str, at_unix_ms: u64) {
        let tolerance = (self.config.tolerance_s * 1000.0) as u64;
        let task = self.tasks.entry(key.to_string()).or_default();
        task.last_seen_ms = task.last_seen_ms.max(at_unix_ms);
        let near = task
            .onsets
            .iter()
            .any(|t| t.abs_diff(at_unix_ms) <= tolerance);
        if near {
            return;
        }
        if task.onsets.len() == ONSETS_KEPT {
            task.onsets.pop_front();
        }
        // Onsets may arrive out of order (a CPU burst is known at exit): keep them sorted.
        let at = task.onsets.partition_point(|t| *t < at_unix_ms);
        task.onsets.insert(at, at_unix_ms);
    }

    /// A process that exec'd at `start_unix_ms` used `cpu_ns` of CPU (known at its exit, or
    /// while it runs): a CPU burst of the task `cmdline` when it used enough.
    pub fn on_cpu_burst(
        &mut self,
        pid: u32,
        comm: &str,
        cmdline: &str,
        start_unix_ms: u64,
        cpu_ns: u64,
    ) {
        if cpu_ns < self.config.min_cpu_ms * 1_000_000
            || self.excluded.contains(&pid)
            || PROXIES.contains(&comm)
        {
            return;
        }
        if self.tasks.len() >= MAX_TASKS && !self.tasks.contains_key(cmdline) {
            return;
        }
        self.tasks.entry(cmdline.to_string()).or_default();
        self.record_onset(cmdline, start_unix_ms);
    }

    /// `not_tasks`: pool workers and proxies, whose queries are requests, not schedules.
    /// `summaries`: fingerprint id → summary. `pressure`: worst pool pressure in a time range.
    pub fn tick(
        &mut self,
        now_unix_ms: u64,
        not_tasks: &HashSet<u32>,
        summaries: &HashMap<&str, &str>,
        host: &str,
        pressure: impl Fn(u64, u64) -> Option<(usize, f64, u16)>,
    ) -> Vec<Signal> {
        self.exclude(not_tasks);
        let periodic = periodic_tasks(&self.tasks, &self.config, now_unix_ms);
        let mut signals = Vec::new();
        let mut seen_patterns = HashSet::new();
        let mut used: HashSet<&String> = HashSet::new();
        for (i, (period, offset, _, key)) in periodic.iter().enumerate() {
            if used.contains(key) {
                continue;
            }
            let tol = self.tolerance_ms(*period);
            let members: Vec<&(u64, u64, u64, &String)> = periodic[i..]
                .iter()
                .filter(|(p, o, _, k)| {
                    p == period
                        && offset_distance(*o, *offset, p * 1000) <= tol
                        && !used.contains(k)
                })
                .collect();
            if members.len() < self.config.min_tasks {
                continue;
            }
            used.extend(members.iter().map(|m| m.3));
            let keys: BTreeSet<String> = members.iter().map(|m| m.3.clone()).collect();
            let pattern = self.group_pattern(*period, &keys);
            seen_patterns.insert(pattern.clone());
            let firing = members.iter().map(|m| m.2).min().unwrap_or(0);
            {
                let group = self.groups.entry(pattern.clone()).or_default();
                group.period_s = *period;
                group.members = keys;
            }
            let report = self.describe(
                &pattern, *period, *offset, &members, firing, summaries, host, &pressure,
            );
            let group = match self.groups.get_mut(&pattern) {
                Some(g) => g,
                None => continue,
            };
            if firing > group.last_firing_ms + tol {
                group.last_firing_ms = firing;
                group.active = true;
                signals.push(Signal::Onset(Box::new(report)));
            } else if group.active {
                if now_unix_ms > group.last_firing_ms + period * 500 {
                    group.active = false;
                    signals.push(Signal::Ended {
                        kind: FindingKind::CronAlignment,
                        pattern,
                    });
                } else {
                    signals.push(Signal::Ongoing(Box::new(report)));
                }
            }
        }
        self.end_groups_not_seen(&seen_patterns, now_unix_ms, &mut signals);
        signals
    }

    /// Pool workers and proxies are not tasks: a worker's queries are requests, so the
    /// onsets it left as a "task" are forgotten.
    fn exclude(&mut self, not_tasks: &HashSet<u32>) {
        for pid in not_tasks {
            if !self.excluded.contains(pid) {
                if let Some(Some((_, key))) = self.pids.get(pid)
                    && let Some(t) = self.tasks.get(key)
                    && t.onsets.len() <= 1
                {
                    self.tasks.remove(key);
                }
                self.pids.insert(*pid, None);
            }
        }
        self.excluded = not_tasks.clone();
    }

    /// The pattern (finding id source) of a group of tasks. A task that joins late (its
    /// period became known one firing after the others') must not make a new finding: a
    /// group sharing most of its tasks is the same one.
    fn group_pattern(&self, period: u64, keys: &BTreeSet<String>) -> String {
        let existing = self
            .groups
            .iter()
            .filter(|(_, g)| g.period_s == period)
            .map(|(p, g)| (p, g.members.intersection(keys).count(), g.members.len()))
            .filter(|(_, overlap, len)| *overlap >= 2 && 2 * overlap >= keys.len().min(*len))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(p, _, _)| p.clone());
        existing.unwrap_or_else(|| {
            format!(
                "every {period} s: {}",
                keys.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        })
    }

    /// Groups no longer aligned end; inactive ones are forgotten a day after their last
    /// firing.
    fn end_groups_not_seen(
        &mut self,
        seen_patterns: &HashSet<String>,
        now_unix_ms: u64,
        signals: &mut Vec<Signal>,
    ) {
        for (pattern, group) in &mut self.groups {
            if group.active && !seen_patterns.contains(pattern) {
                group.active = false;
                signals.push(Signal::Ended {
                    kind: FindingKind::CronAlignment,
                    pattern: pattern.clone(),
                });
            }
        }
        self.groups.retain(|p, g| {
            g.active || seen_patterns.contains(p) || g.last_firing_ms + 86_400_000 > now_unix_ms
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn describe(
        &self,
        pattern: &str,
        period: u64,
        offset: u64,
        members: &[&(u64, u64, u64, &String)],
        firing: u64,
        summaries: &HashMap<&str, &str>,
        host: &str,
        pressure: &impl Fn(u64, u64) -> Option<(usize, f64, u16)>,
    ) -> Report {
        let present: Vec<(&String, &Task)> = members
            .iter()
            .filter_map(|m| Some((m.3, self.tasks.get(m.3)?)))
            .collect();
        // Named against each other: the words that tell this group's tasks apart.
        let keys: Vec<&str> = present.iter().map(|(k, _)| k.as_str()).collect();
        let tasks = super::task_name::short_names(&keys);
        let tasks_text = task_texts(&present, &tasks, summaries);
        let commands: Vec<String> = present.iter().map(|(key, _)| key.to_string()).collect();
        let offset_s = offset as f64 / 1000.0;
        let offset_text = offset_text(period, offset);
        let mut evidence = vec![
            Evidence::new("tasks", members.len() as f64, "tasks"),
            Evidence::new("period", period as f64, "s"),
            Evidence::new("shared_offset", offset_s, "s"),
        ];
        let mut sentence = format!(
            "{} periodic tasks start together at {offset_text} (last at {}): {}.",
            members.len(),
            clock_text(firing),
            tasks_text.join("; ")
        );
        if let Some((in_flight, wait, port)) = pressure(firing, firing + period * 500) {
            evidence.push(Evidence::new(
                "pool_in_flight_at_firing",
                in_flight as f64,
                "queries",
            ));
            evidence.push(Evidence::new("pool_client_wait_p95_at_firing", wait, "ms"));
            sentence.push_str(&format!(
                " At those moments the pool on port {port} had up to {in_flight} queries in \
                 flight and clients waited {wait:.0} ms (p95)."
            ));
        }
        let proposal = staggered(&tasks, period, offset, members.len());
        Report {
            kind: FindingKind::CronAlignment,
            pattern: pattern.to_string(),
            severity: Severity::Warning,
            subject: Subject {
                host: host.to_string(),
                tasks,
                commands,
                ..Subject::default()
            },
            evidence,
            root_cause: sentence,
            prevention: "Stagger the schedules so the tasks' bursts do not share the database \
                         pool, or run them through a queue with bounded concurrency."
                .to_string(),
            remediation: format!("Proposed schedule: {}.", proposal.join("; ")),
            annotations: Vec::new(),
            onset_unix_ms: firing,
        }
    }
}

/// How far from its period a task's interval (and from the group's offset its own) may be.
fn tolerance_ms(config: &CronConfig, period_s: u64) -> u64 {
    (config.tolerance_s * 1000.0).max(period_s as f64 * 50.0) as u64
}

/// Tasks running on one of the configured periods and not overdue: (period s, offset
/// ms, latest onset, key), sorted.
fn periodic_tasks<'a>(
    tasks: &'a HashMap<String, Task>,
    config: &CronConfig,
    now_unix_ms: u64,
) -> Vec<(u64, u64, u64, &'a String)> {
    let mut periodic: Vec<(u64, u64, u64, &String)> = Vec::new();
    for (key, task) in tasks {
        let n = task.onsets.len();
        if n < 2 {
            continue;
        }
        let (prev, last) = (task.onsets[n - 2], task.onsets[n - 1]);
        let interval = last - prev;
        let Some(period) = config
            .periods_s
            .iter()
            .copied()
            .find(|p| interval.abs_diff(p * 1000) <= tolerance_ms(config, *p))
        else {
            continue;
        };
        // Still running on schedule: the next onset is not overdue.
        if now_unix_ms > last + period * 1000 + 2 * tolerance_ms(config, period) {
            continue;
        }
        periodic.push((period, last % (period * 1000), last, key));
    }
    periodic.sort();
    periodic
}

/// Each task with the statements it runs most: `name (SELECT a ×3, …)`.
fn task_texts(
    present: &[(&String, &Task)],
    names: &[String],
    summaries: &HashMap<&str, &str>,
) -> Vec<String> {
    present
        .iter()
        .zip(names)
        .map(|((_, t), name)| {
            let mut fps: Vec<(&String, &u64)> = t.fingerprints.iter().collect();
            fps.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let top: Vec<String> = fps
                .iter()
                .take(3)
                .map(|(id, n)| {
                    format!(
                        "{} ×{n}",
                        summaries.get(id.as_str()).copied().unwrap_or(id.as_str())
                    )
                })
                .collect();
            format!("{name} ({})", top.join(", "))
        })
        .collect()
}

/// `:00:30 into every 60 min`, or `+2.5 s into every 45 s`.
fn offset_text(period: u64, offset: u64) -> String {
    let period_text = if period.is_multiple_of(60) {
        format!("{} min", period / 60)
    } else {
        format!("{period} s")
    };
    if period.is_multiple_of(60) {
        format!(
            ":{:02}:{:02} into every {period_text}",
            offset / 60_000,
            (offset / 1000) % 60
        )
    } else {
        format!("+{:.1} s into every {period_text}", offset as f64 / 1000.0)
    }
}

/// A proposed schedule: the tasks spread evenly over the period from the shared offset.
fn staggered(tasks: &[String], period: u64, offset: u64, members: usize) -> Vec<String> {
    let step = period * 1000 / (members as u64 + 1);
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = (offset + step * i as u64) % (period * 1000);
            if period.is_multiple_of(60) {
                format!("{t} at :{:02}:{:02}", at / 60_000, (at / 1000) % 60)
            } else {
                format!("{t} at +{:.1} s", at as f64 / 1000.0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
