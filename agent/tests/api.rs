//! The gRPC API (`herdwatch.v1.AgentService` on the agent's Unix socket) against a real agent
//! tracing real apps: every message carries what the agent traced (counts equal to the load
//! sent), a Watch stream sees a real finding begin and end, and hostile clients (garbage,
//! a watcher that never reads, too many watchers, 200 at once) cost the others nothing.
mod common;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{load::Load, postgres::Postgres, *};
use herdwatch::{
    Agent, Config,
    export::api::{ApiLimits, client},
    model::{Finding, Snapshot},
};
use herdwatch_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint, Uri};

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/api.sock")
}

async fn connect(socket: &Path) -> AgentServiceClient<Channel> {
    client::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connecting to the API: {e}"))
}

/// Calls `ask` until its answer was taken from the same snapshot as `agent.latest()` read
/// just before, so the two can be compared exactly.
async fn with_snapshot<T>(
    agent: &Agent,
    mut ask: impl AsyncFnMut() -> (u64, T),
) -> (Arc<Snapshot>, T) {
    for _ in 0..50 {
        let snap = agent.latest();
        let (taken_at, answer) = ask().await;
        if taken_at == snap.taken_at_unix_ms {
            return (snap, answer);
        }
    }
    panic!("the API never answered from the agent's latest snapshot");
}

/// The shop on gunicorn over PostgreSQL, a load of known size, a worker killed (so there are
/// pool events): every List and Get call answers exactly the converted snapshot, and the
/// numbers are those of the load.
#[test]
fn every_message_round_trips_through_the_real_server() {
    if !kernel_available("api::every_message_round_trips_through_the_real_server") {
        return;
    }
    let pg = Postgres::start();
    pg.shop_schema();
    let port = free_port();
    let app = gunicorn_shop(4, port, Some(&pg.unix_dsn()));
    wait_http(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(&dir);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            interval_ms: 1000,
            postgres_ports: vec![pg.port],
            api_socket: Some(socket.clone()),
            ..test_config()
        })
        .await;
        let pool = pool_ready(&agent, app.pid(), 4).await;
        // A worker dies; the master replaces it: one exit and one start in the pool's events.
        let killed = pool.pool.workers[0];
        // SAFETY: signalling a worker of the gunicorn this test started.
        assert_eq!(unsafe { libc::kill(killed as i32, libc::SIGKILL) }, 0);
        let pool = wait_for(
            &agent,
            Duration::from_secs(30),
            "the worker replaced",
            |s| {
                s.pool_of_master(app.pid())
                    .filter(|p| p.worker_states.len() == 4 && !p.pool.workers.contains(&killed))
                    .cloned()
            },
        )
        .await;

        let endpoints = [
            "GET /orders/7",
            "GET /orders/512",
            "GET /broken",
            "GET /customers/3",
            "GET /cpu",
        ];
        let load = Load::start(port, &endpoints, 4, Duration::from_millis(10));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let sent = load.stop();
        let count = |endpoint: &str, status: u16| {
            sent.get(endpoint)
                .and_then(|by| by.get(&status))
                .copied()
                .unwrap_or(0)
        };
        let orders = count("GET /orders/7", 200) + count("GET /orders/512", 200);
        let broken = count("GET /broken", 500);
        let customers = count("GET /customers/3", 200);
        let cpu = count("GET /cpu", 200);
        let total: u64 = sent.values().flat_map(|by| by.values()).sum();
        assert_eq!(
            orders + broken + customers + cpu,
            total,
            "every request answered as expected: {sent:?}"
        );
        assert!(orders >= 10 && broken >= 2 && cpu >= 2, "{sent:?}");

        let mut api = connect(&socket).await;
        // Wait until the API shows every request.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let routes = api
                .list_routes(pb::ListRoutesRequest::default())
                .await
                .expect("ListRoutes")
                .into_inner();
            if routes.routes.iter().map(|r| r.requests).sum::<u64>() >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the API never showed the {total} requests sent"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Everything at once equals the agent's own snapshot, converted.
        let (snap, whole) = with_snapshot(&agent, async || {
            let s = api
                .get_snapshot(pb::GetSnapshotRequest {})
                .await
                .expect("GetSnapshot")
                .into_inner();
            let s = s.snapshot.expect("a snapshot");
            (s.taken_at_unix_ms, s)
        })
        .await;
        assert_eq!(whole, pb::Snapshot::from(&*snap));

        // The numbers are the load's.
        let route = |path: &str| {
            whole
                .routes
                .iter()
                .find(|r| r.route == path && r.method == "GET")
                .unwrap_or_else(|| panic!("{path} on the wire: {:?}", whole.routes))
        };
        let statuses = |r: &pb::Route| -> Vec<(u32, u64)> {
            r.statuses.iter().map(|s| (s.status, s.count)).collect()
        };
        let orders_route = route("/orders/{id}");
        assert_eq!(orders_route.requests, orders);
        assert_eq!(statuses(orders_route), [(200, orders)]);
        assert_eq!(orders_route.pool, pool.name);
        assert_eq!(
            orders_route
                .latency
                .as_ref()
                .map(|h| h.counts.iter().sum::<u64>()),
            Some(orders)
        );
        assert!(
            orders_route.db_wait_ns > 0 && orders_route.cpu_ns > 0,
            "{orders_route:?}"
        );
        assert_eq!(statuses(route("/broken")), [(500, broken)]);
        assert_eq!(route("/customers/{id}").requests, customers);
        let cpu_route = route("/cpu");
        assert_eq!(cpu_route.requests, cpu);
        let cpu_ms = cpu_route.cpu_ns as f64 / cpu as f64 / 1e6;
        assert!(
            (40.0..=70.0).contains(&cpu_ms),
            "/cpu burns 50 ms per request, the API says {cpu_ms:.1}"
        );

        let query = |sql: &str| {
            let id = herdwatch::protocol::fingerprint::fingerprint(sql).hex_id();
            whole
                .queries
                .iter()
                .find(|q| q.id == id)
                .unwrap_or_else(|| panic!("{sql} on the wire"))
        };
        let order_query = query("SELECT id, total FROM orders WHERE id = $1");
        assert_eq!(order_query.calls, orders);
        let from: Vec<(&str, u64)> = order_query
            .routes
            .iter()
            .map(|r| (r.route.as_str(), r.calls))
            .collect();
        assert_eq!(from, [("/orders/{id}", orders)]);
        assert_eq!(
            order_query
                .latency
                .as_ref()
                .map(|h| h.counts.iter().sum::<u64>()),
            Some(orders)
        );
        let failing = query("SELECT * FROM missing_table WHERE id = $1");
        let errors: Vec<(&str, u64)> = failing
            .errors_by_sqlstate
            .iter()
            .map(|e| (e.sqlstate.as_str(), e.count))
            .collect();
        assert_eq!(errors, [("42P01", broken)]);
        // /customers sends its literal inline; only the normalised text leaves the agent.
        let by_customer = query("SELECT count(*) FROM orders WHERE customer = 3");
        assert_eq!(by_customer.calls, customers);
        assert!(
            !by_customer.normalized_text.contains('3'),
            "{}",
            by_customer.normalized_text
        );
        let bytes = whole.encode_to_vec();
        assert!(
            !bytes.windows(12).any(|w| w == b"customer = 3"),
            "a raw literal on the wire"
        );

        let wire_pool = whole
            .pools
            .iter()
            .find(|p| p.master_pid == app.pid())
            .expect("the pool");
        assert_eq!(wire_pool.kind(), pb::PoolKind::Gunicorn);
        assert_eq!(wire_pool.workers.len(), 4);
        assert!(
            wire_pool
                .workers
                .iter()
                .all(|w| w.state() != pb::WorkerState::Unspecified)
        );
        assert_eq!(
            wire_pool
                .listeners
                .iter()
                .filter_map(|l| l.port)
                .collect::<Vec<_>>(),
            [u32::from(port)]
        );
        let events: Vec<_> = whole
            .pool_events
            .iter()
            .filter(|e| e.master_pid == app.pid())
            .collect();
        assert!(
            events.iter().any(|e| e.change
                == Some(pb::pool_event::Change::WorkerExited(pb::WorkerExited {
                    pid: killed
                }))),
            "the killed worker's exit: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e.change, Some(pb::pool_event::Change::WorkerStarted(_))))
        );
        let host = whole.host.as_ref().expect("host");
        assert!(host.cpus >= 1 && host.cpu_utilization.is_some(), "{host:?}");
        let stats = whole.agent.as_ref().expect("agent stats");
        assert!(
            stats
                .connections
                .as_ref()
                .is_some_and(|c| c.http_exchanges >= total)
        );
        for reason in [
            "kernel_ring_full",
            "api_connection_refused",
            "api_watch_refused",
            "api_watcher_too_slow",
        ] {
            assert!(
                stats.drops.iter().any(|d| d.reason == reason),
                "{reason} exported"
            );
        }

        // Each List/Get call answers its part of the same snapshot.
        let (snap, pools) = with_snapshot(&agent, async || {
            let a = api
                .list_pools(pb::ListPoolsRequest {})
                .await
                .expect("ListPools")
                .into_inner();
            (a.taken_at_unix_ms, a.pools)
        })
        .await;
        assert_eq!(pools, pb::Snapshot::from(&*snap).pools);
        let (snap, routes) = with_snapshot(&agent, async || {
            let a = api
                .list_routes(pb::ListRoutesRequest {
                    pool: pool.name.clone(),
                })
                .await
                .expect("ListRoutes")
                .into_inner();
            (a.taken_at_unix_ms, a.routes)
        })
        .await;
        let expected: Vec<_> = pb::Snapshot::from(&*snap)
            .routes
            .into_iter()
            .filter(|r| r.pool == pool.name)
            .collect();
        assert_eq!(routes, expected);
        assert!(!routes.is_empty());
        let none = api
            .list_routes(pb::ListRoutesRequest {
                pool: "no such pool".into(),
            })
            .await
            .expect("ListRoutes");
        assert!(none.into_inner().routes.is_empty());
        let (snap, queries) = with_snapshot(&agent, async || {
            let a = api
                .list_queries(pb::ListQueriesRequest { limit: 2 })
                .await
                .expect("ListQueries")
                .into_inner();
            (a.taken_at_unix_ms, a.queries)
        })
        .await;
        let expected: Vec<_> = pb::Snapshot::from(&*snap)
            .queries
            .into_iter()
            .take(2)
            .collect();
        assert_eq!(queries, expected);
        let (snap, findings) = with_snapshot(&agent, async || {
            let a = api
                .list_findings(pb::ListFindingsRequest::default())
                .await
                .expect("ListFindings")
                .into_inner();
            (a.taken_at_unix_ms, a.findings)
        })
        .await;
        assert_eq!(findings, pb::Snapshot::from(&*snap).findings);
        let (snap, events) = with_snapshot(&agent, async || {
            let a = api
                .list_pool_events(pb::ListPoolEventsRequest {})
                .await
                .expect("ListPoolEvents")
                .into_inner();
            (a.taken_at_unix_ms, a.events)
        })
        .await;
        assert_eq!(events, pb::Snapshot::from(&*snap).pool_events);
        let (snap, host) = with_snapshot(&agent, async || {
            let a = api
                .get_host(pb::GetHostRequest {})
                .await
                .expect("GetHost")
                .into_inner();
            (a.taken_at_unix_ms, a.host)
        })
        .await;
        assert_eq!(host, pb::Snapshot::from(&*snap).host);
        let (snap, stats) = with_snapshot(&agent, async || {
            let a = api
                .get_agent_stats(pb::GetAgentStatsRequest {})
                .await
                .expect("GetAgentStats")
                .into_inner();
            (a.taken_at_unix_ms, a.stats)
        })
        .await;
        assert_eq!(stats, pb::Snapshot::from(&*snap).agent);

        // WatchSnapshots: the latest at once, then each new one.
        let mut watch = api
            .watch_snapshots(pb::WatchSnapshotsRequest {})
            .await
            .expect("WatchSnapshots")
            .into_inner();
        let first = watch
            .message()
            .await
            .expect("a message")
            .and_then(|m| m.snapshot)
            .expect("a snapshot");
        let second = watch
            .message()
            .await
            .expect("a message")
            .and_then(|m| m.snapshot)
            .expect("a snapshot");
        assert!(second.taken_at_unix_ms > first.taken_at_unix_ms);
        let requests = |s: &pb::Snapshot| s.routes.iter().map(|r| r.requests).sum::<u64>();
        assert!(requests(&second) >= total);

        // grpc.health.v1 says the service is up.
        let channel = client::channel(&socket).await.expect("a channel");
        let health = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "herdwatch.v1.AgentService".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            health.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    });
}

/// The saturation incident, shortened: gunicorn workers burn both CPUs on `/cpu` until the
/// saturation detector (threshold held for 3 s instead of 60) fires, then the load stops and
/// it resolves. A WatchFindings stream opened before the load sees the onset and then the
/// resolution of the same finding, which reads back into the model intact.
#[test]
fn watch_findings_sees_a_saturation_begin_and_end() {
    if !kernel_available("api::watch_findings_sees_a_saturation_begin_and_end") {
        return;
    }
    let port = free_port();
    let _app = gunicorn_shop(4, port, None);
    wait_http(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(&dir);
    let mut config = Config {
        interval_ms: 500,
        api_socket: Some(socket.clone()),
        ..test_config()
    };
    config.detect.saturation.for_s = 3;
    config.detect.saturation.cpu = 0.85;
    runtime().block_on(async {
        let agent = start_agent_with(config).await;
        let mut api = connect(&socket).await;
        let mut watch = api
            .watch_findings(pb::WatchFindingsRequest {})
            .await
            .expect("WatchFindings")
            .into_inner();
        let load = Load::start(port, &["GET /cpu"], 8, Duration::ZERO);
        let started = Instant::now();
        let onset = loop {
            let t = next(&mut watch, "the saturation's onset").await;
            let f = t.finding.as_ref().expect("a finding");
            eprintln!(
                "{:?} {:?} {} already_active={}",
                t.kind(),
                f.kind(),
                f.id,
                t.already_active
            );
            if t.kind() == pb::FindingTransitionKind::Onset
                && f.kind() == pb::FindingKind::Saturation
                && !t.already_active
            {
                break t;
            }
        };
        let counts = load.stop();
        eprintln!(
            "onset {:.1} s after the load began; load {counts:?}",
            started.elapsed().as_secs_f64()
        );
        let finding = onset.finding.clone().expect("a finding");
        assert!(finding.active);
        assert!(finding.root_cause.contains("CPU"), "{}", finding.root_cause);
        assert!(!finding.evidence.is_empty());
        let resolution = loop {
            let t = next(&mut watch, "the saturation's resolution").await;
            let f = t.finding.as_ref().expect("a finding");
            eprintln!("{:?} {:?} {}", t.kind(), f.kind(), f.id);
            if t.kind() == pb::FindingTransitionKind::Resolution && f.id == finding.id {
                break t;
            }
        };
        assert!(resolution.seen_at_unix_ms > onset.seen_at_unix_ms);
        let resolved = Finding::try_from(resolution.finding.expect("a finding"))
            .expect("reads back into the model");
        assert!(!resolved.active);
        assert_eq!(resolved.occurrences, finding.occurrences);
        // The list agrees, and the CLI's reading of it names the same finding.
        let listed = client::findings(&socket).await.expect("findings");
        let same = listed
            .iter()
            .find(|f| f.id == finding.id)
            .expect("the finding is listed");
        assert!(!same.active);
        let snap = agent.snapshot_now().await.expect("snapshot");
        assert!(
            snap.findings
                .iter()
                .any(|f| f.id == finding.id && !f.active)
        );
    });
}

/// The next transition on a WatchFindings stream, within 90 s.
async fn next(
    watch: &mut tonic::Streaming<pb::WatchFindingsResponse>,
    what: &str,
) -> pb::FindingTransition {
    let message = tokio::time::timeout(Duration::from_secs(90), watch.message())
        .await
        .unwrap_or_else(|_| panic!("no transition in 90 s while waiting for {what}"))
        .unwrap_or_else(|e| panic!("the stream failed waiting for {what}: {e}"))
        .unwrap_or_else(|| panic!("the stream ended waiting for {what}"));
    message.transition.expect("a transition")
}

/// A client with a tiny HTTP/2 window (a few hundred bytes), so a stream it does not read
/// stalls at once.
async fn stingy_channel(socket: &Path) -> Channel {
    let dial = socket.to_path_buf();
    Endpoint::from_static("http://herdwatch-agent.invalid")
        .initial_stream_window_size(512)
        .initial_connection_window_size(65_535)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(dial).await?))
            }
        }))
        .await
        .expect("a stingy channel")
}

async fn drop_count(api: &mut AgentServiceClient<Channel>, reason: &str) -> u64 {
    let stats = api
        .get_agent_stats(pb::GetAgentStatsRequest {})
        .await
        .expect("GetAgentStats")
        .into_inner();
    let stats = stats.stats.expect("stats");
    stats
        .drops
        .iter()
        .find(|d| d.reason == reason)
        .map(|d| d.count)
        .unwrap_or_else(|| panic!("no {reason} count"))
}

async fn requests_traced(agent: &Agent) -> u64 {
    let snap = agent.snapshot_now().await.expect("snapshot");
    snap.routes.iter().map(|r| r.requests).sum()
}

/// Garbage on the socket, a huge request, a watcher that never reads, one watcher past the
/// limit, 200 clients at once, and idle connections past the limit: each is refused or served, the agent counts what it cut off, keeps
/// answering everyone else and keeps tracing.
#[test]
fn hostile_clients_cost_the_others_nothing() {
    if !kernel_available("api::hostile_clients_cost_the_others_nothing") {
        return;
    }
    let port = free_port();
    let _app = gunicorn_shop(2, port, None);
    wait_http(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_in(&dir);
    runtime().block_on(async {
        let agent = start_agent_with(Config {
            interval_ms: 300,
            api_socket: Some(socket.clone()),
            ..test_config()
        })
        .await;
        let load = Load::start(port, &["GET /"], 2, Duration::from_millis(20));
        let mut api = connect(&socket).await;

        // Garbage: HTTP/1, random bytes, a truncated HTTP/2 preface, a frame of nonsense.
        let garbage: [&[u8]; 4] = [
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37],
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage!",
        ];
        for bytes in garbage {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut raw = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect");
            raw.write_all(bytes).await.expect("write");
            let _ = raw.shutdown().await;
            let mut answer = Vec::new();
            // The agent answers with an error or closes; either way within seconds.
            let read =
                tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer)).await;
            assert!(read.is_ok(), "the agent held a garbage connection open");
        }
        api.get_host(pb::GetHostRequest {})
            .await
            .expect("answers after garbage");

        // A huge request is refused, not read into memory.
        let huge = pb::ListRoutesRequest {
            pool: "x".repeat(ApiLimits::default().max_request_bytes + 1),
        };
        let refused = api.list_routes(huge).await.expect_err("too large");
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

        // A watcher that never reads is cut off once its buffer fills, and counted.
        let before = drop_count(&mut api, "api_watcher_too_slow").await;
        let mut stingy = AgentServiceClient::new(stingy_channel(&socket).await);
        let stalled = stingy
            .watch_snapshots(pb::WatchSnapshotsRequest {})
            .await
            .expect("WatchSnapshots");
        let started = Instant::now();
        while drop_count(&mut api, "api_watcher_too_slow").await <= before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the watcher that never reads was never cut off"
            );
            // Everyone else is served meanwhile.
            api.list_routes(pb::ListRoutesRequest::default())
                .await
                .expect("ListRoutes");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        eprintln!(
            "the stalled watcher was cut off after {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // Watchers up to the limit are fed; one more is refused and counted.
        let limit = ApiLimits::default().watch_streams;
        let refused_before = drop_count(&mut api, "api_watch_refused").await;
        let mut watchers = Vec::new();
        for _ in 0..limit {
            let mut c = connect(&socket).await;
            let w = c
                .watch_findings(pb::WatchFindingsRequest {})
                .await
                .expect("a watch within the limit");
            watchers.push((c, w));
        }
        let mut extra = connect(&socket).await;
        let refused = extra
            .watch_snapshots(pb::WatchSnapshotsRequest {})
            .await
            .map(|_| ())
            .expect_err("past the limit");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        // Counted in the next snapshot.
        let started = Instant::now();
        while drop_count(&mut api, "api_watch_refused").await < refused_before + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the refused watch was not counted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Closed watches free their slots.
        watchers.clear();
        let started = Instant::now();
        loop {
            match extra.watch_snapshots(pb::WatchSnapshotsRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    assert!(stream.message().await.expect("a snapshot").is_some());
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "closed watches never freed their slots"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }

        // 200 clients at once, each on its own connection: all answered.
        let traced_before = requests_traced(&agent).await;
        let started = Instant::now();
        let clients: Vec<_> = (0..200)
            .map(|i| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut c = client::connect(&socket)
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    c.list_routes(pb::ListRoutesRequest::default())
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    let snap = c
                        .get_snapshot(pb::GetSnapshotRequest {})
                        .await
                        .map_err(|e| format!("client {i}: {e}"))?;
                    Ok::<_, String>(
                        snap.into_inner()
                            .snapshot
                            .map(|s| s.taken_at_unix_ms)
                            .unwrap_or(0),
                    )
                })
            })
            .collect();
        for c in clients {
            let taken_at = c
                .await
                .expect("client task")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(taken_at > 0);
        }
        eprintln!(
            "200 concurrent clients answered in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // Connections past the limit (opened, never speaking) are closed at once and counted;
        // once they are gone, clients are served again.
        let connections_refused = drop_count(&mut api, "api_connection_refused").await;
        let mut idle = Vec::new();
        for _ in 0..ApiLimits::default().connections + 20 {
            idle.push(
                tokio::net::UnixStream::connect(&socket)
                    .await
                    .expect("the kernel accepts"),
            );
        }
        let started = Instant::now();
        while drop_count(&mut api, "api_connection_refused").await < connections_refused + 20 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "connections past the limit were not refused"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(idle);
        let started = Instant::now();
        loop {
            let answered = match client::connect(&socket).await {
                Ok(mut c) => c.get_host(pb::GetHostRequest {}).await.is_ok(),
                Err(_) => false,
            };
            if answered {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "closed connections never freed their slots"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // And the agent kept tracing through all of it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while requests_traced(&agent).await < traced_before + 20 {
            assert!(
                Instant::now() < deadline,
                "tracing stalled while the API was abused"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let sent = load.stop();
        assert!(
            sent.values()
                .flat_map(|by| by.keys())
                .all(|status| *status == 200),
            "{sent:?}"
        );
        drop(stalled);
        let stats = agent.snapshot_now().await.expect("snapshot").agent.export;
        assert!(stats.api_watchers_too_slow > before && stats.api_watches_refused > refused_before);
        assert!(stats.api_connections_refused >= connections_refused + 20);
    });
}
