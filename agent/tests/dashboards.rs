//! The shipped Grafana dashboards and provisioning: well-formed (unique uids, the schema of the
//! Grafana line the frontend pins, every datasource through a variable the dashboard defines,
//! herdwatch targets with exactly the query model's fields), and every Prometheus panel query —
//! its variables resolved by `label_values` as Grafana resolves them — returns data from Debian's
//! Prometheus scraping a real agent during the thundering-herd replay (uvicorn + PostgreSQL).
//! The herdwatch-datasource targets go through the plugin's `QueryData` in the datasource's own
//! tests (`common::dashboards::targets_of_type`).
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    dashboards::{self, Dashboard, HERDWATCH, PROMETHEUS},
    load::Load,
    postgres::Postgres,
    *,
};
use herdwatch::{Config, model::FindingKind};
use serde_json::Value;

/// `schemaVersion` of Grafana 12.x dashboards, the line `datasource/package.json` pins
/// (`@grafana/*` 12.4); Grafana migrates lower versions up, never down.
const SCHEMA_VERSION: u64 = 41;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn shipped() -> Vec<Dashboard> {
    let all = dashboards::load(&dashboards::dir(env!("CARGO_MANIFEST_DIR")));
    assert!(
        all.len() >= 3,
        "fleet overview, pool detail, findings history"
    );
    all
}

/// Datasource variables of a dashboard: name → plugin type.
fn datasource_variables(d: &Dashboard) -> BTreeMap<String, String> {
    d.json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "datasource")
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["query"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A `datasource` reference must name a variable of the dashboard of the same type.
fn check_reference(d: &Dashboard, vars: &BTreeMap<String, String>, what: &str, ds: &Value) {
    let (ty, uid) = (
        ds["type"].as_str().unwrap_or_default(),
        ds["uid"].as_str().unwrap_or_default(),
    );
    let name = uid
        .strip_prefix("${")
        .and_then(|u| u.strip_suffix('}'))
        .unwrap_or_else(|| {
            panic!(
                "{}: {what} names datasource {uid:?}, not a variable",
                d.uid()
            )
        });
    assert_eq!(
        vars.get(name).map(String::as_str),
        Some(ty),
        "{}: {what} uses ${{{name}}} of type {ty}; the dashboard's datasource variables: {vars:?}",
        d.uid()
    );
}

#[test]
fn every_dashboard_parses_with_a_unique_uid_tags_and_links() {
    let all = shipped();
    let mut uids = BTreeSet::new();
    for d in &all {
        let uid = d.uid();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{}: uid {uid:?}",
            d.file.display()
        );
        assert!(uids.insert(uid.to_string()), "uid {uid} used twice");
        assert_eq!(
            d.json["schemaVersion"].as_u64(),
            Some(SCHEMA_VERSION),
            "{uid}"
        );
        assert!(
            d.json["id"].is_null(),
            "{uid}: no instance id in a shipped dashboard"
        );
        let tags = d.json["tags"].as_array().expect("tags");
        assert!(
            tags.iter().any(|t| t == "herdwatch"),
            "{uid}: tagged herdwatch"
        );
        // The tag link lists every herdwatch dashboard: each reaches the others.
        let links = d.json["links"].as_array().expect("links");
        assert!(
            links.iter().any(|l| l["type"] == "dashboards"
                && l["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "herdwatch"))),
            "{uid}: no link to the other herdwatch dashboards"
        );
        let mut ids = BTreeSet::new();
        for p in d.panels() {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{uid}: panel id twice"
            );
            assert!(
                !p["targets"].as_array().is_none_or(Vec::is_empty),
                "{uid}: {} has no query",
                p["title"]
            );
        }
    }
    for uid in [
        "herdwatch-fleet-overview",
        "herdwatch-pool-detail",
        "herdwatch-findings-history",
    ] {
        assert!(uids.contains(uid), "{uid} missing: {uids:?}");
    }
}

#[test]
fn every_datasource_is_a_variable_the_dashboard_defines() {
    for d in &shipped() {
        let vars = datasource_variables(d);
        assert!(!vars.is_empty(), "{}: no datasource variable", d.uid());
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or_default();
            check_reference(d, &vars, &format!("panel {title:?}"), &p["datasource"]);
            for t in p["targets"].as_array().into_iter().flatten() {
                check_reference(
                    d,
                    &vars,
                    &format!("a target of {title:?}"),
                    &t["datasource"],
                );
                assert_eq!(
                    t["datasource"],
                    p["datasource"],
                    "{}: {title:?} mixes datasources",
                    d.uid()
                );
            }
        }
        for v in d.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if v["type"] == "query" {
                check_reference(
                    d,
                    &vars,
                    &format!("variable {}", v["name"]),
                    &v["datasource"],
                );
            }
        }
    }
}

/// The query model's fixtures (`datasource/fixtures/queries/<queryType>.json`) by query type.
fn fixtures() -> BTreeMap<String, Value> {
    let dir = repo().join("datasource/fixtures/queries");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture"))
                .expect("fixture JSON");
            (v["queryType"].as_str().expect("queryType").to_string(), v)
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[test]
fn herdwatch_targets_carry_exactly_the_query_models_fields() {
    let all = shipped();
    let fixtures = fixtures();
    let targets = dashboards::targets_of_type(&all, HERDWATCH);
    assert!(
        targets.len() >= 5,
        "fleet overview and findings history query the fleet"
    );
    let mut types = BTreeSet::new();
    for t in &targets {
        let where_ = format!("{} / {}", t.dashboard, t.panel_title);
        let query_type = t.target["queryType"].as_str().unwrap_or_default();
        let fixture = fixtures
            .get(query_type)
            .unwrap_or_else(|| panic!("{where_}: queryType {query_type:?} has no fixture"));
        let fields = t.target.as_object().expect("a target is an object");
        let want = fixture.as_object().expect("a fixture is an object");
        let have: BTreeSet<&String> = fields.keys().filter(|k| *k != "datasource").collect();
        assert_eq!(
            have,
            want.keys().collect(),
            "{where_}: fields differ from the fixture"
        );
        for (key, value) in want {
            assert_eq!(json_kind(&fields[key]), json_kind(value), "{where_}: {key}");
        }
        // A table of findings, a time series of occurrences: the frame shape the plugin returns.
        let panel = match query_type {
            "occurrences" => "timeseries",
            _ => "table",
        };
        assert_eq!(t.panel_type, panel, "{where_}");
        types.insert(query_type);
    }
    for want in ["findings", "occurrences", "pools"] {
        assert!(types.contains(want), "no {want} panel");
    }
}

/// YAML files as JSON, read by PyYAML from the test venv (as tests/deploy.rs reads manifests).
fn yaml(files: &[PathBuf]) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  json.dump([yaml.safe_load(open(f)) for f in sys.argv[1:]], sys.stdout)";
    let out = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .args(files)
        .output()
        .expect("the test venv's python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

#[test]
fn provisioning_names_the_fleet_service_and_the_dashboards() {
    let dir = repo().join("dashboards/provisioning");
    let docs = yaml(&[
        dir.join("datasources.yaml"),
        dir.join("dashboards.yaml"),
        repo().join("deploy/kubernetes/service.yaml"),
    ]);
    let (datasources, providers, service) = (&docs[0], &docs[1], &docs[2]);
    assert_eq!(datasources["apiVersion"], 1);
    let by_type = |ty: &str| -> &Value {
        let found: Vec<&Value> = datasources["datasources"]
            .as_array()
            .expect("datasources")
            .iter()
            .filter(|d| d["type"] == ty)
            .collect();
        assert_eq!(found.len(), 1, "one {ty} datasource");
        found[0]
    };
    // The fleet: every agent pod behind the headless Service, on its API port.
    let port = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "grpc-api")
        .and_then(|p| p["port"].as_u64())
        .expect("the Service's grpc-api port");
    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    let want = format!(
        "{}.{}.svc.cluster.local:{port}",
        service["metadata"]["name"].as_str().expect("name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
    );
    let fleet = by_type(HERDWATCH);
    assert_eq!(fleet["jsonData"]["dnsName"], want.as_str());
    assert!(
        fleet["secureJsonData"]["token"].is_string(),
        "the agents want a token"
    );
    let prometheus = by_type(PROMETHEUS);
    assert!(
        prometheus["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http"))
    );
    // The dashboards' datasource variables default to nothing; the provisioned uids exist for
    // the types they ask for.
    let types: BTreeSet<String> = shipped()
        .iter()
        .flat_map(datasource_variables)
        .map(|(_, ty)| ty)
        .collect();
    for ty in &types {
        by_type(ty);
    }
    // Dashboards: one file provider at an absolute path, the folder the JSON files go to.
    assert_eq!(providers["apiVersion"], 1);
    let list = providers["providers"].as_array().expect("providers");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "file");
    let path = list[0]["options"]["path"].as_str().expect("options.path");
    assert!(
        Path::new(path).is_absolute() && path.ends_with("/herdwatch"),
        "{path}"
    );
    let text = std::fs::read_to_string(dir.join("dashboards.yaml")).expect("dashboards.yaml");
    assert!(
        text.contains("dashboards/*.json"),
        "says what to copy there"
    );
}

/// The body of an HTTP GET to Prometheus' API, as JSON.
fn api(port: u16, path_and_query: &str) -> Value {
    let response = http_get(port, path_and_query);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{path_and_query}: {e}: {response:.400}"))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replaces `$name` / `${name}` with the chosen values (escaped for a PromQL string, as
/// Grafana does for a single-valued variable) and `$__rate_interval` with a window.
fn interpolate(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = text.replace("$__rate_interval", "30s");
    for (name, value) in values {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        out = out
            .replace(&format!("${{{name}}}"), &escaped)
            .replace(&format!("${name}"), &escaped);
    }
    out
}

/// A query variable's values the way Grafana's Prometheus datasource finds them for
/// `label_values(selector, label)`: `/api/v1/label/<label>/values?match[]=selector`, sorted.
fn label_values(prom_port: u16, definition: &str) -> Vec<String> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values variable: {definition}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    let v = api(
        prom_port,
        &format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(selector.trim())
        ),
    );
    let mut values: Vec<String> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    values.sort();
    values
}

/// Each Prometheus query variable of `d`, in order, set to its first value; None while one
/// has no value yet.
fn resolve_variables(prom_port: u16, d: &Dashboard) -> Option<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    for v in d.json["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" || v["datasource"]["type"] != PROMETHEUS {
            continue;
        }
        let definition = interpolate(v["definition"].as_str().expect("definition"), &values);
        let first = label_values(prom_port, &definition).into_iter().next()?;
        values.insert(v["name"].as_str().expect("name").to_string(), first);
    }
    Some(values)
}

/// Instant query: the samples' values (NaN included) or the error.
fn instant(prom_port: u16, expr: &str) -> Result<Vec<f64>, String> {
    let v = api(prom_port, &format!("/api/v1/query?query={}", encode(expr)));
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["value"][1].as_str().and_then(|x| x.parse().ok()))
        .collect())
}

#[test]
fn every_prometheus_panel_returns_data_during_a_replay() {
    if !kernel_available("dashboards::every_prometheus_panel_returns_data_during_a_replay") {
        return;
    }
    let all = shipped();
    let targets = dashboards::targets_of_type(&all, PROMETHEUS);
    assert!(
        targets.len() >= 10,
        "pool detail and findings history query Prometheus"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (prom_port, metrics_port) = (free_port(), free_port());
    // As docs/metrics.md says to scrape: job `herdwatch`, honor_labels.
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: herdwatch\n    honor_labels: true\n    static_configs:\n      \
             - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("prometheus.yml");
    let _prometheus = prometheus(dir.path(), prom_port);
    let pg = Postgres::start();
    common::herd::payments(&pg);
    let port = free_port();
    let _app = common::herd::uvicorn(&pg, port, 10);
    wait_http(port);
    wait_http(prom_port);
    let mut config = Config {
        interval_ms: 1000,
        api_socket: None,
        prometheus_listen: Some(format!("127.0.0.1:{metrics_port}")),
        state_dir: None,
        ..Config::default()
    };
    // The replays' shortened herd baseline (tests/replays.rs), so a finding comes in seconds.
    config.detect.herd.baseline_s = 10;
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let load = Load::start(
            port,
            &common::herd::ENDPOINTS,
            14,
            Duration::from_millis(20),
        );
        wait_for(&agent, Duration::from_secs(90), "a herd finding", |s| {
            s.findings
                .iter()
                .any(|f| f.kind == FindingKind::ThunderingHerd)
                .then_some(())
        })
        .await;
        // Every panel, its variables resolved; Prometheus catches up within a few scrapes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let outcome = loop {
            let mut empty = Vec::new();
            let mut seen = 0;
            for d in &all {
                let Some(values) = resolve_variables(prom_port, d) else {
                    empty.push(format!("{}: a variable has no value yet", d.uid()));
                    continue;
                };
                for t in dashboards::targets_of_type(std::slice::from_ref(d), PROMETHEUS) {
                    let expr = interpolate(t.target["expr"].as_str().expect("expr"), &values);
                    assert!(
                        !expr.contains('$'),
                        "{}: {expr} keeps a variable",
                        t.panel_title
                    );
                    match instant(prom_port, &expr) {
                        Ok(v) if v.iter().any(|x| x.is_finite()) => seen += 1,
                        Ok(v) => empty.push(format!(
                            "{} / {}: {expr} → {v:?}",
                            t.dashboard, t.panel_title
                        )),
                        Err(e) => panic!(
                            "{} / {}: {expr} is refused: {e}",
                            t.dashboard, t.panel_title
                        ),
                    }
                }
            }
            if empty.is_empty() || Instant::now() > deadline {
                break (seen, empty);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let counts = load.stop();
        drop(agent);
        eprintln!("load: {counts:?}");
        let (seen, empty) = outcome;
        for d in &all {
            eprintln!(
                "{}: variables {:?}",
                d.uid(),
                resolve_variables(prom_port, d)
            );
        }
        eprintln!("{seen} Prometheus targets returned data");
        assert!(
            empty.is_empty(),
            "panels without data:\n{}",
            empty.join("\n")
        );
        assert_eq!(seen, targets.len(), "every Prometheus target evaluated");
    });
}
