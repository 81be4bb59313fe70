//! Binds the API's Unix socket and serves gRPC on it: `herdwatch.v1.AgentService` and
//! `grpc.health.v1.Health`, within `ApiLimits`.
//!
//! The socket's file mode (0600) is the access control: findings name routes, queries and
//! command lines, which only root should read. A client that sends garbage costs its own
//! connection (HTTP/2 refuses it) and nothing else.
use std::{path::Path, sync::Arc};

use herdwatch_proto::v1::agent_service_server::AgentServiceServer;
use tokio::{net::UnixListener, sync::watch};

use super::{
    bounds::{ApiCounters, ApiLimits},
    connections::AdmittedConnections,
    service::AgentApi,
};
use crate::{
    error::{Error, Result},
    model::Snapshot,
};

/// Binds the socket (replacing a stale one left by a dead agent; refusing one a live agent
/// serves) and serves it until the task is aborted.
pub fn serve(
    path: &Path,
    latest: watch::Receiver<Arc<Snapshot>>,
    limits: ApiLimits,
    counters: Arc<ApiCounters>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = bind(path)?;
    let incoming = AdmittedConnections::new(listener, limits.connections, counters.clone());
    let api = AgentApi::new(latest, &limits, counters);
    let shown = path.display().to_string();
    Ok(tokio::spawn(async move {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<AgentServiceServer<AgentApi>>().await;
        let agent_service = AgentServiceServer::new(api)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes);
        let served = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(limits.calls_per_connection)
            .max_concurrent_streams(limits.streams_per_connection)
            .add_service(health_service)
            .add_service(agent_service)
            .serve_with_incoming(incoming)
            .await;
        if let Err(err) = served {
            tracing::error!("the API on {shown} stopped: {err}");
        }
    }))
}

fn bind(path: &Path) -> Result<UnixListener> {
    let io = |what: &str, source| Error::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Config {
                origin: "api_socket".into(),
                message: format!(
                    "another herdwatch agent already serves {}; stop it or set api_socket",
                    path.display()
                ),
            });
        }
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("restricting", e))?;
    }
    Ok(listener)
}
