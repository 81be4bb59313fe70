//! The `HERDWATCH_*` layer: every key of the config as a variable (`__` between tables),
//! parsed by the kind its field has, so no variable is ever silently ignored.
use figment::value::{Dict, Empty, Value};

use super::keys::{self, ENV_NESTING, ENV_PREFIX, Key, Kind};
use crate::error::{Error, Result};

/// Variables with the prefix that are not settings: the config file's path, the log filter,
/// and what the test and bench harnesses read (the agent is started with them in its
/// environment).
pub const NOT_SETTINGS: &[&str] = &[
    "HERDWATCH_CONFIG",
    "HERDWATCH_LOG",
    "HERDWATCH_RECORD_TO",
    "HERDWATCH_SKIP_DIR",
];
/// Families of harness variables (`HERDWATCH_TEST_VENV`, `HERDWATCH_BENCH_SECONDS`,
/// `HERDWATCH_OVERHEAD_PROFILE`, …).
pub const NOT_SETTING_PREFIXES: &[&str] =
    &["HERDWATCH_TEST_", "HERDWATCH_BENCH_", "HERDWATCH_OVERHEAD_"];

/// The settings found in the environment, as one nested table.
#[derive(Debug, Default)]
pub struct EnvLayer {
    pub table: Dict,
    /// The variables that set something, sorted.
    pub variables: Vec<String>,
}

/// Reads the settings among `vars`; an unknown `HERDWATCH_*` name or a value its key cannot
/// take is an error naming the variable.
pub fn read(vars: impl IntoIterator<Item = (String, String)>) -> Result<EnvLayer> {
    let mut settings: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !is_not_a_setting(name))
        .collect();
    // Sorted, so a whole table (`HERDWATCH_OTLP__HEADERS`) is read before its entries
    // (`HERDWATCH_OTLP__HEADERS__AUTHORIZATION`) and the entries win.
    settings.sort();
    let mut layer = EnvLayer::default();
    for (name, raw) in settings {
        let bad = |message: String| Error::Config {
            origin: format!("environment variable {name}"),
            message,
        };
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split(ENV_NESTING)
            .map(str::to_ascii_lowercase)
            .collect();
        let value = if let Some(key) = keys::find(&path) {
            parse_key(key, &raw).map_err(bad)?
        } else if let Some(value_kind) = map_entry_of(&path) {
            scalar(value_kind, &raw).map_err(bad)?
        } else {
            return Err(bad(unknown(&name)));
        };
        insert(&mut layer.table, &path, value);
        layer.variables.push(name);
    }
    Ok(layer)
}

fn is_not_a_setting(name: &str) -> bool {
    NOT_SETTINGS.contains(&name) || NOT_SETTING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `HERDWATCH_DETECT__POOL__LIMITS__5432`: one entry of a free-form table, whose values are
/// of the kind returned.
fn map_entry_of(path: &[String]) -> Option<&'static Kind> {
    let (entry, table) = path.split_last()?;
    if entry.is_empty() {
        return None;
    }
    match &keys::find(table)?.kind {
        Kind::Map(value) => Some(value),
        _ => None,
    }
}

/// The refusal of an unknown variable, naming the nearest real one.
fn unknown(name: &str) -> String {
    let nearest = keys::all()
        .iter()
        .map(|k| (strsim::jaro_winkler(name, &k.env_var()), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = match nearest {
        Some((_, key)) => format!(
            "did you mean {} (`{}` in the config file)? ",
            key.env_var(),
            key.dotted()
        ),
        None => String::new(),
    };
    format!(
        "no such setting; {hint}Every config key is a variable: HERDWATCH_ then the key in \
         capitals, `__` between tables (HERDWATCH_DETECT__HERD__MIN_COPIES); `herdwatch \
         config` lists them. Not settings, and allowed: {}, {}*",
        NOT_SETTINGS.join(", "),
        NOT_SETTING_PREFIXES.join("*, ")
    )
}

fn parse_key(key: &Key, raw: &str) -> std::result::Result<Value, String> {
    if key.optional && raw.trim().is_empty() {
        // Empty = off: `HERDWATCH_PROMETHEUS_LISTEN=""` serves no /metrics.
        return Ok(Value::from(Empty::None));
    }
    match &key.kind {
        Kind::List(item) => list(item, raw),
        Kind::Map(value) => map(value, raw),
        kind => scalar(kind, raw),
    }
}

fn scalar(kind: &Kind, raw: &str) -> std::result::Result<Value, String> {
    let text = raw.trim();
    match kind {
        Kind::Bool => super::parse_bool(text).map(Value::from),
        Kind::Integer => text
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| text.parse::<i64>().map(Value::from))
            .map_err(|_| format!("{raw:?} is not a whole number")),
        Kind::Number => match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Value::from(n)),
            _ => Err(format!("{raw:?} is not a number")),
        },
        Kind::String => Ok(Value::from(unquote(raw).to_string())),
        Kind::List(_) | Kind::Map(_) => Err("a list or table cannot be nested here".into()),
    }
}

/// `5432,6432` or `[5432, 6432]`; empty = an empty list.
fn list(item: &Kind, raw: &str) -> std::result::Result<Value, String> {
    let text = raw.trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let items = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| scalar(item, s).map_err(|e| format!("list item {s:?}: {e}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Value::from(items))
}

/// `key=value,key2=value2` (the form of `OTEL_EXPORTER_OTLP_HEADERS`); empty = no entries.
fn map(value: &Kind, raw: &str) -> std::result::Result<Value, String> {
    let mut table = Dict::new();
    for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value (want k1=v1,k2=v2)"))?;
        table.insert(unquote(k.trim()).to_string(), scalar(value, v)?);
    }
    Ok(Value::from(table))
}

/// A value quoted as in TOML (`"a b"`) is taken without its quotes.
fn unquote(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
}

/// Puts `value` at `path`, merging into tables already there.
fn insert(table: &mut Dict, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match (table.get_mut(first), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, entries)) => existing.extend(entries),
            (_, value) => {
                table.insert(first.clone(), value);
            }
        }
        return;
    }
    let child = table
        .entry(first.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if !matches!(child, Value::Dict(..)) {
        *child = Value::from(Dict::new());
    }
    if let Value::Dict(_, child) = child {
        insert(child, rest, value);
    }
}
