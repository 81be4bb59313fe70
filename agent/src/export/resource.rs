//! OTLP resources: who the telemetry is about. The agent itself is one resource
//! (`service.name=herdwatch` unless `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` say
//! otherwise); each gunicorn/uvicorn pool is another, so a backend shows the checkout API as
//! the checkout API and not as "herdwatch".
//!
//! A pool's service name comes from its app module (`shop.app:app` → `shop.app`) unless
//! `[otlp.services]` maps the pool's name or app to one. Container and pod come from the
//! master's cgroup path (the kubelet and container runtimes encode both in it); the node and,
//! for the agent's own pod, name/namespace/uid come from downward-API variables.
use std::collections::BTreeMap;

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, SdkProvidedResourceDetector, TelemetryResourceDetector},
};

use crate::procs::pools::Pool;

/// Downward-API variables read (set them in the DaemonSet from `fieldRef`s), and the
/// attribute each becomes.
pub const DOWNWARD_API: [(&str, &str); 5] = [
    ("K8S_NODE_NAME", "k8s.node.name"),
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_CLUSTER_NAME", "k8s.cluster.name"),
];

/// Of the downward-API attributes, the ones true for every pod on the node (the rest describe
/// the agent's own pod).
const NODE_WIDE: [&str; 2] = ["k8s.node.name", "k8s.cluster.name"];

/// The container id and pod uid a cgroup path names, when it is a container's.
///
/// Handles the shapes the kubelet and runtimes write: cgroupfs
/// (`/kubepods/burstable/pod<uid>/<id>`), systemd (`/kubepods.slice/…/kubepods-besteffort-
/// pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`), Docker
/// (`/docker/<id>`, `/system.slice/docker-<id>.scope`) and CRI-O (`crio-<id>.scope`).
pub fn container_of_cgroup(path: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for segment in path.split('/') {
        let segment = segment
            .strip_suffix(".scope")
            .or_else(|| segment.strip_suffix(".slice"))
            .unwrap_or(segment);
        // The container id: the segment's trailing run of 64 hex digits.
        if segment.len() >= 64 {
            let tail = &segment[segment.len() - 64..];
            let boundary_ok =
                segment.len() == 64 || segment[..segment.len() - 64].ends_with(['-', ':']);
            if boundary_ok && tail.bytes().all(|b| b.is_ascii_hexdigit()) {
                container = Some(tail.to_ascii_lowercase());
            }
        }
        if let Some(at) = segment.rfind("pod") {
            let candidate = segment[at + 3..].replace('_', "-");
            if herdwatch_protocol::route::is_uuid(&candidate) {
                pod = Some(candidate.to_ascii_lowercase());
            }
        }
    }
    (container, pod)
}

/// `k8s.*` attributes from the downward-API variables that are set; `node_wide_only` keeps
/// the ones true for every pod on the node.
pub fn downward_api(env: &dyn Fn(&str) -> Option<String>, node_wide_only: bool) -> Vec<KeyValue> {
    DOWNWARD_API
        .iter()
        .filter(|(_, attr)| !node_wide_only || NODE_WIDE.contains(attr))
        .filter_map(|(var, attr)| {
            let value = env(var)?.trim().to_string();
            (!value.is_empty()).then(|| KeyValue::new(*attr, value))
        })
        .collect()
}

fn host_attributes() -> Vec<KeyValue> {
    let mut attrs = vec![KeyValue::new("host.name", crate::host::hostname())];
    if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
        attrs.push(KeyValue::new("host.id", id.trim().to_string()));
    }
    attrs
}

fn container_attributes(cgroup_path: Option<&str>) -> Vec<KeyValue> {
    let (container, pod) = cgroup_path.map(container_of_cgroup).unwrap_or_default();
    let mut attrs = Vec::new();
    if let Some(id) = container {
        attrs.push(KeyValue::new("container.id", id));
    }
    if let Some(uid) = pod {
        attrs.push(KeyValue::new("k8s.pod.uid", uid));
    }
    attrs
}

/// The agent's own resource. `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are honoured
/// (the SDK's detectors read them); without either naming the service it is `herdwatch`.
pub fn agent(env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some_and(|s| !s.trim().is_empty())
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let own_cgroup = crate::procs::cgroup::of_pid(std::process::id()).map(|c| c.path);
    let mut attrs = host_attributes();
    // One agent per host: the host names the instance, so after OTLP→Prometheus the agent's
    // series carry `instance` (rules aggregate `by (instance)`) as scraped ones do.
    attrs.push(KeyValue::new(
        "service.instance.id",
        crate::host::hostname(),
    ));
    attrs.push(KeyValue::new("process.pid", i64::from(std::process::id())));
    attrs.extend(container_attributes(own_cgroup.as_deref()));
    // The agent's pod: the downward API is the truth for it, cgroup parsing a fallback.
    let downward = downward_api(env, false);
    attrs.retain(|kv| !downward.iter().any(|d| d.key == kv.key));
    attrs.extend(downward);
    // What the user set in OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME wins over what the
    // agent found: the detectors are applied after its attributes.
    let builder = Resource::builder_empty()
        .with_attributes(attrs)
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if named {
        builder
            .with_detector(Box::new(SdkProvidedResourceDetector))
            .build()
    } else {
        builder.with_service_name("herdwatch").build()
    }
}

/// The service name of a pool: an override from `[otlp.services]` (keyed by the pool's name,
/// e.g. `gunicorn shop.app:app`, or its app, `shop.app:app`), else the app's module.
pub fn pool_service_name(pool: &Pool, overrides: &BTreeMap<String, String>) -> String {
    service_name_of(&pool.name(), pool.app.as_deref(), overrides)
}

fn service_name_of(name: &str, app: Option<&str>, overrides: &BTreeMap<String, String>) -> String {
    if let Some(s) = overrides.get(name) {
        return s.clone();
    }
    if let Some(app) = app {
        if let Some(s) = overrides.get(app) {
            return s.clone();
        }
        let module = app.split(':').next().unwrap_or(app).trim();
        if !module.is_empty() {
            return module.to_string();
        }
    }
    name.replace(' ', "-")
}

/// How a pool is named on every export path: the OTLP resource's `service.name` and
/// `service.instance.id`, which `/metrics` writes as the `job` and `instance` labels the
/// OTLP→Prometheus translation makes of them (docs/metrics.md), so one set of dashboards and
/// alert rules selects the same series on both paths.
#[derive(Debug, Clone, Default)]
pub struct PoolNaming {
    services: BTreeMap<String, String>,
    host: String,
}

impl PoolNaming {
    /// Names by `[otlp.services]` on this host.
    pub fn new(services: BTreeMap<String, String>) -> Self {
        Self::on_host(services, crate::host::hostname())
    }

    pub fn on_host(services: BTreeMap<String, String>, host: String) -> Self {
        Self { services, host }
    }

    pub fn service_name(&self, pool: &Pool) -> String {
        pool_service_name(pool, &self.services)
    }

    /// The service name of a pool known only by its name (`gunicorn shop.app:app`, maybe
    /// `… on :8001`): a finding's pool may have exited. The same result as `service_name`
    /// for a pool of that name.
    pub fn service_name_by_name(&self, name: &str) -> String {
        let app = name
            .split_once(' ')
            .map(|(_, rest)| rest.split(" on ").next().unwrap_or(rest))
            .filter(|app| app.contains(':'));
        service_name_of(name, app, &self.services)
    }

    /// `service.instance.id` of a pool: host and pool name, unique on the host (pools sharing a
    /// name are one service there) and stable across the master's restarts.
    pub fn instance_id(&self, pool_name: &str) -> String {
        format!("{}/{pool_name}", self.host)
    }
}

/// A pool's resource: its service, its master process, its container and pod.
pub fn pool(
    pool: &Pool,
    service_name: &str,
    master_cmdline: &[String],
    cgroup_path: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Resource {
    let mut attrs = host_attributes();
    attrs.push(KeyValue::new(
        "service.instance.id",
        PoolNaming::new(BTreeMap::new()).instance_id(&pool.name()),
    ));
    attrs.push(KeyValue::new("process.pid", i64::from(pool.master)));
    let args: Vec<StringValue> = master_cmdline
        .iter()
        .map(|a| StringValue::from(a.clone()))
        .collect();
    attrs.push(KeyValue::new(
        "process.command_args",
        Value::Array(Array::String(args)),
    ));
    attrs.extend(container_attributes(cgroup_path));
    attrs.extend(downward_api(env, true));
    // Built without the environment detectors: OTEL_* describe the agent, not the apps.
    Resource::builder_empty()
        .with_service_name(service_name.to_string())
        .with_attributes(attrs)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f3e2b9c5a1d4e6f8a7b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";

    #[test]
    fn containers_and_pods_from_the_cgroup_shapes_runtimes_write() {
        let uid = "7c4d0a1e-3b2f-4e5d-9a8b-1c2d3e4f5a6b";
        let uid_ = uid.replace('-', "_");
        for (path, want_pod) in [
            (format!("/kubepods/burstable/pod{uid}/{ID}"), true),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                true,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                true,
            ),
            (format!("/docker/{ID}"), false),
            (format!("/system.slice/docker-{ID}.scope"), false),
        ] {
            let (container, pod) = container_of_cgroup(&path);
            assert_eq!(container.as_deref(), Some(ID), "{path}");
            assert_eq!(pod.as_deref(), want_pod.then_some(uid), "{path}");
        }
        assert_eq!(
            container_of_cgroup("/user.slice/user-0.slice/session-3.scope"),
            (None, None)
        );
        assert_eq!(container_of_cgroup("/"), (None, None));
    }

    #[test]
    fn downward_api_variables_become_k8s_attributes() {
        let env = |k: &str| match k {
            "K8S_NODE_NAME" => Some("node-a".to_string()),
            "K8S_POD_NAME" => Some("herdwatch-x7k2p".to_string()),
            "K8S_NAMESPACE_NAME" => Some(" ".to_string()),
            _ => None,
        };
        let all = downward_api(&env, false);
        let keys: Vec<_> = all.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["k8s.node.name", "k8s.pod.name"],
            "blank values are skipped"
        );
        let node = downward_api(&env, true);
        assert_eq!(
            node.len(),
            1,
            "only node-wide attributes describe an app's pod"
        );
    }

    fn gunicorn(app: Option<&str>) -> Pool {
        Pool {
            kind: crate::procs::pools::PoolKind::Gunicorn,
            master: 42,
            workers: vec![43],
            app: app.map(str::to_string),
            worker_class: "sync".into(),
            configured_workers: None,
            configured_binds: Vec::new(),
            distinct_by: None,
        }
    }

    #[test]
    fn a_pool_is_named_by_its_app_module_unless_configured() {
        let none = BTreeMap::new();
        assert_eq!(
            pool_service_name(&gunicorn(Some("shop.app:app")), &none),
            "shop.app"
        );
        assert_eq!(pool_service_name(&gunicorn(None), &none), "gunicorn-pid-42");
        let by_app = BTreeMap::from([("shop.app:app".to_string(), "checkout".to_string())]);
        assert_eq!(
            pool_service_name(&gunicorn(Some("shop.app:app")), &by_app),
            "checkout"
        );
        let by_name = BTreeMap::from([("gunicorn shop.app:app".to_string(), "api".to_string())]);
        assert_eq!(
            pool_service_name(&gunicorn(Some("shop.app:app")), &by_name),
            "api"
        );
    }

    #[test]
    fn a_pool_known_only_by_name_is_named_as_the_pool_itself() {
        let by_app = BTreeMap::from([("billing:app".to_string(), "billing-api".to_string())]);
        let naming = PoolNaming::on_host(by_app.clone(), "node-a".into());
        for pool in [
            gunicorn(Some("shop.app:app")),
            gunicorn(Some("billing:app")),
            gunicorn(None),
        ] {
            assert_eq!(
                naming.service_name_by_name(&pool.name()),
                pool_service_name(&pool, &by_app),
                "{}",
                pool.name()
            );
        }
        let mut twin = gunicorn(Some("shop.app:app"));
        twin.distinct_by = Some(":8001".into());
        assert_eq!(naming.service_name_by_name(&twin.name()), "shop.app");
        assert_eq!(
            naming.instance_id(&twin.name()),
            "node-a/gunicorn shop.app:app on :8001"
        );
    }

    #[test]
    fn a_pool_resource_names_its_service_process_and_container() {
        let r = pool(
            &gunicorn(Some("shop.app:app")),
            "shop.app",
            &["gunicorn".into(), "shop.app:app".into()],
            Some(&format!("/docker/{ID}")),
            &|_| None,
        );
        let get = |k: &str| r.get(&opentelemetry::Key::from(k.to_string()));
        assert_eq!(get("service.name"), Some(Value::from("shop.app")));
        assert_eq!(get("process.pid"), Some(Value::I64(42)));
        assert_eq!(get("container.id"), Some(Value::from(ID)));
        assert!(matches!(get("process.command_args"), Some(Value::Array(_))));
    }
}
