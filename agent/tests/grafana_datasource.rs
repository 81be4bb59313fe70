//! The Grafana datasource plugin against two real agents, talked to the way Grafana talks to
//! it: `gpx_herdwatch_linux_amd64` started with Grafana's environment, its go-plugin
//! handshake read, then CheckHealth, QueryData, CallResource and RunStream over gRPC with
//! the SDK's `pluginv2` clients, the Arrow frames decoded.
//!
//! Two agents run on this host (API on two TCP ports, TLS + token, `K8S_NODE_NAME` node-a
//! and node-b), both watching one gunicorn pool held at a cgroup's CPU quota: both raise the
//! same saturation finding, which the plugin must show as one row with both hosts. Then
//! node-b's agent is stopped: a notice naming it, node-a's data, health "1 of 2", and the
//! live stream goes on.
mod common;
mod grafana;

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use common::{cgroup::CpuLimitedCgroup, load::Load, pki, *};
use grafana::{Answer, Plugin};
use serde_json::json;

/// The values the dashboards' variables take in this test, as the frontend would expand
/// them (the fleet here has a saturation finding).
const DASHBOARD_VARIABLES: [(&str, &str); 1] = [("$kind", "saturation")];

/// Runs every herdwatch-datasource target of `dashboards/` through QueryData and checks its
/// frames against its panel type: a time field first for time series, rows for tables.
async fn dashboard_panels_answer(plugin: &Plugin) {
    let dashboards = common::dashboards::load(&common::dashboards::dir(env!("CARGO_MANIFEST_DIR")));
    let targets = common::dashboards::targets_of_type(&dashboards, common::dashboards::HERDWATCH);
    assert!(!targets.is_empty(), "the dashboards have herdwatch panels");
    for t in targets {
        // Which datasource answers is Grafana's business (`${herdwatch}`), not the query's.
        let mut query = t.target.clone();
        if let Some(fields) = query.as_object_mut() {
            fields.remove("datasource");
        }
        let mut text = serde_json::to_string(&query).expect("JSON");
        for (variable, value) in DASHBOARD_VARIABLES {
            text = text.replace(variable, value);
        }
        let target: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let unexpanded = text.replace("$__", "").contains('$');
        assert!(
            !unexpanded,
            "{} / {}: a variable this test does not set: {text}",
            t.dashboard, t.panel_title
        );
        let answer = plugin.query(target, 3_600_000, 10_000).await;
        let panel = format!("{} / {} ({})", t.dashboard, t.panel_title, t.panel_type);
        assert!(answer.error.is_empty(), "{panel}: {}", answer.error);
        assert!(
            answer.frames.iter().any(|f| f.rows() > 0),
            "{panel}: no data: {answer:#?}"
        );
        for frame in &answer.frames {
            match t.panel_type {
                "timeseries" => assert!(
                    frame.fields.first().is_some_and(|f| matches!(
                        f.data_type,
                        grafana_plugin_sdk::arrow2::datatypes::DataType::Timestamp(..)
                    )),
                    "{panel}: a time series needs a time field first: {frame:#?}"
                ),
                "table" => assert!(!frame.fields.is_empty(), "{panel}: {frame:#?}"),
                other => panic!("{panel}: no frame-shape check for panel type {other}"),
            }
        }
    }
}

/// An agent of the fleet: `herdwatch run` as its own process, named `node` by
/// `K8S_NODE_NAME`, its API on TCP at `port` with the test PKI's TLS and token.
fn agent(node: &str, port: u16, pki: &pki::Pki, dir: &Path) -> Proc {
    let home = dir.join(node);
    std::fs::create_dir_all(home.join("state")).expect("agent dir");
    // stdout to a file: nobody reads it, and a full pipe would stall the agent.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec {} run --interval-ms 1000 >{} 2>{}",
            env!("CARGO_BIN_EXE_herdwatch"),
            home.join("stdout").display(),
            home.join("stderr").display()
        ))
        .env("K8S_NODE_NAME", node)
        .env("HERDWATCH_API_SOCKET", home.join("api.sock"))
        .env("HERDWATCH_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERDWATCH_API_TLS_CERT", &pki.cert)
        .env("HERDWATCH_API_TLS_KEY", &pki.key)
        .env("HERDWATCH_API_TOKEN_FILE", &pki.token)
        .env("HERDWATCH_PROMETHEUS_LISTEN", "")
        .env("HERDWATCH_STATE_DIR", home.join("state"))
        .env("HERDWATCH_DETECT__SATURATION__FOR_S", "5");
    Proc::spawn(&mut cmd)
}

fn stderr_of(dir: &Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(node).join("stderr")).unwrap_or_default()
}

/// The rows of the findings frame whose root cause names `cgroup`.
fn saturation_rows(answer: &Answer, cgroup: &str) -> Vec<(String, String, u64)> {
    let Some(frame) = answer.frames.first() else {
        return Vec::new();
    };
    if frame.fields.is_empty() {
        return Vec::new();
    }
    let (ids, hosts, occ, causes) = (
        frame.field("id"),
        frame.field("hosts"),
        frame.field("occurrences"),
        frame.field("root_cause"),
    );
    (0..frame.rows())
        .filter(|&i| causes.values[i].contains(cgroup))
        .map(|i| {
            (
                ids.values[i].clone(),
                hosts.values[i].clone(),
                occ.values[i].parse().unwrap_or(0),
            )
        })
        .collect()
}

/// A stream packet's column `name` (a JSON frame: schema fields and data values).
fn column(packet: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    let fields = packet["schema"]["fields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    fields
        .iter()
        .position(|f| f["name"] == name)
        .and_then(|i| packet["data"]["values"][i].as_array().cloned())
        .unwrap_or_default()
}

fn stream_notices(packets: &[serde_json::Value]) -> Vec<String> {
    packets
        .iter()
        .flat_map(|p| {
            p["schema"]["meta"]["notices"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|n| n["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_fleet_through_the_grafana_plugin_protocol() {
    let test = "grafana_datasource::the_fleet_through_the_grafana_plugin_protocol";
    if !kernel_available(test) {
        return;
    }
    let name = format!("herdwatch-ds-test-{}", std::process::id());
    let Some(cgroup) = CpuLimitedCgroup::create(&name, 0.5) else {
        skip(
            test,
            "cannot create a CPU-limited cgroup (no cpu controller here)",
        );
        return;
    };
    let pki = pki::pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let app_port = free_port();
    let app = cgroup.gunicorn_shop(2, app_port);
    wait_http(app_port);
    let (port_a, port_b) = (free_port(), free_port());
    let _agent_a = agent("node-a", port_a, &pki, dir.path());
    let mut agent_b = Some(agent("node-b", port_b, &pki, dir.path()));
    let url_b = format!("https://127.0.0.1:{port_b}");
    let plugin = Plugin::start(
        json!({
            "agents": [format!("https://127.0.0.1:{port_a}"), url_b.clone()],
            "timeoutMs": 3000,
        }),
        HashMap::from([
            ("token".to_string(), pki::TOKEN.to_string()),
            (
                "caCert".to_string(),
                std::fs::read_to_string(&pki.ca).expect("CA PEM"),
            ),
        ]),
    );
    let load = Load::start(app_port, &["GET /cpu"], 3, Duration::ZERO);
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    runtime().block_on(async {
        // Health: both agents up (they take a moment to load their programs).
        let mut health = plugin.check_health().await;
        for _ in 0..60 {
            if health.status == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            health = plugin.check_health().await;
        }
        assert_eq!(
            (health.status, health.message.as_str()),
            (1, "2 of 2 agents reachable (node-a, node-b)"),
            "node-a: {}\nnode-b: {}",
            stderr_of(dir.path(), "node-a"),
            stderr_of(dir.path(), "node-b")
        );

        phase("both agents reachable");
        // The saturation both agents see: one row, both hosts.
        let target = json!({"refId": "A", "queryType": "findings", "kind": "saturation",
                            "hosts": ["$host"], "activeOnly": false});
        let mut rows = Vec::new();
        for _ in 0..90 {
            let answer = plugin.query(target.clone(), 3_600_000, 10_000).await;
            assert!(answer.error.is_empty(), "{}", answer.error);
            rows = saturation_rows(&answer, &name);
            if rows.iter().any(|(_, hosts, _)| hosts == "node-a, node-b") {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(rows.len(), 1, "the finding is one row: {rows:?}");
        let (finding_id, hosts, occurrences) = rows[0].clone();
        assert_eq!(hosts, "node-a, node-b");
        assert!(
            occurrences >= 2,
            "each host's occurrence counts: {occurrences}"
        );
        assert!(finding_id.starts_with("saturation-"), "{finding_id}");

        phase("the finding on both hosts");
        // Occurrences over time: a time series for the finding, both hosts' onsets in it.
        let series = plugin
            .query(
                json!({"refId": "B", "queryType": "occurrences", "findingId": finding_id}),
                3_600_000,
                60_000,
            )
            .await;
        assert!(series.error.is_empty(), "{}", series.error);
        assert_eq!(series.frames.len(), 1, "{series:#?}");
        let frame = &series.frames[0];
        assert!(matches!(
            frame.fields[0].data_type,
            grafana_plugin_sdk::arrow2::datatypes::DataType::Timestamp(..)
        ));
        let total: u64 = frame
            .field("occurrences")
            .values
            .iter()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum();
        assert!(total >= 2, "{frame:#?}");

        // Pools: the gunicorn pool on both hosts.
        let pools = plugin
            .query(
                json!({"refId": "C", "queryType": "pools"}),
                3_600_000,
                10_000,
            )
            .await;
        let frame = &pools.frames[0];
        // Other gunicorns may run on this host: ours is known by its master's pid.
        let master = app.pid().to_string();
        let shop: Vec<&String> = frame
            .field("host")
            .values
            .iter()
            .zip(&frame.field("master_pid").values)
            .filter(|(_, pid)| **pid == master)
            .map(|(h, _)| h)
            .collect();
        assert_eq!(shop, ["node-a", "node-b"], "{frame:#?}");

        // Routes: a request rate from two readings of the agents' counts a few seconds apart.
        let routes_target = json!({"refId": "R", "queryType": "routes", "route": "GET /cpu"});
        plugin.query(routes_target.clone(), 3_600_000, 10_000).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let routes = plugin.query(routes_target, 3_600_000, 10_000).await;
        assert!(routes.error.is_empty(), "{}", routes.error);
        let rates: Vec<f64> = routes.frames[0]
            .field("requests_per_s")
            .values
            .iter()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert!(
            !rates.is_empty() && rates.iter().all(|r| *r > 0.0),
            "GET /cpu is served all along on both hosts: {:#?}",
            routes.frames[0]
        );

        // Every herdwatch panel of the dashboards, sent as Grafana sends it once the frontend
        // has expanded the dashboard's variables: frames of the shape its panel draws, with
        // data from this fleet.
        dashboard_panels_answer(&plugin).await;
        phase("the dashboards' herdwatch panels");

        // Template variables.
        let (code, hosts) = plugin.resource("hosts").await;
        assert_eq!(code, 200);
        assert_eq!(
            hosts,
            json!([{"text": "node-a", "value": "node-a"}, {"text": "node-b", "value": "node-b"}])
        );
        let (_, pool_names) = plugin.resource("pools").await;
        let pool = pool_names
            .as_array()
            .and_then(|a| {
                a.iter().find(|p| {
                    p["value"]
                        .as_str()
                        .is_some_and(|v| v.contains("shop.app:app"))
                })
            })
            .and_then(|p| p["value"].as_str())
            .expect("the shop pool is a choice")
            .to_string();
        let (code, routes) = plugin
            .resource(&format!(
                "routes?pool={}",
                pool.replace(' ', "%20").replace(':', "%3A")
            ))
            .await;
        assert_eq!(code, 200);
        assert!(
            routes
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["value"] == "GET /cpu")),
            "{routes}"
        );
        let (code, _) = plugin.resource("tables").await;
        assert_eq!(code, 404);

        // A query from a newer frontend with a field of another type: its own error, and
        // the plugin is still there.
        let bad = plugin
            .query(
                json!({"refId": "Z", "queryType": "findings", "activeOnly": "yes"}),
                60_000,
                1_000,
            )
            .await;
        assert!(bad.error.contains("activeOnly"), "{}", bad.error);

        // Live findings: the active saturation from each agent at once.
        let mut stream = plugin.run_stream("findings").await;
        let packets = grafana::read_packets(&mut stream, Duration::from_secs(30), |seen| {
            let hosts: Vec<String> = seen
                .iter()
                .filter(|p| column(p, "id").iter().any(|v| *v == json!(finding_id)))
                .flat_map(|p| column(p, "host"))
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect();
            hosts.iter().any(|h| h == "node-a") && hosts.iter().any(|h| h == "node-b")
        })
        .await;
        assert!(stream_notices(&packets).is_empty(), "{packets:#?}");

        phase("the stream from both");
        // node-b's agent stops.
        drop(agent_b.take());
        let packets = grafana::read_packets(&mut stream, Duration::from_secs(30), |seen| {
            !stream_notices(seen).is_empty()
        })
        .await;
        let notices = stream_notices(&packets);
        assert!(
            notices
                .iter()
                .any(|n| n.contains(&url_b) || n.contains("node-b")),
            "{notices:?}"
        );

        let answer = plugin.query(target.clone(), 3_600_000, 10_000).await;
        assert!(
            answer.error.is_empty(),
            "only one of two failed: {}",
            answer.error
        );
        let notices = answer.frames[0].notices();
        assert!(
            notices.iter().any(|n| n.contains(&url_b)),
            "a notice names the stopped agent: {notices:?}"
        );
        let rows = saturation_rows(&answer, &name);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].1, "node-a", "node-a's data still arrives");

        let health = plugin.check_health().await;
        assert_eq!(health.status, 2, "{}", health.message);
        assert!(
            health.message.starts_with("1 of 2 agents reachable")
                && health.message.contains(&url_b),
            "{}",
            health.message
        );
    });
    phase("done");
    load.stop();
    drop(app);
    drop(cgroup);
}
