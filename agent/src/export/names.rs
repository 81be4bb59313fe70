//! The metrics herdwatch exports, named once: OpenTelemetry semantic conventions first,
//! `herdwatch.*` for the rest. The Prometheus endpoint derives its names from these with the
//! OTLP→Prometheus translation rules, so dashboards and alert rules serve both paths.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic sum.
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    /// UCUM unit as OpenTelemetry writes it (`s`, `By`, `1`, `{request}`).
    pub unit: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! metric {
    ($ident:ident, $name:literal, $unit:literal, $kind:ident, $help:literal) => {
        pub const $ident: MetricDef = MetricDef {
            name: $name,
            unit: $unit,
            kind: Kind::$kind,
            help: $help,
        };
    };
}

metric!(
    HTTP_SERVER_DURATION,
    "http.server.request.duration",
    "s",
    Histogram,
    "Duration of HTTP server requests, from the request's first byte read to its response written."
);
metric!(
    HTTP_SERVER_ACTIVE,
    "http.server.active_requests",
    "{request}",
    Gauge,
    "HTTP requests read and not yet answered."
);
metric!(
    DB_CLIENT_DURATION,
    "db.client.operation.duration",
    "s",
    Histogram,
    "Duration of PostgreSQL operations, from the query sent to its last response byte."
);
metric!(
    DB_CLIENT_ERRORS,
    "herdwatch.db.client.errors",
    "{error}",
    Counter,
    "PostgreSQL operations that failed, by SQLSTATE."
);
metric!(
    ROUTE_CPU,
    "herdwatch.route.cpu.time",
    "s",
    Counter,
    "CPU the serving worker threads spent on a route's requests."
);
metric!(
    ROUTE_DB_WAIT,
    "herdwatch.route.db.wait.time",
    "s",
    Counter,
    "Time a route's requests waited on the PostgreSQL queries they issued."
);
metric!(
    PROCESS_CPU_TIME,
    "process.cpu.time",
    "s",
    Counter,
    "CPU used by a pool's master and workers since the agent started watching; workers that exit keep counting in it."
);
metric!(
    RUN_QUEUE_DELAY,
    "herdwatch.cpu.run_queue.delay",
    "s",
    Counter,
    "Time a pool's runnable threads waited for a CPU."
);
metric!(
    WORKERS_BUSY,
    "herdwatch.worker.busy",
    "{worker}",
    Gauge,
    "Workers of a pool serving a request (running, blocked, or awaiting the database)."
);
metric!(
    WORKERS_IDLE,
    "herdwatch.worker.idle",
    "{worker}",
    Gauge,
    "Workers of a pool waiting for a request."
);
metric!(
    ACCEPT_QUEUE,
    "herdwatch.accept.queue",
    "{connection}",
    Gauge,
    "Connections accepted by the kernel and not yet by a worker, summed over a pool's TCP listeners."
);
metric!(
    HOST_CPU,
    "herdwatch.host.cpu.utilization",
    "1",
    Gauge,
    "Share of all CPUs busy over the last interval."
);
metric!(
    FINDING_ACTIVE,
    "herdwatch.finding.active",
    "{finding}",
    Gauge,
    "1 while a finding's pattern is occurring, 0 after it ended."
);
metric!(
    FINDING_OCCURRENCES,
    "herdwatch.finding.occurrences",
    "{occurrence}",
    Counter,
    "How many times a finding's pattern has occurred."
);
metric!(
    FINDING_INFO,
    "herdwatch.finding.info",
    "{finding}",
    Gauge,
    "Always 1; carries a finding's root-cause sentence and proposal as labels."
);
metric!(
    AGENT_DROPS,
    "herdwatch.agent.dropped",
    "{event}",
    Counter,
    "Events the agent lost, by where they were lost."
);
metric!(
    AGENT_MEMORY,
    "herdwatch.agent.memory.resident",
    "By",
    Gauge,
    "Resident memory of the agent process."
);
metric!(
    AGENT_TABLE_ENTRIES,
    "herdwatch.agent.table.entries",
    "{entry}",
    Gauge,
    "Entries in each of the agent's per-process, per-thread and per-connection tables."
);

/// Reads one nanosecond total off a route's statistics.
pub type RouteNanos = fn(&crate::model::RouteStats) -> u64;

/// The per-route time counters and the field each one reads.
pub const ROUTE_TIMES: [(&MetricDef, RouteNanos); 2] = [
    (&ROUTE_CPU, |r| r.cpu_ns),
    (&ROUTE_DB_WAIT, |r| r.db_wait_ns),
];

/// A pool's cumulative time counters: its samples as (`cpu.mode`, nanoseconds).
pub type PoolNanos = fn(&crate::model::PoolView) -> Vec<(Option<&'static str>, u64)>;

pub const POOL_TIMES: [(&MetricDef, PoolNanos); 2] = [
    (&PROCESS_CPU_TIME, |p| {
        vec![
            (Some("user"), p.cpu_user_ns),
            (Some("system"), p.cpu_system_ns),
        ]
    }),
    (&RUN_QUEUE_DELAY, |p| vec![(None, p.run_delay_ns)]),
];

/// Every metric, for documentation and the OTLP/Prometheus comparison.
pub const ALL: [MetricDef; 18] = [
    HTTP_SERVER_DURATION,
    HTTP_SERVER_ACTIVE,
    DB_CLIENT_DURATION,
    DB_CLIENT_ERRORS,
    ROUTE_CPU,
    ROUTE_DB_WAIT,
    PROCESS_CPU_TIME,
    RUN_QUEUE_DELAY,
    WORKERS_BUSY,
    WORKERS_IDLE,
    ACCEPT_QUEUE,
    HOST_CPU,
    FINDING_ACTIVE,
    FINDING_OCCURRENCES,
    FINDING_INFO,
    AGENT_DROPS,
    AGENT_MEMORY,
    AGENT_TABLE_ENTRIES,
];

/// The Prometheus name the OTLP→Prometheus translation gives a metric: invalid characters
/// become `_`, the unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`, `1` on a gauge →
/// `_ratio`, annotations in braces → nothing), and counters end in `_total`.
pub fn prometheus_name(def: &MetricDef) -> String {
    let mut name = sanitize(def.name);
    let unit = match def.unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" if def.kind == Kind::Gauge => "ratio",
        _ => "",
    };
    if !unit.is_empty() && !name.ends_with(unit) {
        name.push('_');
        name.push_str(unit);
    }
    if def.kind == Kind::Counter && !name.ends_with("_total") {
        name.push_str("_total");
    }
    name
}

/// An attribute key as a Prometheus label name (`http.route` → `http_route`).
pub fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_follows_the_otlp_prometheus_rules() {
        assert_eq!(
            prometheus_name(&HTTP_SERVER_DURATION),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            prometheus_name(&ROUTE_CPU),
            "herdwatch_route_cpu_time_seconds_total"
        );
        assert_eq!(
            prometheus_name(&HTTP_SERVER_ACTIVE),
            "http_server_active_requests"
        );
        assert_eq!(
            prometheus_name(&HOST_CPU),
            "herdwatch_host_cpu_utilization_ratio"
        );
        assert_eq!(prometheus_name(&FINDING_ACTIVE), "herdwatch_finding_active");
        assert_eq!(
            prometheus_name(&AGENT_DROPS),
            "herdwatch_agent_dropped_total"
        );
        assert_eq!(
            prometheus_name(&AGENT_MEMORY),
            "herdwatch_agent_memory_resident_bytes"
        );
        assert_eq!(
            prometheus_name(&AGENT_TABLE_ENTRIES),
            "herdwatch_agent_table_entries"
        );
        assert_eq!(sanitize("db.query.summary"), "db_query_summary");
    }
}
