//! Every key of the struct, set through its variable: the list comes from the schema
//! (`keys::all`), so a key added to `Config` is walked without touching this file.
use serde_json::{Value as Json, json};

use super::{
    Flags, Loaded,
    keys::{self, Key, Kind},
    load,
};
use crate::error::Result;

fn load_env(vars: &[(&str, &str)]) -> Result<Loaded> {
    load(
        None,
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        Flags::default(),
    )
}

fn at<'a>(config: &'a Json, key: &Key) -> &'a Json {
    key.path
        .iter()
        .try_fold(config, |v, p| v.get(p))
        .unwrap_or(&Json::Null)
}

/// Values for strings whose format is checked (only values: which keys exist comes from
/// the struct).
const FORMATTED: &[(&str, &str)] = &[
    ("api_listen", "127.0.0.1:9466"),
    ("prometheus_listen", "127.0.0.1:9999"),
    ("postgres.monitor_dsn", "host=db user=monitor"),
    ("otlp.endpoint", "http://127.0.0.1:4318"),
    ("otlp.protocol", "http/protobuf"),
    ("otlp.temporality", "delta"),
];

/// A valid value other than the default, as a variable's text and as the JSON it must
/// become.
fn other_value(key: &Key) -> (String, Json) {
    let dotted = key.dotted();
    if let Some((_, v)) = FORMATTED.iter().find(|(k, _)| *k == dotted) {
        return (v.to_string(), json!(v));
    }
    match &key.kind {
        Kind::Bool => {
            let v = !key.default.as_bool().unwrap_or(false);
            (v.to_string(), json!(v))
        }
        Kind::Integer => {
            let v = key
                .default
                .as_u64()
                .map_or(100, |d| if d == 0 { 1 } else { d * 2 });
            (v.to_string(), json!(v))
        }
        Kind::Number => {
            let v = key
                .default
                .as_f64()
                .map_or(0.5, |d| if d == 0.0 { 0.5 } else { d / 2.0 });
            (v.to_string(), json!(v))
        }
        Kind::String => {
            assert!(
                key.optional,
                "{dotted}: a required string needs a valid value in FORMATTED"
            );
            let v = format!("/tmp/herdwatch-walk/{dotted}");
            (v.clone(), json!(v))
        }
        Kind::List(item) => {
            let items: Vec<Json> = match (item.as_ref(), key.default.as_array()) {
                (Kind::Integer, Some(d)) if !d.is_empty() => d
                    .iter()
                    .map(|v| json!(v.as_u64().unwrap_or(0) + 1))
                    .collect(),
                (Kind::Integer, _) => vec![json!(7)],
                _ => vec![json!("/walk/{id}"), json!("/walk/{id}/edit")],
            };
            let text = items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(",");
            (text, Json::Array(items))
        }
        Kind::Map(value) => match value.as_ref() {
            Kind::Integer => ("5432=100".into(), json!({"5432": 100})),
            _ => ("5432=walk".into(), json!({"5432": "walk"})),
        },
    }
}

#[test]
fn every_key_is_settable_from_its_variable() {
    let keys = keys::all();
    assert!(keys.len() > 50, "only {} keys found", keys.len());
    for key in keys {
        let var = key.env_var();
        let (text, expected) = other_value(key);
        assert_ne!(
            expected, key.default,
            "{var}: the walk must change the value"
        );
        let loaded =
            load_env(&[(&var, &text)]).unwrap_or_else(|e| panic!("{var}={text:?} refused: {e}"));
        let config = serde_json::to_value(&loaded.config).expect("config serializes");
        assert_eq!(at(&config, key), &expected, "{var}={text:?}");
        assert_eq!(loaded.source_of(&key.path), var, "{var}: provenance");
    }
}

#[test]
fn empty_turns_every_optional_key_off() {
    let optional: Vec<&Key> = keys::all().iter().filter(|k| k.optional).collect();
    for name in [
        "prometheus_listen",
        "api_socket",
        "state_dir",
        "otlp.endpoint",
    ] {
        assert!(
            optional.iter().any(|k| k.dotted() == name),
            "{name} should be optional"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for key in optional {
        let var = key.env_var();
        // A file sets a value, so "off" is seen to override something, not keep a default.
        let (_, value) = other_value(key);
        let nested = key
            .path
            .iter()
            .rev()
            .fold(value, |inner, name| json!({ name.as_str(): inner }));
        let file = dir.path().join("set.toml");
        std::fs::write(&file, toml::to_string(&nested).expect("TOML")).expect("write");
        let loaded = load(
            Some(&file),
            [(var.clone(), String::new())],
            Flags::default(),
        )
        .unwrap_or_else(|e| panic!("{var}=\"\": {e}"));
        let config = serde_json::to_value(&loaded.config).expect("config serializes");
        assert_eq!(at(&config, key), &Json::Null, "{var}=\"\"");
        assert_eq!(loaded.source_of(&key.path), var);
    }
    let loaded = load_env(&[("HERDWATCH_PROMETHEUS_LISTEN", "")]).expect("valid");
    assert_eq!(loaded.config.prometheus_listen, None);
    assert_eq!(
        loaded.config.api_socket,
        super::Config::default().api_socket
    );
}

#[test]
fn lists_and_tables_take_both_forms() {
    for text in ["5433,6433", "[5433, 6433]", " 5433 , 6433 "] {
        let c = load_env(&[("HERDWATCH_POSTGRES_PORTS", text)])
            .expect(text)
            .config;
        assert_eq!(c.postgres_ports, vec![5433, 6433], "{text}");
    }
    let c = load_env(&[
        ("HERDWATCH_DETECT__POOL__LIMITS", "5432=100,6432=20"),
        ("HERDWATCH_DETECT__POOL__LIMITS__6432", "50"),
        ("HERDWATCH_OTLP__HEADERS__AUTHORIZATION", "Bearer abc"),
    ])
    .expect("valid")
    .config;
    assert_eq!(c.detect.pool.limits.get("5432"), Some(&100));
    assert_eq!(
        c.detect.pool.limits.get("6432"),
        Some(&50),
        "the entry wins"
    );
    assert_eq!(
        c.otlp.headers.get("authorization").map(String::as_str),
        Some("Bearer abc")
    );
}

#[test]
fn unknown_variables_are_refused_naming_the_nearest_key() {
    for (typo, nearest) in [
        ("HERDWATCH_INTERVALL_MS", "HERDWATCH_INTERVAL_MS"),
        (
            "HERDWATCH_DETECT__HERD__MIN_COPY",
            "HERDWATCH_DETECT__HERD__MIN_COPIES",
        ),
        ("HERDWATCH_PROMETHEUS_LISTN", "HERDWATCH_PROMETHEUS_LISTEN"),
        ("HERDWATCH_OTLP_ENDPOINT", "HERDWATCH_OTLP__ENDPOINT"),
    ] {
        let Err(err) = load_env(&[(typo, "1")]) else {
            panic!("{typo} accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains(typo) && err.contains(&format!("did you mean {nearest} ")),
            "{typo}: {err}"
        );
    }
    // A table is not a value.
    assert!(load_env(&[("HERDWATCH_DETECT", "1")]).is_err());
    // What is not a setting passes.
    load_env(&[
        ("HERDWATCH_CONFIG", "/nonexistent.toml"),
        ("HERDWATCH_LOG", "debug"),
        ("HERDWATCH_TEST_VENV", "/venv"),
        ("HERDWATCH_SKIP_DIR", "/tmp/skips"),
        ("HERDWATCH_BENCH_SECONDS", "3"),
        ("HERDWATCH_OVERHEAD_PROFILE", "1"),
        ("HERDWATCH_RECORD_TO", "/tmp/x"),
        ("OTHER_VARIABLE", "x"),
    ])
    .expect("not settings");
}

#[test]
fn bad_values_name_the_variable_and_the_problem() {
    for (var, value, problem) in [
        ("HERDWATCH_DETECT__SATURATION__CPU", "lots", "not a number"),
        ("HERDWATCH_INTERVAL_MS", "-5", "u64"),
        ("HERDWATCH_INTERVAL_MS", "fast", "not a whole number"),
        ("HERDWATCH_POSTGRES_PORTS", "5432,x", "list item \"x\""),
        ("HERDWATCH_SOCKET_TRACING", "perhaps", "not true or false"),
        ("HERDWATCH_OTLP__HEADERS", "novalue", "key=value"),
        (
            "HERDWATCH_DETECT__SATURATION__CPU",
            "3",
            "must be in (0, 1]",
        ),
        ("HERDWATCH_POSTGRES_PORTS", "70000", "70000"),
        (
            "HERDWATCH_POSTGRES_PORTS",
            "5432,70000",
            "expected u16 for key \"HERDWATCH_POSTGRES_PORTS\"",
        ),
    ] {
        let Err(err) = load_env(&[(var, value)]) else {
            panic!("{var}={value} accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains(var) && err.contains(problem),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn layers_apply_in_order_and_each_value_names_its_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herdwatch.toml");
    std::fs::write(
        &file,
        "interval_ms = 500\nmax_routes = 50\n[detect.herd]\nmin_copies = 6\n",
    )
    .expect("write");
    let loaded = load(
        Some(&file),
        [("HERDWATCH_MAX_ROUTES".to_string(), "70".to_string())],
        Flags {
            interval_ms: Some(750),
            no_socket_tracing: true,
        },
    )
    .expect("valid");
    let c = &loaded.config;
    assert_eq!(
        (
            c.interval_ms,
            c.max_routes,
            c.detect.herd.min_copies,
            c.socket_tracing
        ),
        (750, 70, 6, false)
    );
    let source =
        |dotted: &str| loaded.source_of(&dotted.split('.').map(String::from).collect::<Vec<_>>());
    assert_eq!(source("interval_ms"), "--interval-ms");
    assert_eq!(source("socket_tracing"), "--no-socket-tracing");
    assert_eq!(source("max_routes"), "HERDWATCH_MAX_ROUTES");
    assert_eq!(source("detect.herd.min_copies"), file.display().to_string());
    assert_eq!(source("max_connections"), "default");
    let text = loaded.render();
    assert!(
        text.contains("[detect.herd]") && text.contains("# api_listen = (unset)"),
        "{text}"
    );
    // The rendering is TOML that loads back to the same config.
    let again = super::Config::from_toml(&text, "rendered").expect("rendered config loads");
    assert_eq!(&again, c);
}
