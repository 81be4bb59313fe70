//! The shipped alert rules: valid for Prometheus (`promtool check rules`), every runbook they
//! point at exists in the repo, every herdwatch metric they use is one the agent exports, and
//! every alert and runbook links a Grafana dashboard that exists (`dashboards/*.json`).
use std::{path::PathBuf, process::Command};

use herdwatch::export::names::{ALL, prometheus_name};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rules_text() -> String {
    std::fs::read_to_string(repo().join("dashboards/alerts/herdwatch.rules.yml"))
        .expect("rules file")
}

#[test]
fn promtool_accepts_the_rules() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("dashboards/alerts/herdwatch.rules.yml"))
        .output()
        .expect("promtool installed (cargo xtask test installs Debian's prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

#[test]
fn every_runbook_exists_and_every_metric_is_exported() {
    let text = rules_text();
    let mut runbooks = 0;
    for line in text.lines() {
        if let Some(url) = line.trim().strip_prefix("runbook_url: ") {
            let url = url.trim_matches('"');
            let path = url
                .split_once("/blob/main/")
                .map(|(_, p)| p)
                .unwrap_or_else(|| panic!("runbook URL outside the repo: {url}"));
            let body = std::fs::read_to_string(repo().join(path))
                .unwrap_or_else(|e| panic!("runbook {path}: {e}"));
            assert!(
                body.contains("**What it means.**")
                    && body.contains("**Confirm.**")
                    && body.contains("**What stops it recurring.**"),
                "{path} lacks a section"
            );
            runbooks += 1;
        }
    }
    assert_eq!(runbooks, 7, "one runbook per alert");
    let exported: Vec<String> = ALL.iter().map(prometheus_name).collect();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("herdwatch_") {
            assert!(
                exported.iter().any(|e| e == word),
                "the rules use {word}, which the agent does not export ({exported:?})"
            );
        }
    }
    for kind in ["starvation", "saturation", "herd", "cron", "pool"] {
        assert!(
            text.contains(&format!("finding_kind=\"{kind}\"")),
            "no rule for {kind}"
        );
    }
}

/// The uids of the shipped dashboards.
fn dashboard_uids() -> Vec<String> {
    std::fs::read_dir(repo().join("dashboards"))
        .expect("dashboards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).expect("dashboard"))
                    .expect("dashboard JSON");
            v["uid"].as_str().expect("uid").to_string()
        })
        .collect()
}

/// Each alert: its `dashboard_uid` names a shipped dashboard, its `dashboard_url` opens that
/// dashboard, and its runbook points the reader at the same one.
#[test]
fn every_alert_and_runbook_links_an_existing_dashboard() {
    let uids = dashboard_uids();
    let text = rules_text();
    let mut alerts = 0;
    for rule in text.split("- alert: ").skip(1) {
        let field = |key: &str| -> String {
            rule.lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("{key} missing in {rule}"))
        };
        let uid = field("dashboard_uid");
        assert!(uids.contains(&uid), "{uid} is no dashboard: {uids:?}");
        let url = field("dashboard_url");
        assert!(
            url == format!("/d/{uid}") || url.starts_with(&format!("/d/{uid}?")),
            "{url} does not open {uid}"
        );
        let runbook = field("runbook_url");
        let path = runbook.split_once("/blob/main/").expect("in the repo").1;
        let body = std::fs::read_to_string(repo().join(path)).expect("runbook");
        let linked: Vec<&str> = body
            .split("`/d/")
            .skip(1)
            .filter_map(|s| s.split('`').next())
            .collect();
        assert_eq!(linked, [uid.as_str()], "{path} names its alert's dashboard");
        alerts += 1;
    }
    assert_eq!(alerts, 7);
}
