//! Findings across the fleet: the same finding id seen by several agents is one row, with the
//! hosts that saw it and their occurrences summed — the fleet-wide view no single agent has.
//! And its occurrences over time, binned from each agent's recent onsets.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeZone as _, Utc};
use grafana_plugin_sdk::{
    data::{Field, Frame},
    prelude::*,
};
use herdwatch_proto::v1 as pb;

use crate::query::{Query, Window};

/// Most series an occurrences query returns, and most bins per series.
const MAX_SERIES: usize = 200;
const MAX_BINS: usize = 2_000;

/// One finding as the fleet has it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetFinding {
    pub id: String,
    pub kind: String,
    pub severity: String,
    pub active: bool,
    pub hosts: BTreeSet<String>,
    pub occurrences: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub pool: Option<String>,
    pub route: Option<String>,
    pub query_summary: Option<String>,
    pub call_site: Option<String>,
    pub root_cause: String,
    /// Every host's recent onsets together (one host's occurrence is one onset).
    pub onsets_ms: Vec<u64>,
}

/// The kind as the query JSON and the frames name it (`thundering_herd`).
pub fn kind_name(kind: i32) -> String {
    match pb::FindingKind::try_from(kind) {
        Ok(pb::FindingKind::Saturation) => "saturation".into(),
        Ok(pb::FindingKind::Starvation) => "starvation".into(),
        Ok(pb::FindingKind::ThunderingHerd) => "thundering_herd".into(),
        Ok(pb::FindingKind::CronAlignment) => "cron_alignment".into(),
        Ok(pb::FindingKind::PoolSaturation) => "pool_saturation".into(),
        // From a newer agent: reported as its number, never guessed.
        _ => format!("kind {kind}"),
    }
}

pub fn severity_name(severity: i32) -> String {
    match pb::Severity::try_from(severity) {
        Ok(pb::Severity::Info) => "info".into(),
        Ok(pb::Severity::Warning) => "warning".into(),
        Ok(pb::Severity::Critical) => "critical".into(),
        _ => format!("severity {severity}"),
    }
}

fn severity_rank(name: &str) -> u8 {
    match name {
        "critical" => 3,
        "warning" => 2,
        "info" => 1,
        _ => 0,
    }
}

/// True when the query keeps a finding of this kind. The short names the agent's metric
/// labels and alert rules use (`herd`, `cron`, `pool`) select the same kinds, so a
/// variable filled from Prometheus' `finding_kind` works on these panels too.
fn wants_kind(query: &Query, kind: &str) -> bool {
    let short = match kind {
        "thundering_herd" => "herd",
        "cron_alignment" => "cron",
        "pool_saturation" => "pool",
        other => other,
    };
    query.kind.is_empty() || query.kind == kind || query.kind == short
}

/// Each host's findings, merged by id. `answers` are (host, findings) of the agents that
/// answered; the query's hosts, kind, activeOnly and findingId filter them.
pub fn merge<'a>(
    answers: impl IntoIterator<Item = (&'a str, &'a [pb::Finding])>,
    query: &Query,
) -> Vec<FleetFinding> {
    let mut by_id: BTreeMap<String, FleetFinding> = BTreeMap::new();
    for (host, findings) in answers {
        if !query.wants_host(host) {
            continue;
        }
        for f in findings {
            let kind = kind_name(f.kind);
            if !wants_kind(query, &kind)
                || (!query.finding_id.is_empty() && query.finding_id != f.id)
            {
                continue;
            }
            let subject = f.subject.clone().unwrap_or_default();
            let call_site = subject
                .route_copies
                .iter()
                .find_map(|c| c.call_site.clone());
            let seen = FleetFinding {
                id: f.id.clone(),
                kind,
                severity: severity_name(f.severity),
                active: f.active,
                hosts: BTreeSet::from([host.to_string()]),
                occurrences: f.occurrences,
                first_seen_ms: f.first_seen_unix_ms,
                last_seen_ms: f.last_seen_unix_ms,
                pool: subject.pool,
                route: subject.route,
                query_summary: subject.query_summary,
                call_site,
                root_cause: f.root_cause.clone(),
                onsets_ms: f.recent_onsets_unix_ms.clone(),
            };
            match by_id.get_mut(&f.id) {
                None => {
                    by_id.insert(f.id.clone(), seen);
                }
                Some(row) => absorb(row, seen),
            }
        }
    }
    let mut rows: Vec<FleetFinding> = by_id
        .into_values()
        .filter(|f| !query.active_only || f.active)
        .collect();
    // Active first, then the most recently seen.
    rows.sort_by(|a, b| {
        b.active
            .cmp(&a.active)
            .then(b.last_seen_ms.cmp(&a.last_seen_ms))
            .then(a.id.cmp(&b.id))
    });
    rows
}

/// Another host's view of the same finding: hosts joined, occurrences summed, the widest
/// first/last seen, the worst severity, and the text of the host that saw it last.
fn absorb(row: &mut FleetFinding, other: FleetFinding) {
    row.hosts.extend(other.hosts);
    row.occurrences = row.occurrences.saturating_add(other.occurrences);
    row.active |= other.active;
    row.first_seen_ms = row.first_seen_ms.min(other.first_seen_ms);
    if severity_rank(&other.severity) > severity_rank(&row.severity) {
        row.severity = other.severity.clone();
    }
    row.onsets_ms.extend(other.onsets_ms);
    if other.last_seen_ms > row.last_seen_ms {
        row.last_seen_ms = other.last_seen_ms;
        row.root_cause = other.root_cause;
        row.pool = other.pool.or(row.pool.take());
        row.route = other.route.or(row.route.take());
        row.query_summary = other.query_summary.or(row.query_summary.take());
        row.call_site = other.call_site.or(row.call_site.take());
    }
}

pub fn time(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
        .unwrap_or_default()
}

/// The findings table.
pub fn table(rows: &[FleetFinding]) -> Frame {
    let text = |f: fn(&FleetFinding) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let opt = |f: fn(&FleetFinding) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    Frame::new("findings").with_fields([
        text(|r| r.id.clone()).into_field("id"),
        text(|r| r.kind.clone()).into_field("kind"),
        text(|r| r.severity.clone()).into_field("severity"),
        rows.iter()
            .map(|r| r.active)
            .collect::<Vec<_>>()
            .into_field("active"),
        text(|r| r.hosts.iter().cloned().collect::<Vec<_>>().join(", ")).into_field("hosts"),
        rows.iter()
            .map(|r| r.hosts.len() as u64)
            .collect::<Vec<_>>()
            .into_field("host_count"),
        rows.iter()
            .map(|r| r.occurrences)
            .collect::<Vec<_>>()
            .into_field("occurrences"),
        rows.iter()
            .map(|r| time(r.first_seen_ms))
            .collect::<Vec<_>>()
            .into_field("first_seen"),
        rows.iter()
            .map(|r| time(r.last_seen_ms))
            .collect::<Vec<_>>()
            .into_field("last_seen"),
        opt(|r| r.pool.clone()).into_opt_field("pool"),
        opt(|r| r.route.clone()).into_opt_field("route"),
        opt(|r| r.query_summary.clone()).into_opt_field("query_summary"),
        opt(|r| r.call_site.clone()).into_opt_field("call_site"),
        text(|r| r.root_cause.clone()).into_field("root_cause"),
    ])
}

/// The width of one bin: the query's interval, widened so no series exceeds `MAX_BINS`.
pub fn bin_ms(window: &Window) -> u64 {
    let span = u64::try_from((window.to - window.from).num_milliseconds()).unwrap_or(0);
    window
        .interval_ms
        .max(1_000)
        .max(span.div_ceil(MAX_BINS as u64))
}

/// Onsets counted per bin of `bin_ms` from `window.from` (aligned to the bin width) to
/// `window.to`: (bin start, count), every bin present so the series has no gaps.
pub fn bin(onsets_ms: &[u64], window: &Window, bin_ms: u64) -> Vec<(u64, u64)> {
    let from = u64::try_from(window.from.timestamp_millis()).unwrap_or(0);
    let to = u64::try_from(window.to.timestamp_millis()).unwrap_or(0);
    if to < from || bin_ms == 0 {
        return Vec::new();
    }
    let start = from - from % bin_ms;
    let bins = usize::try_from((to - start) / bin_ms + 1)
        .unwrap_or(MAX_BINS)
        .min(MAX_BINS + 1);
    let mut counts = vec![0u64; bins];
    for &t in onsets_ms {
        if t < from || t > to {
            continue;
        }
        if let Some(c) = usize::try_from((t - start) / bin_ms)
            .ok()
            .and_then(|i| counts.get_mut(i))
        {
            *c += 1;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (start + i as u64 * bin_ms, c))
        .collect()
}

/// One time series per finding: occurrences (onsets on any host) per bin.
pub fn occurrence_frames(rows: &[FleetFinding], window: &Window) -> Vec<Frame> {
    let width = bin_ms(window);
    rows.iter()
        .take(MAX_SERIES)
        .map(|row| {
            let bins = bin(&row.onsets_ms, window, width);
            let labels = BTreeMap::from([
                ("finding_id".to_string(), row.id.clone()),
                ("kind".to_string(), row.kind.clone()),
            ]);
            let value: Field = bins
                .iter()
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
                .into_field("occurrences")
                .with_labels(labels);
            Frame::new(row.id.clone()).with_fields([
                bins.iter()
                    .map(|(t, _)| time(*t))
                    .collect::<Vec<_>>()
                    .into_field("time"),
                value,
            ])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_kind_is_selected_by_its_api_name_or_its_metric_label() {
        let with_kind = |kind: &str| Query {
            kind: kind.into(),
            ..Query::default()
        };
        assert!(wants_kind(&with_kind(""), "cron_alignment"));
        assert!(wants_kind(&with_kind("thundering_herd"), "thundering_herd"));
        assert!(wants_kind(&with_kind("herd"), "thundering_herd"));
        assert!(wants_kind(&with_kind("pool"), "pool_saturation"));
        assert!(!wants_kind(&with_kind("herd"), "cron_alignment"));
        assert!(!wants_kind(&with_kind("saturation"), "pool_saturation"));
    }

    fn finding(id: &str, kind: pb::FindingKind, occurrences: u64, last: u64) -> pb::Finding {
        pb::Finding {
            id: id.into(),
            kind: kind as i32,
            severity: pb::Severity::Warning as i32,
            active: false,
            occurrences,
            first_seen_unix_ms: last - 1000,
            last_seen_unix_ms: last,
            root_cause: format!("cause seen at {last}"),
            subject: Some(pb::Subject {
                pool: Some("gunicorn shop.app:app".into()),
                ..Default::default()
            }),
            recent_onsets_unix_ms: vec![last - 1000, last],
            ..Default::default()
        }
    }

    fn window(from: u64, to: u64, interval_ms: u64) -> Window {
        Window {
            from: time(from),
            to: time(to),
            interval_ms,
        }
    }

    fn query(json: serde_json::Value) -> Query {
        Query::parse("A", &json, "", &window(0, 1, 1000)).expect("query")
    }

    #[test]
    fn the_same_id_on_two_hosts_is_one_row() {
        let mut on_a = vec![
            finding("starvation-1", pb::FindingKind::Starvation, 2, 10_000),
            finding("herd-2", pb::FindingKind::ThunderingHerd, 1, 9_000),
        ];
        on_a[0].severity = pb::Severity::Critical as i32;
        let mut on_b = vec![finding(
            "starvation-1",
            pb::FindingKind::Starvation,
            3,
            20_000,
        )];
        on_b[0].active = true;
        let rows = merge(
            [("node-a", on_a.as_slice()), ("node-b", on_b.as_slice())],
            &query(json!({"queryType": "findings"})),
        );
        assert_eq!(rows.len(), 2);
        let s = &rows[0];
        assert_eq!(s.id, "starvation-1");
        assert_eq!(
            s.hosts.iter().cloned().collect::<Vec<_>>(),
            vec!["node-a", "node-b"]
        );
        assert_eq!(s.occurrences, 5);
        assert!(s.active, "active on any host is active");
        assert_eq!(s.severity, "critical", "the worst severity");
        assert_eq!((s.first_seen_ms, s.last_seen_ms), (9_000, 20_000));
        assert_eq!(s.root_cause, "cause seen at 20000", "the latest text");
        assert_eq!(s.onsets_ms.len(), 4);
        assert_eq!(rows[1].hosts.len(), 1);
        let frame = table(&rows);
        frame.check().expect("a valid frame");
        assert_eq!(frame.fields().len(), 14);
    }

    #[test]
    fn filters_apply_before_merging() {
        let on_a = vec![finding(
            "starvation-1",
            pb::FindingKind::Starvation,
            2,
            10_000,
        )];
        let on_b = vec![
            finding("starvation-1", pb::FindingKind::Starvation, 3, 20_000),
            finding("herd-2", pb::FindingKind::ThunderingHerd, 1, 9_000),
        ];
        let answers = [("node-a", on_a.as_slice()), ("node-b", on_b.as_slice())];
        let rows = merge(
            answers,
            &query(json!({"queryType": "findings", "hosts": ["node-a"]})),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].occurrences, 2);
        let rows = merge(
            answers,
            &query(json!({"queryType": "findings", "kind": "thundering_herd"})),
        );
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["herd-2"]
        );
        let rows = merge(
            answers,
            &query(json!({"queryType": "findings", "activeOnly": true})),
        );
        assert!(rows.is_empty());
        let rows = merge(
            answers,
            &query(json!({"queryType": "occurrences", "findingId": "herd-2"})),
        );
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn onsets_are_binned_within_the_range() {
        let w = window(60_000, 180_000, 30_000);
        // Bins start at 60 s, 90 s, 120 s, 150 s, 180 s; 59 s and 181 s are out of range.
        let bins = bin(
            &[59_000, 60_000, 61_000, 125_000, 180_000, 181_000],
            &w,
            30_000,
        );
        assert_eq!(
            bins,
            vec![
                (60_000, 2),
                (90_000, 0),
                (120_000, 1),
                (150_000, 0),
                (180_000, 1)
            ]
        );
        // An unaligned range starts at the bin that holds `from`.
        let bins = bin(&[70_000], &window(65_000, 100_000, 30_000), 30_000);
        assert_eq!(bins, vec![(60_000, 1), (90_000, 0)]);
        // A long range with a short interval is widened to at most MAX_BINS bins.
        let long = window(0, 86_400_000, 1_000);
        let width = bin_ms(&long);
        assert!(width >= 86_400_000 / MAX_BINS as u64);
        assert!(bin(&[], &long, width).len() <= MAX_BINS + 1);
        assert!(bin(&[1], &window(10, 5, 1000), 1000).is_empty());
    }

    #[test]
    fn one_series_per_finding() {
        let on_a = vec![finding(
            "starvation-1",
            pb::FindingKind::Starvation,
            2,
            100_000,
        )];
        let on_b = vec![finding(
            "starvation-1",
            pb::FindingKind::Starvation,
            2,
            100_000,
        )];
        let rows = merge(
            [("node-a", on_a.as_slice()), ("node-b", on_b.as_slice())],
            &query(json!({"queryType": "occurrences"})),
        );
        let frames = occurrence_frames(&rows, &window(0, 120_000, 60_000));
        assert_eq!(frames.len(), 1);
        frames[0].check().expect("valid");
        assert_eq!(frames[0].fields()[1].labels["finding_id"], "starvation-1");
    }

    #[test]
    fn unknown_enums_are_reported_by_number() {
        assert_eq!(kind_name(42), "kind 42");
        assert_eq!(severity_name(9), "severity 9");
        assert_eq!(
            kind_name(pb::FindingKind::PoolSaturation as i32),
            "pool_saturation"
        );
    }
}
