//! The query JSON the frontend writes (`datasource/fixtures/queries/*.json`): read per query,
//! so one malformed query (from a newer frontend, say) is an error on its own panel only.
//! Unknown keys are ignored; a field of the wrong type is named.
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Rows of a routes or queries table when the query gives no `limit`, and the most it may ask.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QueryType {
    Findings,
    Occurrences,
    Pools,
    Routes,
    Queries,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Query {
    pub query_type: Option<QueryType>,
    pub hosts: Vec<String>,
    pub kind: String,
    pub active_only: bool,
    pub finding_id: String,
    pub pool: String,
    pub route: String,
    pub text_contains: String,
    pub limit: Option<usize>,
}

/// The time range and interval Grafana gives the query: what the macros expand to.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub interval_ms: u64,
}

impl Query {
    /// The query from Grafana's JSON, macros expanded in its string fields. `query_type` is
    /// Grafana's own `queryType` (the same value), used when the JSON lacks one.
    pub fn parse(
        ref_id: &str,
        json: &serde_json::Value,
        query_type: &str,
        window: &Window,
    ) -> Result<Self> {
        let fail = |message: String| Error::Query {
            ref_id: ref_id.to_string(),
            message,
        };
        let mut query: Query = serde_path_to_error::deserialize(json).map_err(|e| {
            fail(format!(
                "field {} cannot be read: {} (this backend may be older than the editor that \
                 wrote the query)",
                e.path(),
                e.inner()
            ))
        })?;
        if query.query_type.is_none() && !query_type.is_empty() {
            query.query_type = serde_json::from_value(serde_json::Value::from(query_type))
                .map_err(|_| fail(format!("unknown queryType {query_type:?}")))
                .map(Some)?;
        }
        if query.query_type.is_none() {
            return Err(fail(
                "no queryType; want findings, occurrences, pools, routes or queries".into(),
            ));
        }
        for text in [
            &mut query.kind,
            &mut query.finding_id,
            &mut query.pool,
            &mut query.route,
            &mut query.text_contains,
        ] {
            *text = expand_macros(text, window);
        }
        for host in &mut query.hosts {
            *host = expand_macros(host, window);
        }
        // `$host` left unexpanded (All, or no such variable) means no filter.
        query.hosts.retain(|h| !h.is_empty() && !h.starts_with('$'));
        Ok(query)
    }

    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    /// True when the query asks for this host (no hosts = every host).
    pub fn wants_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }
}

/// `$__from` / `$__to` (Unix ms), `$__interval_ms` and `$__interval` (`30s`, `5m`, `1h`), as
/// Grafana expands them for its own datasources, so alert rules can use them too.
pub fn expand_macros(text: &str, window: &Window) -> String {
    if !text.contains("$__") {
        return text.to_string();
    }
    text.replace("$__from", &window.from.timestamp_millis().to_string())
        .replace("$__to", &window.to.timestamp_millis().to_string())
        .replace("$__interval_ms", &window.interval_ms.to_string())
        .replace("$__interval", &interval_text(window.interval_ms))
}

/// An interval as Grafana writes it: the largest unit that divides it.
fn interval_text(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::TimeZone as _;
    use serde_json::json;

    use super::*;

    fn window() -> Window {
        Window {
            from: Utc
                .timestamp_millis_opt(1_700_000_000_000)
                .single()
                .expect("time"),
            to: Utc
                .timestamp_millis_opt(1_700_000_600_000)
                .single()
                .expect("time"),
            interval_ms: 30_000,
        }
    }

    /// Every query the frontend's editors write (the shared fixtures) reads here, so the two
    /// cannot drift apart.
    #[test]
    fn every_fixture_deserializes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/queries");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("fixture");
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let query = Query::parse("A", &json, "", &window())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let want: QueryType =
                serde_json::from_value(json!(stem)).expect("fixtures are named by query type");
            assert_eq!(query.query_type, Some(want), "{}", path.display());
            seen.push(want);
        }
        seen.sort_by_key(|t| *t as u8);
        assert_eq!(
            seen,
            vec![
                QueryType::Findings,
                QueryType::Occurrences,
                QueryType::Pools,
                QueryType::Routes,
                QueryType::Queries
            ],
            "one fixture per query type"
        );
    }

    #[test]
    fn fixture_fields_arrive() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/queries");
        let read = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).expect("fixture");
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            Query::parse("A", &json, "", &window()).expect("parses")
        };
        let q = read("queries.json");
        assert_eq!(q.hosts, vec!["node-a", "node-b"]);
        assert_eq!(q.route, "GET /invoices/{id}");
        assert_eq!(q.text_contains, "invoices");
        assert_eq!(q.limit(), 50);
        let f = read("findings.json");
        assert_eq!(f.kind, "starvation");
        assert!(f.hosts.is_empty(), "an unexpanded $host is no filter");
    }

    #[test]
    fn unknown_keys_are_ignored_and_wrong_types_named() {
        let q = Query::parse(
            "B",
            &json!({"queryType": "pools", "datasource": {"uid": "x"}, "intervalMs": 1000,
                    "futureField": [1, 2]}),
            "",
            &window(),
        )
        .expect("unknown keys ignored");
        assert_eq!(q.query_type, Some(QueryType::Pools));
        let err = Query::parse(
            "B",
            &json!({"queryType": "findings", "activeOnly": "yes"}),
            "",
            &window(),
        )
        .expect_err("wrong type")
        .to_string();
        assert!(
            err.contains("query B") && err.contains("activeOnly"),
            "{err}"
        );
        let err = Query::parse("C", &json!({"queryType": "histograms"}), "", &window())
            .expect_err("unknown type")
            .to_string();
        assert!(err.contains("queryType"), "{err}");
        let err = Query::parse("D", &json!({}), "", &window())
            .expect_err("no type")
            .to_string();
        assert!(err.contains("no queryType"), "{err}");
        let q = Query::parse("E", &json!({}), "routes", &window()).expect("Grafana's queryType");
        assert_eq!(q.query_type, Some(QueryType::Routes));
        assert_eq!(
            Query::parse(
                "F",
                &json!({"queryType": "queries", "limit": 5000}),
                "",
                &window()
            )
            .expect("parses")
            .limit(),
            MAX_LIMIT
        );
    }

    #[test]
    fn macros_expand_in_string_fields() {
        let w = window();
        assert_eq!(
            expand_macros(
                "from $__from to $__to every $__interval ($__interval_ms ms)",
                &w
            ),
            "from 1700000000000 to 1700000600000 every 30s (30000 ms)"
        );
        let q = Query::parse(
            "A",
            &json!({"queryType": "queries", "textContains": "at $__interval", "pool": "$__to"}),
            "",
            &w,
        )
        .expect("parses");
        assert_eq!(q.text_contains, "at 30s");
        assert_eq!(q.pool, "1700000600000");
        for (ms, text) in [
            (1_500, "1500ms"),
            (60_000, "1m"),
            (7_200_000, "2h"),
            (90_000, "90s"),
        ] {
            assert_eq!(interval_text(ms), text);
        }
    }
}
