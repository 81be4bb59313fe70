//! The agent's HTTP listener (`prometheus_listen`): `/metrics` for Prometheus, `/healthz`
//! (alive: answered while the process serves) and `/readyz` (200 when the pipeline is
//! flowing, else 503 with the reason) for probes.
//!
//! Anybody who reaches the port may connect, so what a connection can hold is bounded: at
//! most 64 connections open at once (one more is closed and counted), 10 s to send a
//! request's headers, 30 s without a byte either way, and failed accepts pause rather than
//! spin (`listen`).
use std::{sync::Arc, time::Duration};

use axum::{http::StatusCode, response::IntoResponse};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{sync::watch, task::JoinSet};
use tokio_stream::StreamExt as _;

use super::{
    health::Readiness,
    listen::{AdmittedConnections, ConnectionCounters},
    prometheus,
    resource::PoolNaming,
};
use crate::{
    error::{Error, Result},
    model::Snapshot,
};

/// What one connection may hold.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Connections open at once. A scraper or a probe uses one at a time; a handful of
    /// Prometheus replicas and kubelets stay far below it.
    connections: usize,
    /// Time to send a request's headers, counted from the connection's first read.
    header: Duration,
    /// A connection with no byte either way for this long is closed (scrapers reconnect).
    idle: Duration,
}

const BOUNDS: Bounds = Bounds {
    connections: 64,
    header: Duration::from_secs(10),
    idle: Duration::from_secs(30),
};

/// Binds `addr` (host names resolved: `localhost:9464` works) and serves until the task is
/// aborted. `counters` count refused connections and failed accepts.
pub async fn serve(
    addr: &str,
    latest: watch::Receiver<Arc<Snapshot>>,
    interval: Duration,
    counters: Arc<ConnectionCounters>,
    naming: Arc<PoolNaming>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("binding the Prometheus endpoint on {addr} (set prometheus_listen)"),
            source,
        })?;
    Ok(serve_on(
        listener, addr, latest, interval, counters, BOUNDS, naming,
    ))
}

/// Serves on a bound `listener` (`addr` names it in the log).
fn serve_on(
    listener: tokio::net::TcpListener,
    addr: &str,
    latest: watch::Receiver<Arc<Snapshot>>,
    interval: Duration,
    counters: Arc<ConnectionCounters>,
    bounds: Bounds,
    naming: Arc<PoolNaming>,
) -> tokio::task::JoinHandle<()> {
    let shown = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    let readiness = Readiness::new(interval);
    let app = router(latest.clone(), readiness.clone(), naming);
    let mut incoming = AdmittedConnections::new(
        listener,
        format!("the Prometheus endpoint {shown}"),
        bounds.connections,
        bounds.idle,
        counters,
    );
    tokio::spawn(async move {
        let tracker = tokio::spawn(readiness.track(latest));
        // Aborting this task drops the set, which aborts every connection's task with it.
        let mut connections = JoinSet::new();
        while let Some(admitted) = incoming.next().await {
            // Reap finished connections so the set stays as small as the open ones.
            while connections.try_join_next().is_some() {}
            let Ok(conn) = admitted else { continue };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            connections.spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(bounds.header)
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("a /metrics connection ended: {e}");
                }
            });
        }
        tracker.abort();
    })
}

/// Checks that `addr` reads as host:port, a host name or an address (IPv6 in brackets),
/// without resolving it: resolution happens when the listener binds.
pub fn check_listen_address(addr: &str) -> std::result::Result<(), String> {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("no port".into());
    };
    port.parse::<u16>()
        .map_err(|e| format!("port {port:?}: {e}"))?;
    let name_like = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !name_like {
        return Err(format!("{host:?} is neither an address nor a host name"));
    }
    Ok(())
}

fn router(
    latest: watch::Receiver<Arc<Snapshot>>,
    readiness: Readiness,
    naming: Arc<PoolNaming>,
) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let snap = latest.borrow().clone();
                let naming = naming.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        prometheus::render(&snap, &naming),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let verdict = readiness.check();
                async move {
                    match verdict {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
                        Err(reason) => {
                            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
                        }
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_may_name_a_host() {
        for ok in [
            "127.0.0.1:9464",
            "[::1]:9464",
            "localhost:9464",
            "node-1.example:80",
        ] {
            assert_eq!(check_listen_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "9464",
            "localhost",
            "localhost:http",
            ":9464",
            "a b:1",
            "host:70000",
        ] {
            assert!(check_listen_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_name_in_prometheus_listen_is_accepted_by_the_config() {
        let config = crate::Config::from_toml("prometheus_listen = \"localhost:9464\"\n", "t")
            .expect("valid");
        assert_eq!(config.prometheus_listen.as_deref(), Some("localhost:9464"));
        let err = crate::Config::from_toml("prometheus_listen = \"localhost\"\n", "t")
            .expect_err("no port")
            .to_string();
        assert!(err.contains("host:port"), "{err}");
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_when_binding() {
        let (_tx, latest) = watch::channel(Arc::new(Snapshot::default()));
        let counters = Arc::new(ConnectionCounters::default());
        // Port 0 on a host name: resolved and bound.
        let task = serve(
            "localhost:0",
            latest,
            Duration::from_secs(1),
            counters,
            Arc::default(),
        )
        .await
        .expect("localhost resolves");
        task.abort();
    }

    /// One request on a fresh connection: the status line and the body.
    async fn get(port: u16, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        conn.read_to_string(&mut response).await.expect("read");
        let status = response.lines().next().unwrap_or_default().to_string();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn bound() -> (tokio::net::TcpListener, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, port)
    }

    #[tokio::test]
    async fn healthz_answers_and_readyz_waits_for_the_first_snapshot() {
        let (tx, latest) = watch::channel(Arc::new(Snapshot::default()));
        let (listener, port) = bound().await;
        let counters = Arc::new(ConnectionCounters::default());
        let task = serve_on(
            listener,
            "t",
            latest,
            Duration::from_secs(1),
            counters,
            BOUNDS,
            Arc::default(),
        );
        assert_eq!(get(port, "/healthz").await.0, "HTTP/1.1 200 OK");
        let (status, body) = get(port, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert!(body.starts_with("no snapshot published yet"), "{body}");
        tx.send_replace(Arc::new(Snapshot::default()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = get(port, "/readyz").await;
            if status == "HTTP/1.1 200 OK" {
                assert_eq!(body, "ready\n");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            get(port, "/metrics")
                .await
                .1
                .contains("herdwatch_agent_dropped_total")
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_closed() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (_tx, latest) = watch::channel(Arc::new(Snapshot::default()));
        let (listener, port) = bound().await;
        let counters = Arc::new(ConnectionCounters::default());
        let bounds = Bounds {
            header: Duration::from_millis(300),
            idle: Duration::from_millis(600),
            ..BOUNDS
        };
        let task = serve_on(
            listener,
            "t",
            latest,
            Duration::from_secs(1),
            counters,
            bounds,
            Arc::default(),
        );
        let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("half a request");
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        // Closed by the agent (an error response or none): the read ends.
        let both = async {
            let _ = slow.read_to_end(&mut rest).await;
            let _ = silent.read_to_end(&mut rest).await;
        };
        // Without the timeouts the reads would wait for good.
        let closed = tokio::time::timeout(Duration::from_secs(30), both).await;
        assert!(closed.is_ok(), "both connections closed by the agent");
        assert!(
            started.elapsed() >= bounds.header,
            "{:?}",
            started.elapsed()
        );
        task.abort();
    }

    #[tokio::test]
    async fn past_its_limit_the_endpoint_closes_new_connections_and_counts_them() {
        use tokio::io::AsyncReadExt as _;
        let (_tx, latest) = watch::channel(Arc::new(Snapshot::default()));
        let (listener, port) = bound().await;
        let counters = Arc::new(ConnectionCounters::default());
        let bounds = Bounds {
            connections: 4,
            ..BOUNDS
        };
        let task = serve_on(
            listener,
            "t",
            latest,
            Duration::from_secs(1),
            counters.clone(),
            bounds,
            Arc::default(),
        );
        let mut held = Vec::new();
        for _ in 0..bounds.connections {
            held.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
        let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the kernel accepts it");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed at once: {read:?}"
        );
        assert_eq!(
            counters.refused.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        drop(held);
        task.abort();
    }
}
