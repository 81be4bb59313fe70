//! Serves gRPC on the API's listeners — the Unix socket and, when configured, TCP —:
//! `herdwatch.v1.AgentService` and `grpc.health.v1.Health`, within `ApiLimits`.
//!
//! On the socket, its file mode (0600) is the access control: findings name routes, queries
//! and command lines, which only root should read. On TCP, TLS and a bearer token checked
//! before every AgentService call (Watch streams included) take its place. The health
//! service stays open there: it says only whether the agent serves, and the probes that
//! ask it (load balancers, grpc_health_probe) rarely carry a token.
//!
//! A client that sends garbage costs its own connection (HTTP/2, or the TLS handshake,
//! refuses it) and nothing else.
use std::{path::Path, sync::Arc};

use herdwatch_proto::v1::agent_service_server::AgentServiceServer;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
};
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::pb::health_server::{Health, HealthServer};

use super::{
    auth::BearerAuth,
    bounds::{ApiCounters, ApiLimits},
    connections::AdmittedConnections,
    service::AgentApi,
    tcp::TcpApi,
};
use crate::{
    error::{Error, Result},
    model::Snapshot,
};

/// Binds the socket (replacing a stale one left by a dead agent; refusing one a live agent
/// serves) and the TCP address when given, and serves them until their tasks are aborted.
/// Both serve one `AgentApi`, so the Watch limit is the agent's; each listener has its own
/// connection limit (`connections`).
pub fn serve(
    socket: Option<&Path>,
    tcp: Option<TcpApi>,
    latest: watch::Receiver<Arc<Snapshot>>,
    limits: ApiLimits,
    counters: Arc<ApiCounters>,
) -> Result<Vec<JoinHandle<()>>> {
    // Both bound before either is served: a taken port fails the start with no task left
    // running behind it.
    let unix = socket
        .map(|path| bind(path).map(|l| (l, path)))
        .transpose()?;
    let tcp = tcp.map(|tcp| tcp_server(tcp, &limits)).transpose()?;
    let api = AgentApi::new(latest, &limits, counters.clone());
    let mut tasks = Vec::new();
    if let Some((listener, path)) = unix {
        let incoming = AdmittedConnections::new(listener, limits.connections, counters.clone());
        let service = agent_service(api.clone(), &limits);
        let shown = path.display().to_string();
        tasks.push(tokio::spawn(async move {
            let served = server(&limits)
                .add_service(health().await)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(err) = served {
                tracing::error!("the API on {shown} stopped: {err}");
            }
        }));
    }
    if let Some((listener, tcp, mut builder)) = tcp {
        let shown = tcp.shown(&listener);
        let auth = BearerAuth::new(tcp.token.clone(), counters.clone());
        let service = InterceptedService::new(agent_service(api, &limits), auth);
        let incoming = AdmittedConnections::new(listener, limits.connections, counters);
        tracing::info!("serving the API on {shown}");
        tasks.push(tokio::spawn(async move {
            let served = builder
                .add_service(health().await)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(err) = served {
                tracing::error!("the API on {shown} stopped: {err}");
            }
        }));
    }
    Ok(tasks)
}

/// The TCP listener bound, and tonic's server for it with TLS when configured.
fn tcp_server(tcp: TcpApi, limits: &ApiLimits) -> Result<(TcpListener, TcpApi, Server)> {
    let listener = tcp.bind()?;
    let mut builder = server(limits);
    if let Some(tls) = tcp.tls.clone() {
        // Checked when the settings were prepared; an error here is rustls changing its
        // mind, reported all the same.
        builder = builder.tls_config(tls).map_err(|e| Error::Config {
            origin: "api_tls_cert / api_tls_key".into(),
            message: super::client::causes(&e),
        })?;
    }
    Ok((listener, tcp, builder))
}

/// tonic's server with the per-connection bounds.
fn server(limits: &ApiLimits) -> Server {
    Server::builder()
        .concurrency_limit_per_connection(limits.calls_per_connection)
        .max_concurrent_streams(limits.streams_per_connection)
}

fn agent_service(api: AgentApi, limits: &ApiLimits) -> AgentServiceServer<AgentApi> {
    AgentServiceServer::new(api)
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(limits.max_response_bytes)
}

/// `grpc.health.v1`, saying the AgentService serves.
async fn health() -> HealthServer<impl Health> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentApi>>().await;
    health_service
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
