//! The agent's one config struct: defaults, then a TOML file, then `HERDWATCH_*` environment
//! variables, then command-line flags — each validated with an error naming where it came from.
use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod env;
pub mod keys;
mod layers;
pub mod reference;
#[cfg(test)]
mod walk_tests;

pub use env::{NOT_SETTING_PREFIXES, NOT_SETTINGS};
pub use layers::{Flags, Loaded, load};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often a snapshot is taken and the live view refreshed, in milliseconds.
    pub interval_ms: u64,
    /// Capacity of the kernel's per-thread counter LRU map.
    pub thread_map_entries: u32,
    /// Size of the process-event ring buffer in bytes (a power of two, at least 4096).
    pub event_ring_bytes: u32,
    /// Capacity of the channel from the ring-buffer reader to the pipeline.
    pub event_channel_capacity: usize,
    /// Trace sockets (PostgreSQL queries, HTTP requests). Off = CPU, run-queue and process
    /// accounting only: no syscall tracepoints, no payloads captured.
    pub socket_tracing: bool,
    /// Run the socket programs on the raw `sys_enter`/`sys_exit` tracepoints (x86-64 and
    /// arm64) instead of one `syscalls:*` program per traced call. Raw: every system call on
    /// the host runs a short program (about 0.1 µs), and reads, writes and closes skip the
    /// perf record the kernel fills for a `syscalls:*` tracepoint (about 0.3 µs each). Off
    /// (the default): other calls cost nothing. Measured on gunicorn and uvicorn apps, the
    /// default cost less or the same (their servers and clients make many other calls); on
    /// for hosts whose busiest processes mostly read and write.
    pub raw_syscall_tracepoints: bool,
    /// Attach the socket programs as fentry/fexit programs on the kernel's syscall functions
    /// (BPF trampolines): no perf record is filled per call, so every process's reads and
    /// writes cost less. Needs a kernel that loads tracing programs (BTF, trampolines; x86-64
    /// or arm64); where it refuses them the agent says why and uses one `syscalls:*`
    /// tracepoint per call. Off by default: the development hosts' kernel refuses tracing
    /// programs, so this path has not been measured there. `raw_syscall_tracepoints` takes
    /// precedence.
    pub syscall_trampolines: bool,
    /// Walk Python workers' frames at their socket writes: exact query ↔ request pairing on
    /// asyncio workers and each query's call site. Off = the thread heuristic (counted as such).
    pub python_frames: bool,
    /// Destination ports whose TCP connections are PostgreSQL or PgBouncer.
    pub postgres_ports: Vec<u16>,
    /// Payload prefix captured per socket call, bytes (16..=4096).
    pub capture_bytes: u32,
    /// Size of the socket-event ring buffer in bytes (a power of two).
    pub socket_ring_bytes: u32,
    /// No effect (accepted so older config files still load): socket records are read in
    /// place from the ring buffer, which `socket_ring_bytes` sizes. The agent warns when set.
    pub socket_channel_capacity: Option<usize>,
    /// Connections traced at once; the least recently active is dropped beyond this.
    pub max_connections: usize,
    /// Distinct query fingerprints kept; the rest count as "other".
    pub max_fingerprints: usize,
    /// Distinct routes kept; the rest count as "other".
    pub max_routes: usize,
    /// Explicit route patterns, e.g. "/api/users/{name}", matched before automatic grouping.
    pub route_patterns: Vec<String>,
    /// Also write every raw socket record to this file (u32 little-endian length, then the
    /// record), up to 64 MiB — for benchmarks and bug reports. The records hold payload
    /// prefixes, literals included: the file stays on the host unless you move it.
    pub record_socket_events: Option<std::path::PathBuf>,
    /// The local API socket `herdwatch findings` reads (mode 0600). None = no API.
    pub api_socket: Option<std::path::PathBuf>,
    /// A TCP address (`host:port`) where the API is also served, for clients off the host
    /// (a DaemonSet's agent read from elsewhere). None = the Unix socket only. Needs TLS and a
    /// token unless `api_insecure`.
    pub api_listen: Option<String>,
    /// The TCP listener's certificate chain (PEM, leaf first).
    pub api_tls_cert: Option<std::path::PathBuf>,
    /// The TCP listener's private key (PEM); refused when other users may read it.
    pub api_tls_key: Option<std::path::PathBuf>,
    /// A file holding the bearer token every call on the TCP listener must carry (at least
    /// 16 characters); refused when other users may read it.
    pub api_token_file: Option<std::path::PathBuf>,
    /// Serve the TCP listener without TLS and/or without a token. Logged as a warning at
    /// every start; for a network you trust (a test bench), never for a fleet.
    pub api_insecure: bool,
    /// Where `/metrics` is served for Prometheus (`host:port`). None = no endpoint.
    pub prometheus_listen: Option<String>,
    /// Directory for state kept across restarts, created if missing: the finding book (ids,
    /// occurrences, first seen) and the statement book (texts of statements prepared before a
    /// restart). None or "" = nothing persisted.
    pub state_dir: Option<std::path::PathBuf>,
    /// PostgreSQL access of the agent's own (`[postgres]`); nothing unless configured.
    pub postgres: PostgresConfig,
    /// OTLP export (`[otlp]`); off unless an endpoint is configured here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: crate::export::otlp::OtlpConfig,
    /// Detector thresholds (`[detect.herd]`, `[detect.starvation]`, `[detect.saturation]`).
    pub detect: crate::detect::DetectConfig,
}

/// Where the agent serves its local API unless configured otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/herdwatch/api.sock";
/// `[postgres]`: what the agent may ask PostgreSQL itself.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A connection string (`host=… user=… dbname=…` or `postgresql://…`) for a role with
    /// `pg_monitor`. When set, the text of a statement prepared before the agent watched its
    /// connection is read from `pg_stat_activity.query` of the backend serving that
    /// connection (matched by client address and port), literals stripped. Off by default.
    pub monitor_dsn: Option<String>,
}

/// Where state kept across restarts lives unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/herdwatch";
/// Where `/metrics` is served unless configured otherwise (loopback only: no exposure by
/// default).
pub const DEFAULT_PROMETHEUS_LISTEN: &str = "127.0.0.1:9464";

impl Default for Config {
    fn default() -> Self {
        Self {
            interval_ms: 2000,
            thread_map_entries: herdwatch_common::THREAD_MAP_ENTRIES,
            event_ring_bytes: herdwatch_common::EVENT_RING_BYTES,
            event_channel_capacity: 8192,
            socket_tracing: true,
            raw_syscall_tracepoints: false,
            syscall_trampolines: false,
            python_frames: true,
            postgres_ports: vec![5432, 6432],
            capture_bytes: herdwatch_common::DEFAULT_CAPTURE,
            socket_ring_bytes: herdwatch_common::SOCKET_RING_BYTES,
            socket_channel_capacity: None,
            max_connections: 65_536,
            max_fingerprints: 500,
            max_routes: 200,
            route_patterns: Vec::new(),
            record_socket_events: None,
            detect: crate::detect::DetectConfig::default(),
            api_socket: Some(std::path::PathBuf::from(DEFAULT_API_SOCKET)),
            api_listen: None,
            api_tls_cert: None,
            api_tls_key: None,
            api_token_file: None,
            api_insecure: false,
            prometheus_listen: Some(DEFAULT_PROMETHEUS_LISTEN.to_string()),
            state_dir: Some(std::path::PathBuf::from(DEFAULT_STATE_DIR)),
            postgres: PostgresConfig::default(),
            otlp: crate::export::otlp::OtlpConfig::default(),
        }
    }
}

impl Config {
    pub fn route_grouper(&self) -> herdwatch_protocol::route::RouteGrouper {
        // Validated in `validate`; an invalid pattern cannot reach here.
        let patterns = self
            .route_patterns
            .iter()
            .filter_map(|p| herdwatch_protocol::route::RoutePattern::parse(p).ok())
            .collect();
        herdwatch_protocol::route::RouteGrouper::new(patterns)
    }

    /// The state directory, unless persistence is off (unset or empty).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// Parses a TOML document (`origin` names it in errors, e.g. the file path).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    pub fn validate(&self, origin: &str) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                origin: origin.to_string(),
                message,
            })
        };
        self.check_sizes().map_err(|message| Error::Config {
            origin: origin.to_string(),
            message,
        })?;
        for p in &self.route_patterns {
            herdwatch_protocol::route::RoutePattern::parse(p).map_err(|message| Error::Config {
                origin: origin.to_string(),
                message,
            })?;
        }
        // The parse error may quote the DSN, password included: not repeated.
        if let Some(dsn) = &self.postgres.monitor_dsn
            && dsn.parse::<tokio_postgres::Config>().is_err()
        {
            return fail(
                "postgres.monitor_dsn is not a valid connection string (key=value pairs or \
                 a postgresql:// URL)"
                    .to_string(),
            );
        }
        if let Some(addr) = &self.api_listen {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| Error::Config {
                    origin: origin.to_string(),
                    message: format!(
                        "api_listen = {addr:?}: {e} (want host:port, e.g. 0.0.0.0:9466)"
                    ),
                })?;
        }
        if let Some(addr) = &self.prometheus_listen {
            // A host name is resolved when the listener binds (`localhost:9464` works).
            crate::export::http::check_listen_address(addr).map_err(|e| Error::Config {
                origin: origin.to_string(),
                message: format!(
                    "prometheus_listen = {addr:?}: {e} (want host:port, e.g. 127.0.0.1:9464)"
                ),
            })?;
        }
        self.otlp
            .resolve(|k| std::env::var(k).ok())
            .map_err(|message| Error::Config {
                origin: origin.to_string(),
                message,
            })?;
        self.detect.validate().map_err(|message| Error::Config {
            origin: origin.to_string(),
            message,
        })?;
        if !(16..=1_048_576).contains(&self.event_channel_capacity) {
            return fail(format!(
                "event_channel_capacity = {} is outside 16..=1048576",
                self.event_channel_capacity
            ));
        }
        Ok(())
    }

    /// The rules of the API's TCP listener, which span several keys and so several layers
    /// (a TOML file may name the address, the environment the certificate): checked once
    /// the config is whole, when the agent starts, before anything is loaded.
    ///
    /// TLS needs both halves; plaintext, or no token, is refused unless `api_insecure`.
    pub fn check_api_listen(&self) -> Result<()> {
        let Some(addr) = &self.api_listen else {
            return Ok(());
        };
        let fail = |message: String| {
            Err(Error::Config {
                origin: "api_listen".into(),
                message,
            })
        };
        match (&self.api_tls_cert, &self.api_tls_key) {
            (Some(_), None) => {
                return fail("api_tls_cert is set but api_tls_key is not: TLS needs both".into());
            }
            (None, Some(_)) => {
                return fail("api_tls_key is set but api_tls_cert is not: TLS needs both".into());
            }
            (None, None) if !self.api_insecure => {
                return fail(format!(
                    "api_listen = {addr:?} would serve the API in plaintext; set api_tls_cert \
                     and api_tls_key (PEM files) and api_token_file, or api_insecure = true \
                     for a network you trust (HERDWATCH_API_TLS_CERT, HERDWATCH_API_TLS_KEY, \
                     HERDWATCH_API_TOKEN_FILE, HERDWATCH_API_INSECURE)"
                ));
            }
            _ => {}
        }
        if self.api_token_file.is_none() && !self.api_insecure {
            return fail(format!(
                "api_listen = {addr:?} needs api_token_file (a file with a bearer token of at \
                 least 16 characters, mode 0600): without one anybody who reaches the port \
                 reads the findings; or api_insecure = true for a network you trust"
            ));
        }
        Ok(())
    }

    /// Intervals, map and ring sizes, ports and table bounds within what the kernel side
    /// and the pipeline accept.
    fn check_sizes(&self) -> std::result::Result<(), String> {
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms = {} is outside 100..=3600000",
                self.interval_ms
            ));
        }
        if !(1024..=4_194_304).contains(&self.thread_map_entries) {
            return Err(format!(
                "thread_map_entries = {} is outside 1024..=4194304",
                self.thread_map_entries
            ));
        }
        if self.event_ring_bytes < 4096 || !self.event_ring_bytes.is_power_of_two() {
            return Err(format!(
                "event_ring_bytes = {} must be a power of two ≥ 4096",
                self.event_ring_bytes
            ));
        }
        if !(16..=herdwatch_common::MAX_CAPTURE as u32).contains(&self.capture_bytes) {
            return Err(format!(
                "capture_bytes = {} is outside 16..=4096",
                self.capture_bytes
            ));
        }
        if self.socket_ring_bytes < 4096 || !self.socket_ring_bytes.is_power_of_two() {
            return Err(format!(
                "socket_ring_bytes = {} must be a power of two ≥ 4096",
                self.socket_ring_bytes
            ));
        }
        if self.postgres_ports.is_empty() || self.postgres_ports.len() > 64 {
            return Err("postgres_ports must list 1 to 64 ports".to_string());
        }
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_fingerprints", self.max_fingerprints),
            ("max_routes", self.max_routes),
        ] {
            if !(1..=1_048_576).contains(&v) {
                return Err(format!("{name} = {v} is outside 1..=1048576"));
            }
        }
        Ok(())
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, any case) from an environment variable.
fn parse_bool(value: &str) -> std::result::Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> Result<Config> {
        load(
            None,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            Flags::default(),
        )
        .map(|l| l.config)
    }

    #[test]
    fn defaults_are_valid_and_toml_overrides() {
        Config::default()
            .validate("default")
            .expect("defaults valid");
        let c = Config::from_toml("interval_ms = 500\n", "t.toml").expect("valid");
        assert_eq!(c.interval_ms, 500);
        assert_eq!(c.thread_map_entries, Config::default().thread_map_entries);
    }

    #[test]
    fn bad_lines_name_the_origin_and_the_problem() {
        let err = Config::from_toml("interval_ms = \"fast\"\n", "/etc/herdwatch.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/etc/herdwatch.toml") && text.contains("line 1"),
            "{text}"
        );
        let err = Config::from_toml("intervall_ms = 5\n", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("intervall_ms"), "{err}");
        let err = Config::from_toml("event_ring_bytes = 5000\n", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("power of two"), "{err}");
    }

    #[test]
    fn env_overrides_and_rejects_garbage() {
        let c = from_env(&[("HERDWATCH_INTERVAL_MS", "250")]).expect("valid");
        assert_eq!(c.interval_ms, 250);
        let err = from_env(&[("HERDWATCH_INTERVAL_MS", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HERDWATCH_INTERVAL_MS"), "{err}");
    }

    #[test]
    fn monitor_dsn_is_off_by_default_and_a_bad_one_is_refused_without_echoing_it() {
        assert_eq!(Config::default().postgres.monitor_dsn, None);
        let c = Config::from_toml(
            "[postgres]\nmonitor_dsn = \"host=db user=mon password=s3cret\"\n",
            "t",
        )
        .expect("valid");
        assert!(c.postgres.monitor_dsn.is_some());
        let err = Config::from_toml(
            "[postgres]\nmonitor_dsn = \"host=db password='s3cret\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("monitor_dsn") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn state_dir_defaults_on_and_empty_turns_it_off() {
        let c = Config::default();
        assert_eq!(c.state_dir(), Some(Path::new(DEFAULT_STATE_DIR)));
        let c = Config::from_toml("state_dir = \"/tmp/hw\"\n", "t").expect("valid");
        assert_eq!(c.state_dir(), Some(Path::new("/tmp/hw")));
        let c = Config::from_toml("state_dir = \"\"\n", "t").expect("valid");
        assert_eq!(c.state_dir(), None);
        let c = from_env(&[("HERDWATCH_STATE_DIR", "")]).expect("valid");
        assert_eq!(c.state_dir(), None);
    }

    #[test]
    fn the_tcp_listener_is_off_by_default_and_set_by_toml_or_env() {
        let c = Config::default();
        assert_eq!(c.api_listen, None);
        c.check_api_listen().expect("no TCP, nothing to check");
        let c = Config::from_toml(
            "api_listen = \"0.0.0.0:9466\"\napi_tls_cert = \"/etc/hw/cert.pem\"\n\
             api_tls_key = \"/etc/hw/key.pem\"\napi_token_file = \"/etc/hw/token\"\n",
            "t",
        )
        .expect("valid");
        c.check_api_listen().expect("TLS and a token");
        let c = from_env(&[
            ("HERDWATCH_API_LISTEN", "127.0.0.1:9466"),
            ("HERDWATCH_API_INSECURE", "true"),
        ])
        .expect("valid");
        assert_eq!(c.api_listen.as_deref(), Some("127.0.0.1:9466"));
        assert!(c.api_insecure);
        c.check_api_listen().expect("insecure allows plaintext");
        let err = from_env(&[("HERDWATCH_API_INSECURE", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HERDWATCH_API_INSECURE"), "{err}");
        let err = Config::from_toml("api_listen = \"9466\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api_listen") && err.contains("host:port"),
            "{err}"
        );
    }

    #[test]
    fn plaintext_or_tokenless_tcp_is_refused_naming_the_keys() {
        let tcp = |extra: &str| {
            Config::from_toml(&format!("api_listen = \"0.0.0.0:9466\"\n{extra}"), "t")
                .expect("each key valid alone")
        };
        let err = tcp("").check_api_listen().unwrap_err().to_string();
        for key in [
            "plaintext",
            "api_tls_cert",
            "api_tls_key",
            "api_token_file",
            "api_insecure = true",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        let err = tcp("api_tls_cert = \"/c.pem\"\n")
            .check_api_listen()
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_tls_key is not"), "{err}");
        let err = tcp("api_tls_key = \"/k.pem\"\n")
            .check_api_listen()
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_tls_cert is not"), "{err}");
        let err = tcp("api_tls_cert = \"/c.pem\"\napi_tls_key = \"/k.pem\"\n")
            .check_api_listen()
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs api_token_file"), "{err}");
        tcp("api_insecure = true\n")
            .check_api_listen()
            .expect("insecure: plaintext and no token");
        tcp("api_tls_cert = \"/c.pem\"\napi_tls_key = \"/k.pem\"\napi_insecure = true\n")
            .check_api_listen()
            .expect("insecure: TLS without a token");
    }
}
