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
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::Server};
use tonic_health::pb::health_server::{Health, HealthServer};

use super::{
    auth::BearerAuth,
    bounds::{ApiCounters, ApiLimits},
    service::AgentApi,
    socket_file::{self, SocketFile},
    tcp::TcpApi,
};
use crate::{
    error::{Error, Result},
    export::listen::AdmittedConnections,
    model::Snapshot,
};

/// The API's tasks and the socket file it serves on (removed when dropped).
#[derive(Debug)]
pub struct Served {
    pub tasks: Vec<JoinHandle<()>>,
    pub socket: Option<SocketFile>,
}

/// Binds the socket (replacing a stale one left by a dead agent; refusing one a live agent
/// serves, and anything that is not a socket) and the TCP address when given, and serves
/// them until their tasks are aborted. Both serve one `AgentApi`, so the Watch limit is the
/// agent's; each listener has its own connection limit (`connections`).
pub fn serve(
    socket: Option<&Path>,
    tcp: Option<TcpApi>,
    latest: watch::Receiver<Arc<Snapshot>>,
    limits: ApiLimits,
    counters: Arc<ApiCounters>,
) -> Result<Served> {
    // Both bound before either is served: a taken port fails the start with no task left
    // running behind it, and the socket file's guard removes what was created.
    let (unix, socket_file) = match socket {
        Some(path) => {
            let (listener, file) = socket_file::bind(path)?;
            (Some((listener, path)), Some(file))
        }
        None => (None, None),
    };
    let tcp = tcp.map(|tcp| tcp_server(tcp, &limits)).transpose()?;
    let api = AgentApi::new(latest, &limits, counters.clone());
    let mut tasks = Vec::new();
    if let Some((listener, path)) = unix {
        let shown = path.display().to_string();
        let incoming = AdmittedConnections::new(
            listener,
            format!("the API socket {shown}"),
            limits.connections,
            limits.idle,
            counters.connections.clone(),
        );
        let service = agent_service(api.clone(), &limits);
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
        let incoming = AdmittedConnections::new(
            listener,
            format!("the API on {shown}"),
            limits.connections,
            limits.idle,
            counters.connections.clone(),
        );
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
    Ok(Served {
        tasks,
        socket: socket_file,
    })
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
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(limits.keepalive))
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
