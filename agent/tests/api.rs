//! The gRPC API (`herdwatch.v1.AgentService` on the agent's Unix socket) against a real agent
//! tracing real apps: every message carries what the agent traced (counts equal to the load
//! sent), a Watch stream sees a real finding begin and end, and hostile clients (garbage,
//! a watcher that never reads, too many watchers or connections, 200 at once) cost the others
//! nothing.
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
    model::{Finding, PoolView, Snapshot},
};
use herdwatch_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint, Uri};

type Api = AgentServiceClient<Channel>;

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/api.sock")
}

async fn connect(socket: &Path) -> Api {
    client::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connecting to the API: {e}"))
}

/// Polls `done` every 100 ms until it holds, or panics after `timeout` naming `what`.
async fn eventually(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Requests the load generator got answered, by what the app does with them.
struct Sent {
    orders: u64,
    broken: u64,
    customers: u64,
    cpu: u64,
    total: u64,
}

const SHOP_LOAD: [&str; 5] = [
    "GET /orders/7",
    "GET /orders/512",
    "GET /broken",
    "GET /customers/3",
    "GET /cpu",
];

/// Four seconds of the shop's load; every request answered with its expected status.
fn shop_load(port: u16) -> Sent {
    let load = Load::start(port, &SHOP_LOAD, 4, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(4));
    let counts = load.stop();
    let count = |endpoint: &str, status: u16| {
        counts
            .get(endpoint)
            .and_then(|by| by.get(&status))
            .copied()
            .unwrap_or(0)
    };
    let sent = Sent {
        orders: count("GET /orders/7", 200) + count("GET /orders/512", 200),
        broken: count("GET /broken", 500),
        customers: count("GET /customers/3", 200),
        cpu: count("GET /cpu", 200),
        total: counts.values().flat_map(|by| by.values()).sum(),
    };
    assert_eq!(
        sent.orders + sent.broken + sent.customers + sent.cpu,
        sent.total,
        "every request answered as expected: {counts:?}"
    );
    assert!(
        sent.orders >= 10 && sent.broken >= 2 && sent.cpu >= 2,
        "{counts:?}"
    );
    sent
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
        let master = app.pid();
        let pool = pool_ready(&agent, master, 4).await;
        // A worker dies; the master replaces it: one exit and one start in the pool's events.
        let killed = pool.pool.workers[0];
        // SAFETY: signalling a worker of the gunicorn this test started.
        assert_eq!(unsafe { libc::kill(killed as i32, libc::SIGKILL) }, 0);
        let pool = wait_for(
            &agent,
            Duration::from_secs(30),
            "the worker replaced",
            |s| {
                s.pool_of_master(master)
                    .filter(|p| p.worker_states.len() == 4 && !p.pool.workers.contains(&killed))
                    .cloned()
            },
        )
        .await;
        let sent = tokio::task::spawn_blocking(move || shop_load(port))
            .await
            .expect("load");

        let mut api = connect(&socket).await;
        eventually(
            "the API to show every request",
            Duration::from_secs(30),
            async || {
                let routes = api.list_routes(pb::ListRoutesRequest::default()).await;
                let routes = routes.expect("ListRoutes").into_inner().routes;
                routes.iter().map(|r| r.requests).sum::<u64>() >= sent.total
            },
        )
        .await;

        // Everything at once equals the agent's own snapshot, converted.
        let (snap, whole) = with_snapshot(&agent, async || {
            let answer = api.get_snapshot(pb::GetSnapshotRequest {}).await;
            let whole = answer.expect("GetSnapshot").into_inner().snapshot;
            let whole = whole.expect("a snapshot");
            (whole.taken_at_unix_ms, whole)
        })
        .await;
        assert_eq!(whole, pb::Snapshot::from(&*snap));
        assert_the_load_is_on_the_wire(&whole, &sent, &pool.name);
        assert_the_pool_is_on_the_wire(&whole, &pool, killed, port);
        each_call_answers_its_part(&agent, &mut api, &pool.name).await;
        watch_and_health(&mut api, &socket, sent.total).await;
    });
}

fn assert_the_load_is_on_the_wire(whole: &pb::Snapshot, sent: &Sent, pool: &str) {
    // This pool's routes: the agent sees every pool on the host, and the same app elsewhere
    // has the same routes.
    let route = |path: &str| {
        let found = whole
            .routes
            .iter()
            .find(|r| r.route == path && r.method == "GET" && r.pool == pool);
        found.unwrap_or_else(|| panic!("{path} on the wire: {:?}", whole.routes))
    };
    let statuses = |r: &pb::Route| -> Vec<(u32, u64)> {
        r.statuses.iter().map(|s| (s.status, s.count)).collect()
    };
    let samples = |h: &Option<pb::LatencyHistogram>| h.as_ref().map(|h| h.counts.iter().sum());
    let orders = route("/orders/{id}");
    assert_eq!(orders.requests, sent.orders);
    assert_eq!(statuses(orders), [(200, sent.orders)]);
    assert_eq!(samples(&orders.latency), Some(sent.orders));
    assert!(orders.db_wait_ns > 0 && orders.cpu_ns > 0, "{orders:?}");
    assert_eq!(statuses(route("/broken")), [(500, sent.broken)]);
    assert_eq!(route("/customers/{id}").requests, sent.customers);
    let cpu = route("/cpu");
    assert_eq!(cpu.requests, sent.cpu);
    let cpu_ms = cpu.cpu_ns as f64 / sent.cpu as f64 / 1e6;
    assert!(
        (40.0..=70.0).contains(&cpu_ms),
        "/cpu burns 50 ms per request, not {cpu_ms:.1}"
    );

    let query = |sql: &str| {
        let id = herdwatch::protocol::fingerprint::fingerprint(sql).hex_id();
        let found = whole.queries.iter().find(|q| q.id == id);
        found.unwrap_or_else(|| panic!("{sql} on the wire"))
    };
    let by_id = query("SELECT id, total FROM orders WHERE id = $1");
    assert_eq!(by_id.calls, sent.orders);
    let from: Vec<(&str, u64)> = by_id
        .routes
        .iter()
        .map(|r| (r.route.as_str(), r.calls))
        .collect();
    assert_eq!(from, [("/orders/{id}", sent.orders)]);
    assert_eq!(samples(&by_id.latency), Some(sent.orders));
    let failing = query("SELECT * FROM missing_table WHERE id = $1");
    let errors: Vec<(&str, u64)> = failing
        .errors_by_sqlstate
        .iter()
        .map(|e| (e.sqlstate.as_str(), e.count))
        .collect();
    assert_eq!(errors, [("42P01", sent.broken)]);
    // /customers sends its literal inline; only the normalised text leaves the agent.
    let by_customer = query("SELECT count(*) FROM orders WHERE customer = 3");
    assert_eq!(by_customer.calls, sent.customers);
    assert!(
        !by_customer.normalized_text.contains('3'),
        "{by_customer:?}"
    );
    let bytes = whole.encode_to_vec();
    assert!(
        !bytes.windows(12).any(|w| w == b"customer = 3"),
        "a raw literal on the wire"
    );

    let stats = whole.agent.as_ref().expect("agent stats");
    let exchanges = stats.connections.as_ref().map(|c| c.http_exchanges);
    assert!(exchanges >= Some(sent.total), "{stats:?}");
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
}

fn assert_the_pool_is_on_the_wire(whole: &pb::Snapshot, pool: &PoolView, killed: u32, port: u16) {
    let master = pool.pool.master;
    let wire = whole
        .pools
        .iter()
        .find(|p| p.master_pid == master)
        .expect("the pool");
    assert_eq!(wire.name, pool.name);
    assert_eq!(wire.kind(), pb::PoolKind::Gunicorn);
    assert_eq!(wire.workers.len(), 4);
    assert!(
        wire.workers
            .iter()
            .all(|w| w.state() != pb::WorkerState::Unspecified)
    );
    let ports: Vec<u32> = wire.listeners.iter().filter_map(|l| l.port).collect();
    assert_eq!(ports, [u32::from(port)]);
    assert!(
        whole.routes.iter().any(|r| r.pool == pool.name),
        "routes name their pool"
    );
    let events: Vec<_> = whole
        .pool_events
        .iter()
        .filter(|e| e.master_pid == master)
        .collect();
    let exited = pb::pool_event::Change::WorkerExited(pb::WorkerExited { pid: killed });
    assert!(
        events.iter().any(|e| e.change.as_ref() == Some(&exited)),
        "{events:?}"
    );
    let started =
        |e: &pb::PoolEvent| matches!(e.change, Some(pb::pool_event::Change::WorkerStarted(_)));
    assert!(events.iter().any(|e| started(e)), "{events:?}");
    let host = whole.host.as_ref().expect("host");
    assert!(host.cpus >= 1 && host.cpu_utilization.is_some(), "{host:?}");
}

/// Each List/Get call answers its part of one snapshot, exactly.
async fn each_call_answers_its_part(agent: &Agent, api: &mut Api, pool: &str) {
    fn wire(snap: &Snapshot) -> pb::Snapshot {
        pb::Snapshot::from(snap)
    }
    let (snap, pools) = with_snapshot(agent, async || {
        let a = api
            .list_pools(pb::ListPoolsRequest {})
            .await
            .expect("ListPools")
            .into_inner();
        (a.taken_at_unix_ms, a.pools)
    })
    .await;
    assert_eq!(pools, wire(&snap).pools);
    let (snap, routes) = with_snapshot(agent, async || {
        let request = pb::ListRoutesRequest {
            pool: pool.to_string(),
        };
        let a = api
            .list_routes(request)
            .await
            .expect("ListRoutes")
            .into_inner();
        (a.taken_at_unix_ms, a.routes)
    })
    .await;
    let expected: Vec<_> = wire(&snap)
        .routes
        .into_iter()
        .filter(|r| r.pool == pool)
        .collect();
    assert!(!routes.is_empty());
    assert_eq!(routes, expected);
    let request = pb::ListRoutesRequest {
        pool: "no such pool".into(),
    };
    let none = api
        .list_routes(request)
        .await
        .expect("ListRoutes")
        .into_inner();
    assert!(none.routes.is_empty());
    let (snap, queries) = with_snapshot(agent, async || {
        let a = api.list_queries(pb::ListQueriesRequest { limit: 2 }).await;
        let a = a.expect("ListQueries").into_inner();
        (a.taken_at_unix_ms, a.queries)
    })
    .await;
    assert_eq!(
        queries,
        wire(&snap).queries.into_iter().take(2).collect::<Vec<_>>()
    );
    let (snap, findings) = with_snapshot(agent, async || {
        let a = api.list_findings(pb::ListFindingsRequest::default()).await;
        let a = a.expect("ListFindings").into_inner();
        (a.taken_at_unix_ms, a.findings)
    })
    .await;
    assert_eq!(findings, wire(&snap).findings);
    let (snap, events) = with_snapshot(agent, async || {
        let a = api.list_pool_events(pb::ListPoolEventsRequest {}).await;
        let a = a.expect("ListPoolEvents").into_inner();
        (a.taken_at_unix_ms, a.events)
    })
    .await;
    assert_eq!(events, wire(&snap).pool_events);
    let (snap, host) = with_snapshot(agent, async || {
        let a = api
            .get_host(pb::GetHostRequest {})
            .await
            .expect("GetHost")
            .into_inner();
        (a.taken_at_unix_ms, a.host)
    })
    .await;
    assert_eq!(host, wire(&snap).host);
    let (snap, stats) = with_snapshot(agent, async || {
        let a = api.get_agent_stats(pb::GetAgentStatsRequest {}).await;
        let a = a.expect("GetAgentStats").into_inner();
        (a.taken_at_unix_ms, a.stats)
    })
    .await;
    assert_eq!(stats, wire(&snap).agent);
}

/// WatchSnapshots sends the latest snapshot at once, then each new one; grpc.health.v1 says
/// the service is serving.
async fn watch_and_health(api: &mut Api, socket: &Path, requests_sent: u64) {
    let watch = api.watch_snapshots(pb::WatchSnapshotsRequest {}).await;
    let mut watch = watch.expect("WatchSnapshots").into_inner();
    let mut next = async || {
        let message = watch
            .message()
            .await
            .expect("a message")
            .expect("not the end");
        message.snapshot.expect("a snapshot")
    };
    let first = next().await;
    let second = next().await;
    assert!(second.taken_at_unix_ms > first.taken_at_unix_ms);
    let requests: u64 = second.routes.iter().map(|r| r.requests).sum();
    assert!(requests >= requests_sent);

    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let channel = client::channel(socket).await.expect("a channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: "herdwatch.v1.AgentService".into(),
    };
    let answer = health
        .check(request)
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);
}

/// The next transition on a WatchFindings stream, within 90 s.
async fn next_transition(
    watch: &mut tonic::Streaming<pb::WatchFindingsResponse>,
    what: &str,
) -> pb::FindingTransition {
    let message = tokio::time::timeout(Duration::from_secs(90), watch.message())
        .await
        .unwrap_or_else(|_| panic!("no transition in 90 s while waiting for {what}"))
        .unwrap_or_else(|e| panic!("the stream failed waiting for {what}: {e}"))
        .unwrap_or_else(|| panic!("the stream ended waiting for {what}"));
    let transition = message.transition.expect("a transition");
    let finding = transition.finding.as_ref().expect("a finding");
    eprintln!(
        "{:?} {:?} {} already_active={}",
        transition.kind(),
        finding.kind(),
        finding.id,
        transition.already_active
    );
    transition
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
        let watch = api.watch_findings(pb::WatchFindingsRequest {}).await;
        let mut watch = watch.expect("WatchFindings").into_inner();
        let load = Load::start(port, &["GET /cpu"], 8, Duration::ZERO);
        let started = Instant::now();
        let onset = loop {
            let t = next_transition(&mut watch, "the saturation's onset").await;
            let kind = t.finding.as_ref().map(pb::Finding::kind);
            if t.kind() == pb::FindingTransitionKind::Onset
                && kind == Some(pb::FindingKind::Saturation)
                && !t.already_active
            {
                break t;
            }
        };
        let counts = load.stop();
        let after = started.elapsed().as_secs_f64();
        eprintln!("onset {after:.1} s after the load began; load {counts:?}");
        let finding = onset.finding.clone().expect("a finding");
        assert!(finding.active);
        assert!(finding.root_cause.contains("CPU"), "{}", finding.root_cause);
        assert!(!finding.evidence.is_empty());
        let resolution = loop {
            let t = next_transition(&mut watch, "the saturation's resolution").await;
            let same = t.finding.as_ref().is_some_and(|f| f.id == finding.id);
            if t.kind() == pb::FindingTransitionKind::Resolution && same {
                break t;
            }
        };
        assert!(resolution.seen_at_unix_ms > onset.seen_at_unix_ms);
        let resolved = Finding::try_from(resolution.finding.expect("a finding"));
        let resolved = resolved.expect("reads back into the model");
        assert!(!resolved.active);
        assert_eq!(resolved.occurrences, finding.occurrences);
        // The list agrees, as the CLI reads it, and so does the agent itself.
        let listed = client::findings(&socket).await.expect("findings");
        let same = listed.iter().find(|f| f.id == finding.id);
        assert!(same.is_some_and(|f| !f.active), "{listed:?}");
        let snap = agent.snapshot_now().await.expect("snapshot");
        assert!(
            snap.findings
                .iter()
                .any(|f| f.id == finding.id && !f.active)
        );
    });
}

/// A client with a tiny HTTP/2 window (512 bytes), so a stream it does not read stalls at
/// once.
async fn stingy_channel(socket: &Path) -> Channel {
    let dial = socket.to_path_buf();
    Endpoint::from_static("http://herdwatch-agent.invalid")
        .initial_stream_window_size(512)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(dial).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("a stingy channel")
}

/// The agent's count of `reason` drops, as the API reports it.
async fn drop_count(api: &mut Api, reason: &str) -> u64 {
    let stats = api.get_agent_stats(pb::GetAgentStatsRequest {}).await;
    let stats = stats
        .expect("GetAgentStats")
        .into_inner()
        .stats
        .expect("stats");
    let found = stats.drops.iter().find(|d| d.reason == reason);
    found
        .map(|d| d.count)
        .unwrap_or_else(|| panic!("no {reason} count"))
}

async fn requests_traced(agent: &Agent) -> u64 {
    let snap = agent.snapshot_now().await.expect("snapshot");
    snap.routes.iter().map(|r| r.requests).sum()
}

/// Garbage on the socket, a huge request, a watcher that never reads, one watcher past the
/// limit, 200 clients at once, and idle connections past the limit: each is refused or
/// served, the agent counts what it turned away, keeps answering everyone else and keeps
/// tracing.
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
        let traced_before = requests_traced(&agent).await;

        garbage_and_a_huge_request(&socket, &mut api).await;
        let _stalled = a_watcher_that_never_reads_is_cut_off(&socket, &mut api).await;
        watches_past_the_limit_are_refused(&socket, &mut api).await;
        two_hundred_clients_at_once(&socket).await;
        idle_connections_past_the_limit_are_refused(&socket, &mut api).await;

        // The agent kept tracing through all of it.
        eventually("tracing to go on", Duration::from_secs(20), async || {
            requests_traced(&agent).await >= traced_before + 20
        })
        .await;
        let sent = load.stop();
        let all_ok = sent.values().flat_map(|by| by.keys()).all(|s| *s == 200);
        assert!(all_ok, "{sent:?}");
        let drops = agent.snapshot_now().await.expect("snapshot").agent.export;
        assert!(drops.api_watchers_too_slow >= 1, "{drops:?}");
        assert!(drops.api_watches_refused >= 1, "{drops:?}");
        assert!(drops.api_connections_refused >= 20, "{drops:?}");
    });
}

/// HTTP/1, random bytes, a truncated HTTP/2 preface, a frame of nonsense: each costs only its
/// own connection. A request past the size limit is refused without being read into memory.
async fn garbage_and_a_huge_request(socket: &Path, api: &mut Api) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let garbage: [&[u8]; 4] = [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x13, 0x37],
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x09\x00\x00\x00\x00\x01garbage!",
    ];
    for bytes in garbage {
        let mut raw = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect");
        raw.write_all(bytes).await.expect("write");
        let _ = raw.shutdown().await;
        let mut answer = Vec::new();
        // The agent answers with an error or just closes; either way within seconds.
        let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer));
        assert!(
            read.await.is_ok(),
            "the agent held a garbage connection open"
        );
    }
    api.get_host(pb::GetHostRequest {})
        .await
        .expect("answers after garbage");
    let huge = pb::ListRoutesRequest {
        pool: "x".repeat(ApiLimits::default().max_request_bytes + 1),
    };
    let refused = api.list_routes(huge).await.expect_err("too large");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");

    // A string field that is not UTF-8 (a well-framed call with a bad body): an error status
    // on the call, not a closed connection, and the same connection answers the next call.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawListRoutes {
        #[prost(bytes = "vec", tag = "1")]
        pool: Vec<u8>,
    }
    let channel = client::channel(socket).await.expect("a channel");
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<RawListRoutes, pb::ListRoutesResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/herdwatch.v1.AgentService/ListRoutes",
    );
    let bad = RawListRoutes {
        pool: vec![b'x', 0xff, 0xfe, b'y'],
    };
    let answer = raw.unary(tonic::Request::new(bad), path, codec).await;
    let status = answer.expect_err("not UTF-8");
    assert_ne!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    AgentServiceClient::new(channel)
        .get_host(pb::GetHostRequest {})
        .await
        .expect("the same connection answers after a body that is not UTF-8");
}

/// A Watch stream whose client never reads is cut off once its buffer fills, and counted;
/// others are served meanwhile. Returns the stalled stream, to keep it open.
async fn a_watcher_that_never_reads_is_cut_off(
    socket: &Path,
    api: &mut Api,
) -> (
    Api,
    tonic::Response<tonic::Streaming<pb::WatchSnapshotsResponse>>,
) {
    let before = drop_count(api, "api_watcher_too_slow").await;
    let mut stingy = AgentServiceClient::new(stingy_channel(socket).await);
    let stalled = stingy.watch_snapshots(pb::WatchSnapshotsRequest {}).await;
    let stalled = stalled.expect("WatchSnapshots");
    let started = Instant::now();
    eventually(
        "the stalled watcher to be cut off",
        Duration::from_secs(60),
        async || {
            api.list_routes(pb::ListRoutesRequest::default())
                .await
                .expect("others are served");
            drop_count(api, "api_watcher_too_slow").await > before
        },
    )
    .await;
    let after = started.elapsed().as_secs_f64();
    eprintln!("the stalled watcher was cut off after {after:.1} s");
    (stingy, stalled)
}

/// Watchers up to the limit are fed; one more is refused and counted; closed watches free
/// their slots.
async fn watches_past_the_limit_are_refused(socket: &Path, api: &mut Api) {
    let refused_before = drop_count(api, "api_watch_refused").await;
    let mut watchers = Vec::new();
    for _ in 0..ApiLimits::default().watch_streams {
        let mut c = connect(socket).await;
        let w = c.watch_findings(pb::WatchFindingsRequest {}).await;
        watchers.push((w.expect("a watch within the limit"), c));
    }
    let mut extra = connect(socket).await;
    let refused = extra.watch_snapshots(pb::WatchSnapshotsRequest {}).await;
    let refused = refused.map(|_| ()).expect_err("past the limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    eventually(
        "the refused watch to be counted",
        Duration::from_secs(10),
        async || drop_count(api, "api_watch_refused").await > refused_before,
    )
    .await;
    watchers.clear();
    eventually(
        "closed watches to free their slots",
        Duration::from_secs(10),
        async || match extra.watch_snapshots(pb::WatchSnapshotsRequest {}).await {
            Ok(stream) => {
                let first = stream.into_inner().message().await;
                first.expect("a snapshot").is_some()
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                false
            }
        },
    )
    .await;
}

/// 200 clients at once, each on its own connection: all answered.
async fn two_hundred_clients_at_once(socket: &Path) {
    let started = Instant::now();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.to_path_buf();
            tokio::spawn(async move {
                let fail = |e: &dyn std::fmt::Display| format!("client {i}: {e}");
                let mut c = client::connect(&socket).await.map_err(|e| fail(&e))?;
                let routes = c.list_routes(pb::ListRoutesRequest::default()).await;
                routes.map_err(|e| fail(&e))?;
                let snap = c.get_snapshot(pb::GetSnapshotRequest {}).await;
                let snap = snap.map_err(|e| fail(&e))?.into_inner().snapshot;
                Ok::<_, String>(snap.map(|s| s.taken_at_unix_ms).unwrap_or(0))
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
    let took = started.elapsed().as_secs_f64();
    eprintln!("200 concurrent clients answered in {took:.1} s");
}

/// Connections past the limit (opened, never speaking) are closed at once and counted; once
/// they are gone, clients are served again.
async fn idle_connections_past_the_limit_are_refused(socket: &Path, api: &mut Api) {
    let refused_before = drop_count(api, "api_connection_refused").await;
    let mut idle = Vec::new();
    for _ in 0..ApiLimits::default().connections + 20 {
        let stream = tokio::net::UnixStream::connect(socket).await;
        idle.push(stream.expect("the kernel accepts"));
    }
    eventually(
        "connections past the limit to be refused",
        Duration::from_secs(10),
        async || drop_count(api, "api_connection_refused").await >= refused_before + 20,
    )
    .await;
    drop(idle);
    eventually(
        "closed connections to free their slots",
        Duration::from_secs(10),
        async || match client::connect(socket).await {
            Ok(mut c) => c.get_host(pb::GetHostRequest {}).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
}
