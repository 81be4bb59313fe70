//! What a herd finding says: copies by route and the line that issued them, the database
//! time spent on duplicates, and how to stop it recurring.
use std::collections::{BTreeMap, HashSet};

use super::{MAX_ROUTES, NO_ROUTE, PENDING_ROUTE, Start};
use crate::{
    detect::{
        finding::Report,
        naming::{QUERY_TEXT_CHARS, bounded, query_name},
    },
    model::{
        QueryStats,
        finding::{Evidence, FindingKind, RouteCopies, Severity, Subject},
    },
};

/// The route a copy is counted under.
fn route_label(s: &Start) -> &str {
    match (&s.route, s.attributed) {
        (Some(r), _) => r,
        (None, true) => NO_ROUTE,
        (None, false) => PENDING_ROUTE,
    }
}

/// `totals` plus one per copy under its route (bounded to `MAX_ROUTES` routes).
pub(super) fn with_copies(
    totals: &BTreeMap<String, u64>,
    copies: &[Start],
) -> BTreeMap<String, u64> {
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

pub(super) fn describe(
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
    let route_copies = copies_by_route(copies);
    let routes = traced_routes(all_route_copies);
    // A person reads the statement's text and id; the summary stays a label only.
    let name = query_name(fp, stats.map_or("", |q| q.normalized.as_str()));
    let first_ms = copies.first().map_or(0, |s| s.at_ms);
    let span_ms = copies.last().map_or(0, |s| s.at_ms) - first_ms;
    let mean_ms = total_ms / copies.len().max(1) as f64;
    let route_text = route_copies
        .iter()
        .map(|rc| match &rc.call_site {
            Some(site) => format!("{} ×{} (issued at {site})", rc.route, rc.copies),
            None => format!("{} ×{}", rc.route, rc.copies),
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

/// This burst's copies per route (the route whose request issued each copy), most first,
/// each with the line it was issued from (the first copy's that has one).
fn copies_by_route(copies: &[Start]) -> Vec<RouteCopies> {
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
    by_count
        .into_iter()
        .map(|(route, (copies, call_site))| RouteCopies {
            route: route.to_string(),
            copies,
            call_site,
        })
        .collect()
}

/// The routes that issued copies, leaving out the placeholders for copies without a known
/// request.
fn traced_routes(all_route_copies: &BTreeMap<String, u64>) -> Vec<String> {
    all_route_copies
        .keys()
        .filter(|r| *r != NO_ROUTE && *r != PENDING_ROUTE)
        .cloned()
        .collect()
}
