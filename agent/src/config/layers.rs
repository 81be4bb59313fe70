//! Layered loading with `figment`: defaults, then the TOML file, then `HERDWATCH_*`
//! variables, then command-line flags. Every value keeps a tag of the layer it came from,
//! which `herdwatch config` prints next to it.
use std::path::Path;

use figment::{
    Figment, Metadata, Profile, Provider, Source,
    value::{Dict, Map, Value},
};

use super::{Config, env, keys};
use crate::error::{Error, Result};

/// What the command line overrides (`herdwatch run --interval-ms N --no-socket-tracing`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub interval_ms: Option<u64>,
    pub no_socket_tracing: bool,
}

const DEFAULT: &str = "default";
const ENVIRONMENT: &str = "environment";
const COMMAND_LINE: &str = "command line";

/// The config in effect and the layers it was merged from.
pub struct Loaded {
    pub config: Config,
    figment: Figment,
    /// The `HERDWATCH_*` variables that set something.
    variables: Vec<String>,
}

/// One layer: a table and the metadata that names it.
struct Layer {
    metadata: Metadata,
    table: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.table.clone()))
    }
}

/// Merges the layers and validates the result; `vars` is the environment
/// (`std::env::vars()` in the agent).
pub fn load(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
    flags: Flags,
) -> Result<Loaded> {
    let mut figment = Figment::from(Layer {
        metadata: Metadata::named(DEFAULT),
        table: table_of(&Config::default(), DEFAULT)?,
    });
    let mut origin = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("config file {}", path.display()),
            source,
        })?;
        let name = path.display().to_string();
        // Alone first, for errors with the file's line numbers and its own rules.
        Config::from_toml(&text, &name)?;
        let parsed: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
            origin: name.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        figment = figment.merge(Layer {
            metadata: Metadata::from(name.clone(), Source::File(path.to_path_buf())),
            table: table_of(&parsed, &name)?,
        });
    }
    let environment = env::read(vars)?;
    let variables = environment.variables.clone();
    if !environment.variables.is_empty() {
        origin.push(format!(
            "environment ({})",
            environment.variables.join(", ")
        ));
        figment = figment.merge(Layer {
            metadata: Metadata::named(ENVIRONMENT)
                .interpolater(|_: &Profile, path: &[&str]| keys::env_var(&key_of(path))),
            table: environment.table,
        });
    }
    let mut flag_table = Dict::new();
    if let Some(ms) = flags.interval_ms {
        flag_table.insert("interval_ms".into(), Value::from(ms));
        origin.push("--interval-ms".into());
    }
    if flags.no_socket_tracing {
        flag_table.insert("socket_tracing".into(), Value::from(false));
        origin.push("--no-socket-tracing".into());
    }
    if !flag_table.is_empty() {
        figment = figment.merge(Layer {
            metadata: Metadata::named(COMMAND_LINE).interpolater(|_: &Profile, path: &[&str]| {
                match path {
                    ["socket_tracing"] => "--no-socket-tracing".to_string(),
                    _ => format!("--{}", path.join("-").replace('_', "-")),
                }
            }),
            table: flag_table,
        });
    }
    let origin = if origin.is_empty() {
        file.map_or_else(|| DEFAULT.to_string(), |p| p.display().to_string())
    } else {
        origin.join(" and ")
    };
    let config: Config = figment.extract().map_err(|e| Error::Config {
        origin: origin.clone(),
        message: e.to_string(),
    })?;
    config.validate(&origin)?;
    Ok(Loaded {
        config,
        figment,
        variables,
    })
}

/// The key a figment path is in: `postgres_ports.0` (an item) is `postgres_ports`, so an
/// error names the variable that was set.
fn key_of(path: &[&str]) -> Vec<String> {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    (1..=path.len())
        .rev()
        .map(|n| &path[..n])
        .find(|prefix| keys::find(prefix).is_some())
        .unwrap_or(&path)
        .to_vec()
}

fn table_of(value: &impl serde::Serialize, origin: &str) -> Result<Dict> {
    let bad = |message: String| Error::Config {
        origin: origin.to_string(),
        message,
    };
    Value::serialize(value)
        .map_err(|e| bad(e.to_string()))?
        .into_dict()
        .ok_or_else(|| bad("not a table".into()))
}

impl Loaded {
    /// Where the value of the key at `path` came from: `default`, the file's path, the
    /// variable's name or the flag.
    pub fn source_of(&self, path: &[String]) -> String {
        let Ok(value) = self.figment.find_value(&path.join(".")) else {
            return DEFAULT.to_string();
        };
        // A table's entries may come from several layers.
        let mut sources: Vec<String> = match &value {
            Value::Dict(_, entries) if !entries.is_empty() => entries
                .iter()
                .map(|(name, entry)| {
                    // Named by its own variable when it was set that way
                    // (`HERDWATCH_OTLP__HEADERS__AUTHORIZATION`), else by the table's.
                    let mut entry_path = path.to_vec();
                    entry_path.push(name.clone());
                    let own = keys::env_var(&entry_path);
                    if self.variables.contains(&own) {
                        own
                    } else {
                        self.label(entry, path)
                    }
                })
                .collect(),
            _ => vec![self.label(&value, path)],
        };
        sources.sort();
        sources.dedup();
        sources.join(", ")
    }

    fn label(&self, value: &Value, path: &[String]) -> String {
        match self.figment.get_metadata(value.tag()) {
            Some(md) if md.name == ENVIRONMENT || md.name == COMMAND_LINE => {
                md.interpolate(&Profile::Default, path)
            }
            Some(md) => md.name.to_string(),
            None => DEFAULT.to_string(),
        }
    }

    /// The effective config as TOML, each key followed by where its value came from; unset
    /// keys as comments.
    pub fn render(&self) -> String {
        let values = serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null);
        let mut out = String::from(
            "# The effective config: each key with where its value came from (default, the \
             config file,\n# a HERDWATCH_* variable, or a flag). Unset keys are commented \
             out.\n",
        );
        let mut table: Option<&[String]> = None;
        // Shallow keys first: after a [table] header every key belongs to that table.
        let mut ordered: Vec<&keys::Key> = keys::all().iter().collect();
        ordered.sort_by_key(|k| (k.path.len(), k.path.clone()));
        for key in ordered {
            let Some((name, parent)) = key.path.split_last() else {
                continue;
            };
            if table != Some(parent) {
                if !parent.is_empty() {
                    out.push_str(&format!("\n[{}]\n", parent.join(".")));
                }
                table = Some(parent);
            }
            let value = key
                .path
                .iter()
                .try_fold(&values, |v, p| v.get(p))
                .unwrap_or(&serde_json::Value::Null);
            let source = self.source_of(&key.path);
            let line = match toml_value(value) {
                Some(v) => format!("{name} = {v}"),
                None => format!("# {name} = (unset)"),
            };
            out.push_str(&format!("{line:<48} # {source}\n"));
        }
        out
    }
}

/// A JSON value as TOML; None for null (TOML has none).
pub(super) fn toml_value(value: &serde_json::Value) -> Option<String> {
    if value.is_null() {
        return None;
    }
    toml::Value::try_from(value).ok().map(|v| v.to_string())
}
