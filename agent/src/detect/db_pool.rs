//! Pool saturation: clients of a PostgreSQL or PgBouncer endpoint waiting for a server
//! connection — in-flight queries at the pool's limit and client wait above a threshold (the
//! incident's action item: alert when PgBouncer client wait exceeds 5 s).
//!
//! Client wait is measured, not guessed: a query's time from send to first response byte at
//! the endpoint, minus what the same fingerprint takes on the proxy's own server connections
//! (PgBouncer's upstream sockets are traced like any client's). Without upstream samples the
//! whole time to first byte counts, and the evidence says so.
use crate::model::finding::{Evidence, FindingKind, Severity, Subject};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{
    QueryObs,
    finding::{Report, Signal},
    sustain::{Phase, Sustain},
};
use crate::model::ProcessView;

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DbPoolConfig {
    /// Client wait (p95 over an interval) that counts as saturated, ms.
    pub client_wait_ms: f64,
    /// Server connections per endpoint port, e.g. { "5432" = 100 }; PgBouncer's pool size is
    /// read from its own config file when not given here.
    pub limits: BTreeMap<String, u32>,
    /// Quiet time before an occurrence is over, s.
    pub clear_s: u64,
}

impl Default for DbPoolConfig {
    fn default() -> Self {
        Self {
            client_wait_ms: 5000.0,
            limits: BTreeMap::new(),
            clear_s: 30,
        }
    }
}

/// What PgBouncer's config says about the endpoint it serves.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyInfo {
    pub listen_port: Option<u16>,
    pub pool_size: Option<u32>,
    pub pool_mode: Option<String>,
}

/// Parses the `[pgbouncer]` section of a pgbouncer.ini (pure; unknown keys ignored).
pub fn parse_pgbouncer_ini(text: &str) -> ProxyInfo {
    let mut info = ProxyInfo::default();
    let mut in_section = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with(';') || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_section = line.eq_ignore_ascii_case("[pgbouncer]");
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_section {
            continue;
        }
        let v = v.trim();
        match k.trim() {
            "listen_port" => info.listen_port = v.parse().ok(),
            "default_pool_size" => info.pool_size = v.parse().ok(),
            "pool_mode" => info.pool_mode = Some(v.to_string()),
            _ => {}
        }
    }
    if info.pool_size.is_none() {
        // PgBouncer's documented default.
        info.pool_size = Some(20);
    }
    info
}

#[derive(Debug, Clone)]
struct Seen {
    start_ms: f64,
    first_byte_ms: f64,
    finish_ms: f64,
    fingerprint: String,
    pid: u32,
}

const MAX_SEEN: usize = 16_384;
const KEEP_MS: f64 = 120_000.0;
const UPSTREAM_SAMPLES: usize = 256;
const UPSTREAM_FINGERPRINTS: usize = 1024;

#[derive(Debug, Default)]
struct Endpoint {
    seen: VecDeque<Seen>,
    sustain: Sustain,
    /// Worst interval of the current occurrence: (wait p95, in flight, queued).
    worst: (f64, usize),
}

#[derive(Debug, Default)]
pub struct DbPoolDetector {
    pub config: DbPoolConfig,
    endpoints: HashMap<u16, Endpoint>,
    upstream: HashMap<String, VecDeque<f64>>,
    proxies: HashMap<u32, ProxyInfo>,
    last_tick_ms: f64,
    /// (unix ms, port, max in flight, wait p95 ms) per interval, for the cron detector.
    pub pressure: VecDeque<(u64, u16, usize, f64)>,
}

impl DbPoolDetector {
    pub fn new(config: DbPoolConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn on_query(&mut self, q: &QueryObs) {
        let first_byte = q.first_response_ms.unwrap_or(q.finished_ms);
        if self.proxies.contains_key(&q.pid) {
            if self.upstream.len() >= UPSTREAM_FINGERPRINTS
                && !self.upstream.contains_key(&*q.fingerprint)
            {
                self.upstream.clear();
            }
            let samples = self.upstream.entry(q.fingerprint.to_string()).or_default();
            if samples.len() == UPSTREAM_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(first_byte - q.started_ms);
            return;
        }
        let Some(port) = q.server_port else { return };
        let e = self.endpoints.entry(port).or_default();
        if e.seen.len() == MAX_SEEN {
            e.seen.pop_front();
        }
        e.seen.push_back(Seen {
            start_ms: q.started_ms,
            first_byte_ms: first_byte,
            finish_ms: q.finished_ms,
            fingerprint: q.fingerprint.to_string(),
            pid: q.pid,
        });
    }

    fn refresh_proxies(&mut self, processes: &[ProcessView]) {
        let live: HashSet<u32> = processes
            .iter()
            .filter(|p| p.comm == "pgbouncer")
            .map(|p| p.pid)
            .collect();
        self.proxies.retain(|pid, _| live.contains(pid));
        for p in processes.iter().filter(|p| live.contains(&p.pid)) {
            if self.proxies.contains_key(&p.pid) {
                continue;
            }
            let ini = p
                .cmdline
                .split_whitespace()
                .find(|a| a.ends_with(".ini"))
                .map(|path| {
                    // Read through the process's root, so a containerised PgBouncer's file is
                    // found from the host.
                    std::fs::read_to_string(format!("/proc/{}/root{path}", p.pid))
                        .or_else(|_| std::fs::read_to_string(path))
                        .map(|t| parse_pgbouncer_ini(&t))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            self.proxies.insert(p.pid, ini);
        }
    }

    fn limit_of(&self, port: u16) -> Option<(u32, &'static str)> {
        if let Some(l) = self.config.limits.get(&port.to_string()) {
            return Some((*l, "configured"));
        }
        self.proxies
            .values()
            .find(|p| p.listen_port == Some(port))
            .and_then(|p| p.pool_size.map(|s| (s, "pgbouncer default_pool_size")))
    }

    fn upstream_mean(&self, fingerprint: &str) -> Option<f64> {
        let s = self.upstream.get(fingerprint)?;
        (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)
    }

    pub fn tick(
        &mut self,
        now_ms: f64,
        processes: &[ProcessView],
        host: &str,
        to_unix: impl Fn(u64) -> u64,
    ) -> Vec<Signal> {
        self.refresh_proxies(processes);
        let since = if self.last_tick_ms == 0.0 {
            now_ms - 5_000.0
        } else {
            self.last_tick_ms
        };
        self.last_tick_ms = now_ms;
        let mut signals = Vec::new();
        let ports: Vec<u16> = self.endpoints.keys().copied().collect();
        for port in ports {
            let Some(interval) = self.measure(port, since) else {
                continue;
            };
            let limit = self.limit_of(port);
            let unix_now = to_unix(now_ms as u64);
            if self.pressure.len() == 600 {
                self.pressure.pop_front();
            }
            self.pressure
                .push_back((unix_now, port, interval.in_flight, interval.p95));
            let holds = interval.p95 >= self.config.client_wait_ms
                && limit.is_none_or(|(l, _)| interval.in_flight >= l as usize);
            let clear = self.config.clear_s * 1000;
            let Some(e) = self.endpoints.get_mut(&port) else {
                continue;
            };
            let phase = e.sustain.update(holds, unix_now, 0, clear);
            if holds && interval.p95 > e.worst.0 {
                e.worst = (interval.p95, interval.in_flight);
            }
            let worst = e.worst;
            let pattern = format!("port {port}");
            match phase {
                Phase::Quiet | Phase::Pending => {}
                Phase::Ended => {
                    e.worst = (0.0, 0);
                    signals.push(Signal::Ended {
                        kind: FindingKind::PoolSaturation,
                        pattern,
                    });
                }
                // Between bad intervals the finding keeps the worst interval's report.
                Phase::Ongoing(_) if !holds => {}
                Phase::Onset(start) | Phase::Ongoing(start) => {
                    let report =
                        self.describe(port, pattern, &interval, worst, processes, host, start);
                    signals.push(if matches!(phase, Phase::Onset(_)) {
                        Signal::Onset(Box::new(report))
                    } else {
                        Signal::Ongoing(Box::new(report))
                    });
                }
            }
        }
        self.forget_old(now_ms, &to_unix);
        signals
    }

    /// What the clients of `port` saw since `since` (ms): their wait for a server
    /// connection, net of the queries' own server time where that is known.
    fn measure(&self, port: u16, since: f64) -> Option<Interval> {
        let e = self.endpoints.get(&port)?;
        let recent: Vec<&Seen> = e.seen.iter().filter(|s| s.finish_ms > since).collect();
        let mut waits: Vec<f64> = recent
            .iter()
            .map(|s| {
                let to_first = s.first_byte_ms - s.start_ms;
                (to_first - self.upstream_mean(&s.fingerprint).unwrap_or(0.0)).max(0.0)
            })
            .collect();
        waits.sort_by(f64::total_cmp);
        let p95 = waits
            .get(((waits.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0);
        let mut clients: BTreeMap<u32, usize> = BTreeMap::new();
        for s in &recent {
            *clients.entry(s.pid).or_default() += 1;
        }
        Some(Interval {
            p95,
            in_flight: max_in_flight(e.seen.iter().filter(|s| s.finish_ms > since)),
            has_upstream: recent
                .iter()
                .any(|s| self.upstream_mean(&s.fingerprint).is_some()),
            queries: recent.len(),
            clients,
        })
    }

    /// Forgets queries and pressure samples too old to matter, and endpoints gone quiet.
    fn forget_old(&mut self, now_ms: f64, to_unix: &impl Fn(u64) -> u64) {
        for e in self.endpoints.values_mut() {
            while e
                .seen
                .front()
                .is_some_and(|s| s.finish_ms + KEEP_MS < now_ms)
            {
                e.seen.pop_front();
            }
        }
        self.endpoints
            .retain(|_, e| !e.seen.is_empty() || e.sustain.active());
        while self
            .pressure
            .front()
            .is_some_and(|p| p.0 + KEEP_MS as u64 * 5 < to_unix(now_ms as u64))
        {
            self.pressure.pop_front();
        }
    }

    /// The finding for `port`: how long its clients waited, against which limit, and who
    /// the busiest clients were. `worst`: (wait p95 ms, in flight) of the worst interval.
    #[expect(clippy::too_many_arguments, reason = "one finding's facts, each named")]
    fn describe(
        &self,
        port: u16,
        pattern: String,
        interval: &Interval,
        (worst_wait, worst_in_flight): (f64, usize),
        processes: &[ProcessView],
        host: &str,
        start: u64,
    ) -> Report {
        let limit = self.limit_of(port);
        let is_proxy = self.proxies.values().any(|p| p.listen_port == Some(port));
        let endpoint = match (is_proxy, limit) {
            (true, Some((l, _))) => format!("port {port} (pgbouncer, pool size {l})"),
            (true, None) => format!("port {port} (pgbouncer)"),
            (false, Some((l, _))) => format!("port {port} (limit {l})"),
            (false, None) => format!("port {port}"),
        };
        let top_text = busiest_clients(&interval.clients, processes);
        let mut evidence = vec![
            Evidence::new("client_wait_p95", interval.p95, "ms"),
            Evidence::new("client_wait_p95_worst", worst_wait, "ms"),
            Evidence::new("threshold", self.config.client_wait_ms, "ms"),
            Evidence::new("in_flight_max", interval.in_flight as f64, "queries"),
            Evidence::new("in_flight_worst", worst_in_flight as f64, "queries"),
            Evidence::new("queries_in_interval", interval.queries as f64, "queries"),
            Evidence::new(
                "wait_net_of_server_time",
                if interval.has_upstream { 1.0 } else { 0.0 },
                "bool",
            ),
        ];
        if let Some((l, _)) = limit {
            evidence.push(Evidence::new("pool_limit", f64::from(l), "connections"));
        }
        let limit_text = match limit {
            Some((l, source)) => format!(" for a pool of {l} ({source})"),
            None => " (pool limit unknown: set detect.pool.limits)".to_string(),
        };
        Report {
            kind: FindingKind::PoolSaturation,
            pattern,
            severity: if worst_wait >= 5.0 * self.config.client_wait_ms {
                Severity::Critical
            } else {
                Severity::Warning
            },
            subject: Subject {
                host: host.to_string(),
                endpoint: Some(endpoint.clone()),
                tasks: top_text.clone(),
                ..Subject::default()
            },
            evidence,
            root_cause: format!(
                "Clients of {endpoint} waited {worst_wait:.0} ms (p95) for a server \
                 connection{}: up to {worst_in_flight} queries in flight{limit_text}. \
                 Busiest clients: {}.",
                if interval.has_upstream {
                    " beyond the queries' own server time"
                } else {
                    ""
                },
                if top_text.is_empty() {
                    "none seen".to_string()
                } else {
                    top_text.join("; ")
                }
            ),
            prevention: PREVENTION.to_string(),
            remediation: REMEDIATION.to_string(),
            annotations: Vec::new(),
            onset_unix_ms: start,
        }
    }

    /// Worst (in flight, wait p95 ms, port) seen in `[from, to]` (unix ms).
    pub fn pressure_between(&self, from: u64, to: u64) -> Option<(usize, f64, u16)> {
        self.pressure
            .iter()
            .filter(|p| p.0 >= from && p.0 <= to)
            .max_by(|a, b| a.3.total_cmp(&b.3).then(a.2.cmp(&b.2)))
            .map(|p| (p.2, p.3, p.1))
    }

    /// Processes that are connection poolers (their upstream queries are not clients').
    pub fn proxy_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.proxies.keys().copied()
    }
}

/// One interval of an endpoint, as its clients saw it.
struct Interval {
    /// Client wait for a server connection, p95, ms.
    p95: f64,
    in_flight: usize,
    /// Whether the wait is net of the queries' own server time (known upstream).
    has_upstream: bool,
    queries: usize,
    /// Queries per client process.
    clients: BTreeMap<u32, usize>,
}

const PREVENTION: &str = "Keep bursty clients (periodic jobs, herds) from taking every server \
                          connection at once: stagger them, give them their own smaller pool \
                          (a separate PgBouncer database or user with pool_size), and alert \
                          on client wait.";

const REMEDIATION: &str = "Find what fills the pool at these moments (see the cron and herd \
                           findings); raise the pool size only if the database has headroom.";

/// The five busiest clients, by command line where the process is still known.
fn busiest_clients(clients: &BTreeMap<u32, usize>, processes: &[ProcessView]) -> Vec<String> {
    let names: HashMap<u32, &ProcessView> = processes.iter().map(|p| (p.pid, p)).collect();
    let mut top: Vec<(u32, usize)> = clients.iter().map(|(p, n)| (*p, *n)).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.iter()
        .take(5)
        .map(|(pid, n)| match names.get(pid) {
            Some(p) => format!("{} (pid {pid}, {n} queries)", p.cmdline),
            None => format!("pid {pid} (exited, {n} queries)"),
        })
        .collect()
}

/// Most queries running at one moment.
fn max_in_flight<'a>(seen: impl Iterator<Item = &'a Seen>) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for s in seen {
        edges.push((s.start_ms, 1));
        edges.push((s.finish_ms, -1));
    }
    // Ends before starts at the same instant.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbouncer_pool_settings() {
        let info = parse_pgbouncer_ini(
            "[databases]\n* = host=127.0.0.1\n[pgbouncer]\nlisten_port = 6433\n\
             ; comment\npool_mode = transaction\ndefault_pool_size=3\n",
        );
        assert_eq!(info.listen_port, Some(6433));
        assert_eq!(info.pool_size, Some(3));
        assert_eq!(info.pool_mode.as_deref(), Some("transaction"));
        assert_eq!(parse_pgbouncer_ini("garbage\n[x").pool_size, Some(20));
    }

    fn q(pid: u32, fp: &str, start: f64, first: f64, end: f64) -> QueryObs {
        QueryObs {
            fingerprint: fp.into(),
            pid,
            conn: (pid, 5),
            server_port: Some(6432),
            started_ms: start,
            first_response_ms: Some(first),
            finished_ms: end,
            route: None,
            in_flight_routes: Vec::new(),
            call_site: None,
        }
    }

    #[test]
    fn waiting_clients_beyond_the_limit_are_saturation() {
        let mut d = DbPoolDetector::new(DbPoolConfig {
            client_wait_ms: 200.0,
            limits: [("6432".to_string(), 3)].into_iter().collect(),
            clear_s: 5,
        });
        d.tick(1_000.0, &[], "h", |ms| ms);
        // Four jobs hold the three connections; API queries wait ~900 ms behind them.
        for pid in 1..=4 {
            d.on_query(&q(pid, "job", 1_000.0, 1_990.0, 2_000.0));
        }
        for i in 0..10 {
            let s = 1_100.0 + f64::from(i);
            d.on_query(&q(100, "api", s, s + 900.0, s + 905.0));
        }
        let signals = d.tick(2_500.0, &[], "h", |ms| ms);
        let Some(Signal::Onset(r)) = signals.first() else {
            panic!("{signals:?}");
        };
        assert!(r.root_cause.contains("pool of 3"), "{}", r.root_cause);
        assert!(
            r.evidence
                .iter()
                .any(|e| e.name == "in_flight_max" && e.value >= 4.0)
        );
        // Quiet afterwards: over once the clear time passes.
        d.tick(4_000.0, &[], "h", |ms| ms);
        let later = d.tick(9_000.0, &[], "h", |ms| ms);
        assert!(
            matches!(later.first(), Some(Signal::Ended { .. })),
            "{later:?}"
        );
    }
}
