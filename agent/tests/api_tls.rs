//! The API off the host: a real agent serving `herdwatch.v1` on TCP with TLS (certificates
//! made here with rcgen) and a bearer token. The right token gets the agent's answers; none,
//! or a wrong one, gets UNAUTHENTICATED (counted); a client that does not trust the agent's
//! CA fails the handshake; plaintext TCP is refused at start unless `api_insecure = true`,
//! which warns at every start. No traced app is needed: the API answers from the snapshot.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use common::{pki::*, *};
use herdwatch::{
    Agent, Config,
    export::api::{
        ApiLimits,
        client::{self, ApiFlags, Target},
    },
    model::Snapshot,
};
use herdwatch_proto::v1 as pb;
use rcgen::KeyPair;

/// The agent's config for TCP on `port` with TLS and the token (and its Unix socket too).
fn tls_config(pki: &Pki, port: u16) -> Config {
    let config = Config {
        interval_ms: 300,
        api_socket: Some(pki.dir.path().join("run/api.sock")),
        ..test_config()
    };
    pki.on_tcp(port, config)
}

fn remote(url: &str, ca: Option<&Path>, token_file: Option<&Path>) -> Target {
    let flags = ApiFlags {
        api: Some(url.to_string()),
        ca: ca.map(Path::to_path_buf),
        token_file: token_file.map(Path::to_path_buf),
        insecure: false,
    };
    Target::from_flags(&flags, None).unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn connect(target: &Target) -> client::Client {
    client::connect_to(target)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"))
}

/// Waits for the agent's first periodic snapshot (the API answers from it).
async fn first_snapshot(agent: &Agent) -> Arc<Snapshot> {
    let mut updates = agent.subscribe();
    tokio::time::timeout(Duration::from_secs(30), updates.changed())
        .await
        .expect("a snapshot within 30 s")
        .expect("the pipeline runs");
    agent.latest()
}

/// Polls `done` every 100 ms until it holds, or panics after `timeout` naming `what`.
async fn eventually(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real agent with TCP + TLS + token: answers with the token; none, a wrong one, an
/// untrusted CA or a plaintext client get nothing; refusals are counted; the connection
/// limit holds on TCP too; the Unix socket serves alongside without a token.
#[test]
fn tls_and_a_token_guard_every_call_on_tcp() {
    if !kernel_available("api_tls::tls_and_a_token_guard_every_call_on_tcp") {
        return;
    }
    let pki = pki();
    let port = free_port();
    let config = tls_config(&pki, port);
    let started = Instant::now();
    runtime().block_on(async {
        let agent = start_agent_with(config.clone()).await;
        first_snapshot(&agent).await;
        eprintln!("agent up in {:.1} s", started.elapsed().as_secs_f64());
        let url = format!("https://localhost:{port}");
        let good = remote(&url, Some(&pki.ca), Some(&pki.token));
        the_right_token_gets_answers(&agent, &good).await;
        the_ip_address_is_in_the_certificate_too(&pki, port).await;
        let refusals = no_or_a_wrong_token_is_unauthenticated(&pki, port).await;
        an_untrusted_ca_or_plaintext_fails_the_connection(&pki, port).await;
        the_health_service_answers_without_a_token(&pki, port).await;
        the_unix_socket_serves_alongside(&config).await;
        let mut api = connect(&good).await;
        let counted = async |api: &mut client::Client| {
            let stats = api.get_agent_stats(pb::GetAgentStatsRequest {}).await;
            let stats = stats.expect("GetAgentStats").into_inner().stats;
            let drops = stats.expect("stats").drops;
            let found = drops.iter().find(|d| d.reason == "api_unauthenticated");
            found.map(|d| d.count)
        };
        eventually(
            "the refusals to be counted",
            Duration::from_secs(10),
            async || counted(&mut api).await == Some(refusals),
        )
        .await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        assert_eq!(snap.agent.export.api_unauthenticated, refusals);
        connections_past_the_limit_are_refused_on_tcp(&mut api, &good, port).await;
        cli_reads_the_agent_over_tls(&pki, port).await;
    });
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
}

/// GetSnapshot and ListFindings answer exactly the agent's snapshot; a Watch stream opens.
async fn the_right_token_gets_answers(agent: &Agent, good: &Target) {
    let mut api = connect(good).await;
    let mut matched = false;
    for _ in 0..50 {
        let snap = agent.latest();
        let answer = api.get_snapshot(pb::GetSnapshotRequest {}).await;
        let whole = answer.expect("GetSnapshot with the token").into_inner();
        let whole = whole.snapshot.expect("a snapshot");
        if whole.taken_at_unix_ms == snap.taken_at_unix_ms {
            assert_eq!(whole, pb::Snapshot::from(&*snap));
            let findings = api.list_findings(pb::ListFindingsRequest::default()).await;
            let findings = findings.expect("ListFindings with the token").into_inner();
            if findings.taken_at_unix_ms == snap.taken_at_unix_ms {
                assert_eq!(findings.findings, pb::Snapshot::from(&*snap).findings);
                matched = true;
                break;
            }
        }
    }
    assert!(matched, "never answered from the agent's latest snapshot");
    let watch = api.watch_snapshots(pb::WatchSnapshotsRequest {}).await;
    let mut watch = watch.expect("WatchSnapshots with the token").into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
    let first = first
        .expect("in time")
        .expect("a message")
        .expect("not the end");
    assert!(first.snapshot.is_some_and(|s| s.taken_at_unix_ms > 0));
    let found = client::findings_at(good).await.expect("findings over TLS");
    assert_eq!(found.len(), agent.latest().findings.len());
}

async fn the_ip_address_is_in_the_certificate_too(pki: &Pki, port: u16) {
    let by_ip = remote(
        &format!("https://127.0.0.1:{port}"),
        Some(&pki.ca),
        Some(&pki.token),
    );
    let mut api = connect(&by_ip).await;
    api.get_host(pb::GetHostRequest {})
        .await
        .expect("GetHost by IP");
}

/// No token, a wrong token: UNAUTHENTICATED on unary calls and Watch streams alike, with a
/// message that says what to do and never shows a token. Returns how many were refused.
async fn no_or_a_wrong_token_is_unauthenticated(pki: &Pki, port: u16) -> u64 {
    let url = format!("https://localhost:{port}");
    let mut refused = 0;
    for token_file in [None, Some(pki.wrong_token.as_path())] {
        let target = remote(&url, Some(&pki.ca), token_file);
        // The TLS handshake succeeds: the refusal is the call's.
        let mut api = connect(&target).await;
        let status = api
            .list_findings(pb::ListFindingsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        let status = api
            .watch_findings(pb::WatchFindingsRequest {})
            .await
            .map(|_| ())
            .expect_err("the stream is refused too");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        refused += 2;
        let text = client::findings_at(&target)
            .await
            .expect_err("refused")
            .to_string();
        refused += 1;
        assert!(
            text.contains(&format!("localhost:{port}"))
                && text.contains("Unauthenticated")
                && text.contains("--token-file")
                && !text.contains(TOKEN)
                && !text.contains(WRONG_TOKEN),
            "{text}"
        );
        match token_file {
            None => assert!(text.contains("no token was sent"), "{text}"),
            Some(path) => assert!(text.contains(&path.display().to_string()), "{text}"),
        }
    }
    refused
}

async fn an_untrusted_ca_or_plaintext_fails_the_connection(pki: &Pki, port: u16) {
    let untrusted = remote(
        &format!("https://localhost:{port}"),
        Some(&pki.other_ca),
        Some(&pki.token),
    );
    let text = client::connect_to(&untrusted)
        .await
        .map(|_| ())
        .expect_err("the handshake fails")
        .to_string();
    assert!(
        text.contains(&format!("localhost:{port}"))
            && text.contains("TLS handshake failed")
            && text.contains(&pki.other_ca.display().to_string()),
        "{text}"
    );
    // No --ca: the system's roots do not know the test CA either.
    let system = remote(&format!("https://localhost:{port}"), None, Some(&pki.token));
    let text = client::connect_to(&system)
        .await
        .map(|_| ())
        .expect_err("the handshake fails")
        .to_string();
    assert!(text.contains("TLS"), "{text}");
    // Plaintext HTTP/2 to the TLS listener: never answered.
    let flags = ApiFlags {
        api: Some(format!("http://127.0.0.1:{port}")),
        token_file: Some(pki.token.clone()),
        insecure: true,
        ca: None,
    };
    let plain = Target::from_flags(&flags, None).expect("valid flags");
    let answered = match client::connect_to(&plain).await {
        Ok(mut api) => api.get_host(pb::GetHostRequest {}).await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered, "a plaintext client was answered on the TLS port");
}

/// `grpc.health.v1` stays open on TCP (over TLS): probes carry no token.
async fn the_health_service_answers_without_a_token(pki: &Pki, port: u16) {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let ca = std::fs::read(&pki.ca).expect("CA");
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let endpoint = Endpoint::from_shared(format!("https://localhost:{port}"));
    let channel = endpoint
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("a TLS channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: "herdwatch.v1.AgentService".into(),
    };
    let answer = health.check(request).await.expect("health without a token");
    assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
}

async fn the_unix_socket_serves_alongside(config: &Config) {
    let socket = config.api_socket.as_deref().expect("a socket");
    let mut api = client::connect(socket).await.expect("the socket");
    api.get_host(pb::GetHostRequest {})
        .await
        .expect("no token on the socket");
}

/// Idle TCP connections (never finishing a handshake) past the limit are closed at once and
/// counted; once they are gone, TLS clients are served again.
async fn connections_past_the_limit_are_refused_on_tcp(
    api: &mut client::Client,
    good: &Target,
    port: u16,
) {
    let refused = async |api: &mut client::Client| {
        let stats = api.get_agent_stats(pb::GetAgentStatsRequest {}).await;
        let drops = stats.expect("GetAgentStats").into_inner().stats;
        let drops = drops.expect("stats").drops;
        let found = drops.iter().find(|d| d.reason == "api_connection_refused");
        found.map_or(0, |d| d.count)
    };
    let before = refused(api).await;
    // `api` holds one slot already.
    let mut idle = Vec::new();
    for _ in 0..ApiLimits::default().connections + 10 {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        idle.push(stream.expect("the kernel accepts"));
    }
    eventually(
        "TCP connections past the limit to be refused",
        Duration::from_secs(10),
        async || refused(api).await >= before + 10,
    )
    .await;
    drop(idle);
    eventually(
        "closed connections to free their slots",
        Duration::from_secs(15),
        async || match client::connect_to(good).await {
            Ok(mut c) => c.get_host(pb::GetHostRequest {}).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
}

/// `herdwatch findings --api https://… --ca … --token-file …`, and its errors.
async fn cli_reads_the_agent_over_tls(pki: &Pki, port: u16) {
    let url = format!("https://localhost:{port}");
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_herdwatch"))
                .args(&args)
                .env("HERDWATCH_API_SOCKET", "")
                .output()
                .expect("herdwatch runs")
        })
    };
    let arg = |p: &Path| p.display().to_string();
    let base = |ca: &Path| {
        vec![
            "findings".into(),
            "--json".into(),
            "--api".into(),
            url.clone(),
            "--ca".into(),
            arg(ca),
        ]
    };
    let mut with_token = base(&pki.ca);
    with_token.extend(["--token-file".into(), arg(&pki.token)]);
    let out = run(with_token).await.expect("task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the findings as JSON");
    assert!(json.is_array(), "{json}");
    let out = run(base(&pki.ca)).await.expect("task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("--token-file"),
        "{stderr}"
    );
    let mut untrusted = base(&pki.other_ca);
    untrusted.extend(["--token-file".into(), arg(&pki.token)]);
    let out = run(untrusted).await.expect("task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Plaintext TCP without `api_insecure`: `Agent::start` fails before loading anything, and
/// `herdwatch run` exits naming the keys (as settings and as environment variables).
#[test]
fn plaintext_tcp_is_refused_at_start() {
    let config = Config {
        api_listen: Some(format!("127.0.0.1:{}", free_port())),
        ..test_config()
    };
    let err = runtime()
        .block_on(Agent::start(&config))
        .map(|_| ())
        .expect_err("plaintext refused");
    let text = err.to_string();
    for key in [
        "plaintext",
        "api_tls_cert",
        "api_tls_key",
        "api_token_file",
        "api_insecure",
    ] {
        assert!(text.contains(key), "{key}: {text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .args(["run", "--once"])
        .env("HERDWATCH_API_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HERDWATCH_API_SOCKET", "")
        .env("HERDWATCH_PROMETHEUS_LISTEN", "")
        .env("HERDWATCH_STATE_DIR", "")
        .output()
        .expect("herdwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plaintext")
            && stderr.contains("HERDWATCH_API_TLS_CERT")
            && stderr.contains("api_insecure = true"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A token file others may read, a key others may read, a missing certificate: each fails
/// the start with the file and the fix named.
#[test]
fn bad_tls_or_token_files_fail_the_start() {
    let pki = pki();
    let port = free_port();
    let start = |config: Config| {
        runtime()
            .block_on(Agent::start(&config))
            .map(|_| ())
            .expect_err("refused")
            .to_string()
    };
    let open_token = pki.dir.path().join("open-token");
    write(&open_token, TOKEN, 0o644);
    let text = start(Config {
        api_token_file: Some(open_token.clone()),
        ..tls_config(&pki, port)
    });
    assert!(
        text.contains("api_token_file") && text.contains("0644") && text.contains("chmod 600"),
        "{text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = start(tls_config(&pki, port));
    assert!(
        text.contains("api_tls_key") && text.contains("chmod 600"),
        "{text}"
    );
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = start(Config {
        api_tls_cert: Some(pki.dir.path().join("missing.pem")),
        ..tls_config(&pki, port)
    });
    assert!(
        text.contains("api_tls_cert") && text.contains("missing.pem"),
        "{text}"
    );
    // A certificate with somebody else's key.
    let other_key = pki.dir.path().join("other-key.pem");
    let key = KeyPair::generate().expect("key");
    write(&other_key, &key.serialize_pem(), 0o600);
    let text = start(Config {
        api_tls_key: Some(other_key),
        ..tls_config(&pki, port)
    });
    assert!(
        text.contains("api_tls_cert") && text.contains("api_tls_key"),
        "{text}"
    );
}

/// The agent binary, killed with its process group when dropped; stdout discarded, stderr
/// read line by line by a thread.
struct Running {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("the agent starts");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, log }
    }

    /// The first log line containing `want`, within `timeout`.
    fn line_with(&self, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no log line with {want:?}; the log:\n{}", seen.join("\n"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of the child this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `api_insecure = true` with a token: the agent starts, warns that the API is plaintext,
/// and still wants the token; `herdwatch findings` reaches it with `--insecure` and the token,
/// and not without them.
#[test]
fn insecure_plaintext_starts_with_a_warning_and_still_wants_the_token() {
    if !kernel_available(
        "api_tls::insecure_plaintext_starts_with_a_warning_and_still_wants_the_token",
    ) {
        return;
    }
    let pki = pki();
    let port = free_port();
    let started = Instant::now();
    let agent = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_herdwatch"))
            .args(["run", "--json", "--interval-ms", "300"])
            .env("HERDWATCH_API_SOCKET", pki.dir.path().join("api.sock"))
            .env("HERDWATCH_API_LISTEN", format!("127.0.0.1:{port}"))
            .env("HERDWATCH_API_INSECURE", "true")
            .env("HERDWATCH_API_TOKEN_FILE", &pki.token)
            .env("HERDWATCH_PROMETHEUS_LISTEN", "")
            .env("HERDWATCH_STATE_DIR", ""),
    );
    let warning = agent.line_with("api_insecure", Duration::from_secs(30));
    assert!(
        warning.contains("WARN")
            && warning.contains(&format!("127.0.0.1:{port}"))
            && warning.contains("plaintext")
            && !warning.contains(TOKEN),
        "{warning}"
    );
    let url = format!("http://127.0.0.1:{port}");
    let findings = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_herdwatch"))
            .args(["findings", "--json", "--api", &url])
            .args(extra)
            .env("HERDWATCH_API_SOCKET", "")
            .output()
            .expect("herdwatch runs")
    };
    let token = pki.token.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let out = findings(&["--insecure", "--token-file", &token]);
        if out.status.success() {
            break out;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("nothing listens") && Instant::now() < deadline,
            "the agent never answered over plaintext TCP: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "answered over plaintext TCP {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let json: serde_json::Value = serde_json::from_slice(&answered.stdout).expect("JSON");
    assert!(json.is_array(), "{json}");
    let out = findings(&["--insecure"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Unauthenticated") && stderr.contains("no token was sent"),
        "{stderr}"
    );
    let out = findings(&["--token-file", &token]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--insecure"),
        "http:// without --insecure: {stderr}"
    );
    drop(agent);
}
