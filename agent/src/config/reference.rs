//! `docs/configuration.md`, generated from the config struct's schema (`cargo xtask docs`
//! writes it; a test fails when the checked-in file differs).
use super::{env, keys, layers::toml_value};

/// The reference as Markdown.
pub fn markdown() -> String {
    let mut out = String::from(
        "<!-- Generated from agent/src/config.rs by `cargo xtask docs`; do not edit. -->\n\
         # Configuration reference\n\n\
         herdwatch reads its settings in layers, each overriding the one before:\n\n\
         1. the defaults below;\n\
         2. a TOML file, `--config PATH` or `HERDWATCH_CONFIG=PATH` (none by default);\n\
         3. `HERDWATCH_*` environment variables — every key below, in capitals, with `__` \
         between tables: `detect.herd.min_copies` is `HERDWATCH_DETECT__HERD__MIN_COPIES`;\n\
         4. flags of `herdwatch run`: `--interval-ms N`, `--no-socket-tracing`.\n\n\
         `herdwatch config` prints the config in effect and where each value came from.\n\n\
         From the environment:\n\n\
         - an **empty** value turns an optional key off (`HERDWATCH_PROMETHEUS_LISTEN=` serves \
         no `/metrics`, `HERDWATCH_API_SOCKET=` no local API, `HERDWATCH_STATE_DIR=` keeps \
         nothing across restarts);\n\
         - booleans are `true`/`false` (also `1`/`0`, `yes`/`no`);\n\
         - lists are `5432,6432` or `[5432,6432]`;\n\
         - tables are `key=value,key2=value2`, or one entry per variable: \
         `HERDWATCH_DETECT__POOL__LIMITS__5432=100`, `HERDWATCH_OTLP__HEADERS__AUTHORIZATION=…` \
         (entry names are lower-cased);\n\
         - an unknown `HERDWATCH_*` variable is refused, naming the nearest real one. These are \
         not settings and are allowed: ",
    );
    let allowed: Vec<String> = env::NOT_SETTINGS
        .iter()
        .map(|n| format!("`{n}`"))
        .chain(env::NOT_SETTING_PREFIXES.iter().map(|p| format!("`{p}*`")))
        .collect();
    out.push_str(&allowed.join(", "));
    out.push_str(
        " (the config file's path, the log filter — e.g. `HERDWATCH_LOG=debug` — and the test \
         and bench harnesses').\n\n\
         The OTLP exporter also honours the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, \
         `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_EXPORTER_OTLP_HEADERS` when `[otlp]` leaves \
         them unset.\n",
    );
    let mut section: Option<Vec<String>> = None;
    let mut ordered: Vec<&keys::Key> = keys::all().iter().collect();
    ordered.sort_by_key(|k| (k.path.len(), k.path.clone()));
    for key in ordered {
        let parent = key.path[..key.path.len().saturating_sub(1)].to_vec();
        if section.as_ref() != Some(&parent) {
            let title = if parent.is_empty() {
                "Top level".to_string()
            } else {
                format!("`[{}]`", parent.join("."))
            };
            out.push_str(&format!("\n## {title}\n"));
            section = Some(parent);
        }
        let default = toml_value(&key.default).unwrap_or_else(|| "unset".into());
        out.push_str(&format!(
            "\n### `{}`\n\n{}\n\n- type: {}{}\n- default: `{}`\n- environment: `{}`\n",
            key.dotted(),
            if key.doc.is_empty() {
                "(undocumented)"
            } else {
                &key.doc
            },
            key.kind.describe(),
            if key.optional {
                " (optional: an empty variable unsets it)"
            } else {
                ""
            },
            default,
            key.env_var(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in reference is what the struct says today.
    #[test]
    fn docs_configuration_md_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == markdown(),
            "docs/configuration.md is stale (or missing): run `cargo xtask docs` and commit it"
        );
    }

    #[test]
    fn every_key_is_documented() {
        let text = markdown();
        for key in keys::all() {
            assert!(
                text.contains(&format!("### `{}`", key.dotted())),
                "{}",
                key.dotted()
            );
            assert!(text.contains(&key.env_var()), "{}", key.env_var());
        }
    }
}
