//! The datasource's settings as Grafana stores them: `jsonData` (agents, DNS name, timeout,
//! plaintext for labs) and `secureJsonData` (token, CA certificate). Read by hand from JSON
//! rather than typed in the SDK, so a wrong field is a clear error in the panel instead of
//! the whole request being refused by the SDK.
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Per-agent time limit when `jsonData.timeoutMs` is not set.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Upper bound on `timeoutMs`: Grafana's own data-proxy limit is 30 s by default.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Agents asked at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Bound on static agents and on addresses taken from DNS.
pub const MAX_AGENTS: usize = 1_024;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonData {
    agents: Vec<String>,
    dns_name: Option<String>,
    timeout_ms: Option<u64>,
    max_concurrency: Option<usize>,
    insecure_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct SecureJsonData {
    token: Option<String>,
    ca_cert: Option<String>,
}

/// How to reach the fleet.
#[derive(Clone)]
pub struct Settings {
    /// `https://host:port` (or `http://` with `insecure_plaintext`).
    pub agents: Vec<String>,
    /// `name:port`, resolved at each query to every address (a headless Service).
    pub dns_name: Option<String>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub insecure_plaintext: bool,
    pub token: Option<String>,
    /// PEM of the CA the agents' certificates chain to; None = the system's roots are not
    /// used either: an agent's certificate must be vouched for by a configured CA.
    pub ca_cert: Option<String>,
}

impl std::fmt::Debug for Settings {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("agents", &self.agents)
            .field("dns_name", &self.dns_name)
            .field("timeout", &self.timeout)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn read<T: for<'de> Deserialize<'de> + Default>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| Error::Settings(format!("{what}.{}: {}", e.path(), e.inner())))
}

impl Settings {
    /// The settings from Grafana's `jsonData` and decrypted `secureJsonData`.
    pub fn from_json(json: &serde_json::Value, secure: &serde_json::Value) -> Result<Self> {
        let json: JsonData = read(json, "jsonData")?;
        let secure: SecureJsonData = read(secure, "secureJsonData")?;
        let agents: Vec<String> = json
            .agents
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        let dns_name = json
            .dns_name
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty());
        if agents.is_empty() && dns_name.is_none() {
            return Err(Error::Settings(
                "no agents: set jsonData.agents (https://host:port, …) or jsonData.dnsName \
                 (the agents' headless Service, name:port)"
                    .into(),
            ));
        }
        if agents.len() > MAX_AGENTS {
            return Err(Error::Settings(format!(
                "{} agents listed; at most {MAX_AGENTS} (use dnsName for a large fleet)",
                agents.len()
            )));
        }
        let token = secure
            .token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if token.is_none() && !json.insecure_plaintext {
            return Err(Error::Settings(
                "secureJsonData.token is not set: the agents refuse every call without the \
                 token in their api_token_file"
                    .into(),
            ));
        }
        let timeout_ms = json
            .timeout_ms
            .unwrap_or(DEFAULT_TIMEOUT_MS)
            .clamp(1, MAX_TIMEOUT_MS);
        Ok(Self {
            agents,
            dns_name,
            timeout: Duration::from_millis(timeout_ms),
            concurrency: json
                .max_concurrency
                .unwrap_or(DEFAULT_CONCURRENCY)
                .clamp(1, 256),
            insecure_plaintext: json.insecure_plaintext,
            token,
            ca_cert: secure.ca_cert.filter(|c| !c.trim().is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn agents_token_and_defaults() {
        let s = Settings::from_json(
            &json!({"agents": ["https://10.0.0.5:7443", " "], "unknown": 1}),
            &json!({"token": "t0123456789abcdef", "caCert": "PEM"}),
        )
        .expect("valid");
        assert_eq!(s.agents, vec!["https://10.0.0.5:7443"]);
        assert_eq!(s.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(s.concurrency, DEFAULT_CONCURRENCY);
        assert!(!format!("{s:?}").contains("t0123456789abcdef"));
    }

    #[test]
    fn a_missing_token_is_named() {
        let err = Settings::from_json(&json!({"agents": ["https://a:1"]}), &json!({}))
            .expect_err("no token")
            .to_string();
        assert!(err.contains("secureJsonData.token"), "{err}");
        // A lab without TLS may go without one.
        Settings::from_json(
            &json!({"agents": ["http://a:1"], "insecurePlaintext": true}),
            &serde_json::Value::Null,
        )
        .expect("plaintext lab");
    }

    #[test]
    fn no_agents_and_wrong_types_are_named() {
        let err = Settings::from_json(&json!({}), &json!({"token": "x"}))
            .expect_err("no agents")
            .to_string();
        assert!(
            err.contains("jsonData.agents") && err.contains("dnsName"),
            "{err}"
        );
        let err = Settings::from_json(&json!({"timeoutMs": "soon"}), &json!({"token": "x"}))
            .expect_err("wrong type")
            .to_string();
        assert!(err.contains("jsonData.timeoutMs"), "{err}");
    }
}
