//! Everything that can go wrong between Grafana, this plugin and an agent, each naming what
//! to fix.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The datasource's settings (jsonData / secureJsonData) cannot be used.
    #[error("datasource settings: {0}")]
    Settings(String),
    /// A query's JSON cannot be read: the field and what was wrong with it.
    #[error("query {ref_id}: {message}")]
    Query { ref_id: String, message: String },
    /// The DNS name of the agents' headless Service.
    #[error("DNS name {name}: {message}")]
    Dns { name: String, message: String },
    /// One agent failed: its address and the cause.
    #[error("agent {address}: {message}")]
    Agent { address: String, message: String },
    /// Every agent failed; each failure is listed.
    #[error("no agent answered: {0}")]
    AllFailed(String),
    /// A frame could not be built or encoded.
    #[error("frame: {0}")]
    Frame(String),
    /// A CallResource path this plugin does not serve.
    #[error("no resource {0}; want /hosts, /pools, /routes?pool=…, /queries?pool=…")]
    NoResource(String),
    /// A stream path this plugin does not serve.
    #[error("no stream {0}; want findings")]
    NoStream(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
