//! The shipped alert rules: valid for Prometheus (`promtool check rules`), every runbook they
//! point at exists in the repo, and every herdwatch metric they use is one the agent exports.
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
