//! Every leaf key of [`Config`], read from its JSON schema (`schemars`, which also keeps the
//! doc comments) — so the environment layer, `herdwatch config`, the reference in
//! `docs/configuration.md` and the tests all follow the struct with no list to keep in step.
use std::sync::OnceLock;

use serde_json::Value;

use super::Config;

/// The prefix of every variable that sets a key.
pub const ENV_PREFIX: &str = "HERDWATCH_";
/// Separates nested tables in a variable's name: `HERDWATCH_DETECT__HERD__MIN_COPIES`.
pub const ENV_NESTING: &str = "__";

/// What a key holds, as far as parsing a string for it is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Bool,
    Integer,
    Number,
    String,
    /// A list of values of the kind (`[a, b]` in TOML; `a,b` or `[a,b]` from the environment).
    List(Box<Kind>),
    /// A table with free-form keys (`otlp.headers`, `detect.pool.limits`).
    Map(Box<Kind>),
}

impl Kind {
    /// How the reference names it.
    pub fn describe(&self) -> String {
        match self {
            Kind::Bool => "boolean".into(),
            Kind::Integer => "integer".into(),
            Kind::Number => "number".into(),
            Kind::String => "string".into(),
            Kind::List(item) => format!("list of {}", item.describe()),
            Kind::Map(value) => format!("table of {}", value.describe()),
        }
    }
}

/// One settable key.
#[derive(Debug, Clone)]
pub struct Key {
    /// Table names then the key's own name: `["detect", "herd", "min_copies"]`.
    pub path: Vec<String>,
    pub kind: Kind,
    /// Unset is a valid value (off, or "decided elsewhere"); an empty variable unsets it.
    pub optional: bool,
    /// The field's doc comment, lines joined.
    pub doc: String,
    /// The value in `Config::default()` (JSON; `null` when unset).
    pub default: Value,
}

impl Key {
    /// `detect.herd.min_copies`, as in TOML.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }

    /// `HERDWATCH_DETECT__HERD__MIN_COPIES`.
    pub fn env_var(&self) -> String {
        env_var(&self.path)
    }
}

/// The variable naming a path of keys.
pub fn env_var(path: &[String]) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.iter()
            .map(|s| s.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(ENV_NESTING)
    )
}

/// Every leaf key of `Config` and its nested tables, sorted by path.
pub fn all() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let schema = schemars::schema_for!(Config);
        let root = schema.as_value();
        // Defaults from the value itself rather than the schema's copies, so what is documented
        // is what `Config::default()` holds.
        let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
        let mut keys = Vec::new();
        walk(root, root, &mut Vec::new(), &defaults, &mut keys);
        keys.sort_by(|a, b| a.path.cmp(&b.path));
        keys
    })
}

/// The key at this path, if it is one.
pub fn find(path: &[String]) -> Option<&'static Key> {
    all().iter().find(|k| k.path == path)
}

fn walk(root: &Value, node: &Value, path: &mut Vec<String>, defaults: &Value, out: &mut Vec<Key>) {
    let Some(properties) = resolve(root, node)
        .get("properties")
        .and_then(Value::as_object)
    else {
        return;
    };
    for (name, property) in properties {
        path.push(name.clone());
        let target = resolve(root, property);
        let default = defaults.get(name).cloned().unwrap_or(Value::Null);
        if target.get("properties").is_some() {
            walk(root, target, path, &default, out);
        } else {
            out.push(Key {
                path: path.clone(),
                kind: kind(root, target),
                optional: nullable(target),
                doc: doc(property),
                default,
            });
        }
        path.pop();
    }
}

/// Follows a `$ref` into `$defs`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    node.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| root.get("$defs").and_then(|d| d.get(name)))
        .unwrap_or(node)
}

/// The schema's `type`, minus `null`.
fn type_name(node: &Value) -> Option<&str> {
    match node.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

fn nullable(node: &Value) -> bool {
    match node.get("type") {
        Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
        _ => false,
    }
}

fn kind(root: &Value, node: &Value) -> Kind {
    let node = resolve(root, node);
    let inner = |field: &str| {
        Box::new(
            node.get(field)
                .map_or(Kind::String, |item| kind(root, item)),
        )
    };
    match type_name(node) {
        Some("boolean") => Kind::Bool,
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Number,
        Some("array") => Kind::List(inner("items")),
        Some("object") => Kind::Map(inner("additionalProperties")),
        _ => Kind::String,
    }
}

/// The doc comment as one paragraph (schemars keeps its line breaks).
fn doc(node: &Value) -> String {
    node.get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_found_with_its_kind_and_default() {
        let keys = all();
        let key = |dotted: &str| {
            keys.iter()
                .find(|k| k.dotted() == dotted)
                .unwrap_or_else(|| panic!("{dotted} missing"))
        };
        assert_eq!(key("interval_ms").kind, Kind::Integer);
        assert_eq!(key("interval_ms").default, 2000);
        assert!(key("interval_ms").doc.starts_with("How often"));
        assert_eq!(
            key("postgres_ports").kind,
            Kind::List(Box::new(Kind::Integer))
        );
        assert!(key("prometheus_listen").optional);
        assert!(!key("api_insecure").optional);
        assert_eq!(key("otlp.headers").kind, Kind::Map(Box::new(Kind::String)));
        assert_eq!(
            key("detect.herd.min_copies").env_var(),
            "HERDWATCH_DETECT__HERD__MIN_COPIES"
        );
        assert_eq!(key("detect.saturation.cpu").kind, Kind::Number);
        assert!(key("detect.max_findings").optional);
        assert!(keys.iter().all(|k| !k.path.is_empty()));
        // No table itself is a leaf.
        assert!(
            keys.iter()
                .all(|k| k.dotted() != "detect" && k.dotted() != "otlp")
        );
    }
}
