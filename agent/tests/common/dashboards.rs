//! The shipped Grafana dashboards (`dashboards/*.json`) as tests read them: every panel, and
//! every (dashboard, panel, target) for one datasource type. Only std and serde_json, so the
//! datasource plugin's tests can include this file too
//! (`#[path = "../../agent/tests/common/dashboards.rs"] mod dashboards;`) and send every
//! herdwatch-datasource target through the plugin's `QueryData`.
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The plugin id of the herdwatch fleet datasource (`datasource/plugin.json`).
pub const HERDWATCH: &str = "herdwatch-fleet-datasource";
pub const PROMETHEUS: &str = "prometheus";

/// One dashboard file, parsed.
pub struct Dashboard {
    pub file: PathBuf,
    pub json: Value,
}

impl Dashboard {
    pub fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    /// Every panel, those inside rows included.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }
}

/// A panel's query, with where it sits and the panel type that shows its frames.
pub struct Target<'a> {
    pub dashboard: &'a str,
    pub panel_title: &'a str,
    /// `table`, `timeseries`, …: what frame shape the target must return.
    pub panel_type: &'a str,
    pub target: &'a Value,
}

/// `dashboards/` of the repository, from a crate directory one level below the root.
pub fn dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .parent()
        .expect("the crate sits in the repository root")
        .join("dashboards")
}

/// Every `*.json` in `dir`, sorted by file name; panics on a file that is not JSON.
pub fn load(dir: &Path) -> Vec<Dashboard> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
            Dashboard { file, json }
        })
        .collect()
}

/// The datasource type a target queries: its own `datasource`, else its panel's.
pub fn datasource_type<'a>(panel: &'a Value, target: &'a Value) -> Option<&'a str> {
    target["datasource"]["type"]
        .as_str()
        .or_else(|| panel["datasource"]["type"].as_str())
}

/// Every (dashboard, panel, target) whose datasource is of type `ds_type`.
pub fn targets_of_type<'a>(dashboards: &'a [Dashboard], ds_type: &str) -> Vec<Target<'a>> {
    let mut out = Vec::new();
    for d in dashboards {
        for panel in d.panels() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if datasource_type(panel, target) == Some(ds_type) {
                    out.push(Target {
                        dashboard: d.uid(),
                        panel_title: panel["title"].as_str().unwrap_or_default(),
                        panel_type: panel["type"].as_str().unwrap_or_default(),
                        target,
                    });
                }
            }
        }
    }
    out
}
