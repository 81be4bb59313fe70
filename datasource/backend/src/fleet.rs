//! The fleet: which agents to ask (a static list and/or every address behind a DNS name), and
//! asking them all at once, each within its time limit, a bounded number at a time. An agent
//! that fails is an answer of its own (its address and why), never the end of the query.
use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt as _;
use herdwatch_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use tonic::{
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri},
};

use crate::{
    error::{Error, Result},
    settings::{MAX_AGENTS, Settings},
};

/// Largest answer taken from one agent (its snapshot with every route and query).
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// One agent to ask: the URL dialled and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// What notices and health messages call it: the configured URL, or `name (ip:port)`.
    pub address: String,
    uri: Uri,
    /// The TLS server name: the URL's host, or the DNS name the address came from.
    tls_name: String,
}

/// The agents `settings` name, now: the static list plus every address `dnsName` resolves
/// to. A DNS name that fails or resolves to nothing is an error of its own, so the static
/// agents are still asked.
pub async fn agents(settings: &Settings) -> (Vec<Agent>, Vec<Error>) {
    let mut agents = Vec::new();
    let mut errors = Vec::new();
    let scheme = if settings.insecure_plaintext {
        "http"
    } else {
        "https"
    };
    for url in &settings.agents {
        match static_agent(url, settings.insecure_plaintext) {
            Ok(agent) => agents.push(agent),
            Err(e) => errors.push(e),
        }
    }
    if let Some(name) = &settings.dns_name {
        match resolve(name, settings.timeout).await {
            Ok(addrs) => {
                let host = name.rsplit_once(':').map_or(name.as_str(), |(h, _)| h);
                for addr in addrs {
                    let url = format!("{scheme}://{addr}");
                    match url.parse::<Uri>() {
                        Ok(uri) => agents.push(Agent {
                            address: format!("{name} ({addr})"),
                            uri,
                            tls_name: host.to_string(),
                        }),
                        Err(e) => errors.push(Error::Dns {
                            name: name.clone(),
                            message: format!("{addr}: {e}"),
                        }),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    agents.dedup_by(|a, b| a.uri == b.uri);
    agents.truncate(MAX_AGENTS);
    (agents, errors)
}

fn static_agent(url: &str, insecure_plaintext: bool) -> Result<Agent> {
    let fail = |message: String| Error::Agent {
        address: url.to_string(),
        message,
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| fail(format!("not a URL ({e}); want https://host:port")))?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| fail("names no host; want https://host:port".into()))?;
    if uri.port_u16().is_none() {
        return Err(fail(
            "names no port; want https://host:port (the agent's api_listen)".into(),
        ));
    }
    match (uri.scheme_str(), insecure_plaintext) {
        (Some("https"), false) | (Some("http"), true) => {}
        (Some("http"), false) => {
            return Err(fail(
                "http:// would send the token in plaintext; use https://, or set \
                 insecurePlaintext for a lab whose agents serve plaintext"
                    .into(),
            ));
        }
        (Some("https"), true) => {
            return Err(fail(
                "https:// with insecurePlaintext: the agents serve one or the other; turn \
                 insecurePlaintext off for TLS"
                    .into(),
            ));
        }
        _ => return Err(fail("want https://host:port".into())),
    }
    Ok(Agent {
        address: url.to_string(),
        tls_name: host.trim_matches(['[', ']']).to_string(),
        uri,
    })
}

/// Every address of `name` (`host:port`), within `timeout`.
async fn resolve(name: &str, timeout: Duration) -> Result<Vec<SocketAddr>> {
    let fail = |message: String| Error::Dns {
        name: name.to_string(),
        message,
    };
    if name
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(fail(
            "want name:port, e.g. herdwatch.herdwatch.svc.cluster.local:7443".into(),
        ));
    }
    let addrs = within(timeout, tokio::net::lookup_host(name), &fail)
        .await?
        .map_err(|e| fail(format!("cannot resolve: {e}")))?;
    let mut addrs: Vec<SocketAddr> = addrs.take(MAX_AGENTS).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(fail(
            "resolves to no address (no agent pod is ready?)".into(),
        ));
    }
    Ok(addrs)
}

/// Sends the token with every call.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// A connected client of `agent`: the TCP connection and TLS handshake are made here, within
/// the settings' timeout.
pub async fn connect(agent: &Agent, settings: &Settings) -> Result<Client> {
    let fail = |message: String| Error::Agent {
        address: agent.address.clone(),
        message,
    };
    let bearer = match &settings.token {
        Some(token) => {
            let mut value: AsciiMetadataValue = format!("Bearer {token}")
                .parse()
                .map_err(|_| fail("the token holds characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            Bearer(Some(value))
        }
        None => Bearer(None),
    };
    // No per-request `Endpoint::timeout`: every call is already bounded by `within` (or the
    // stream's own open timeout), and a second timer racing it would end the same wait as
    // "Cancelled: Timeout expired" instead of the "no answer within" the user is told.
    let mut endpoint = Endpoint::from(agent.uri.clone()).connect_timeout(settings.timeout);
    if !settings.insecure_plaintext {
        let mut tls = ClientTlsConfig::new().domain_name(agent.tls_name.clone());
        tls = match &settings.ca_cert {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| fail(format!("cannot set up TLS: {}", causes(&e))))?;
    }
    let channel = within(settings.timeout, endpoint.connect(), &fail)
        .await?
        .map_err(|e| fail(format!("cannot connect: {}", causes(&e))))?;
    Ok(AgentServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// The latest snapshot of `agent`: host, pools, routes, queries and findings in one answer,
/// so every table of one query agrees with itself.
pub async fn snapshot(agent: &Agent, settings: &Settings) -> Result<pb::Snapshot> {
    let fail = |message: String| Error::Agent {
        address: agent.address.clone(),
        message,
    };
    let call = async {
        let mut client = connect(agent, settings).await?;
        let answer = client
            .get_snapshot(pb::GetSnapshotRequest {})
            .await
            .map_err(|s| fail(status_text(&s)))?;
        answer
            .into_inner()
            .snapshot
            .ok_or_else(|| fail("answered without a snapshot".into()))
    };
    within(settings.timeout, call, &fail).await?
}

/// `work`'s output, or the error `fail` makes of "no answer within …" once `timeout` passed.
async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = T>,
    fail: impl Fn(String) -> Error,
) -> Result<T> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| fail(format!("no answer within {} ms", timeout.as_millis())))
}

/// What each agent answered (or why not), asking `settings.concurrency` at a time.
pub async fn snapshots(
    agents: &[Agent],
    settings: &Settings,
) -> Vec<(Agent, Result<pb::Snapshot>)> {
    futures_util::stream::iter(agents.iter().cloned())
        .map(|agent| async move {
            let answer = snapshot(&agent, settings).await;
            (agent, answer)
        })
        .buffer_unordered(settings.concurrency)
        .collect()
        .await
}

/// A refusal in words, with what to check for the usual ones.
pub fn status_text(status: &tonic::Status) -> String {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => {
            " — the token in secureJsonData.token is not the one in the agent's api_token_file"
        }
        tonic::Code::DeadlineExceeded => " — the agent did not answer in time",
        _ => "",
    };
    format!("{:?}: {}{hint}", status.code(), status.message())
}

/// An error and its sources on one line: tonic's "transport error" says little; what is
/// underneath ("connection refused", "invalid peer certificate") says what is wrong.
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn settings(agents: Vec<String>, dns_name: Option<&str>, timeout_ms: u64) -> Settings {
        let json = serde_json::json!({
            "agents": agents,
            "dnsName": dns_name,
            "timeoutMs": timeout_ms,
            "insecurePlaintext": true,
        });
        Settings::from_json(&json, &serde_json::Value::Null).expect("settings")
    }

    /// A peer that answers every connection with bytes that are not HTTP/2.
    async fn garbage_peer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\n\r\nnot grpc at all\xff\xfe")
                        .await;
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A peer that accepts and then says nothing, ever.
    async fn silent_peer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn garbage_and_silence_are_named_failures_not_panics() {
        let garbage = garbage_peer().await;
        let silent = silent_peer().await;
        let s = settings(vec![garbage.clone(), silent.clone()], None, 500);
        let (agents, errors) = agents(&s).await;
        assert!(errors.is_empty(), "{errors:?}");
        let started = Instant::now();
        let answers = snapshots(&agents, &s).await;
        assert_eq!(answers.len(), 2);
        for (agent, answer) in answers {
            let err = answer.expect_err("neither is an agent").to_string();
            assert!(err.contains(&agent.address), "{err}");
            if agent.address == silent {
                assert!(err.contains("no answer within 500 ms"), "{err}");
            }
        }
        // Both were asked at once, each within its own limit (generous bound: no wall-clock
        // precision is asserted, only that the silent one did not hold the query forever).
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_dns_name_that_resolves_to_nothing_is_an_error_and_the_list_still_counts() {
        let s = settings(
            vec!["http://127.0.0.1:9".into()],
            Some("no-such-agent.invalid:7443"),
            2_000,
        );
        let (agents, errors) = agents(&s).await;
        assert_eq!(agents.len(), 1, "the static agent is still asked");
        assert_eq!(errors.len(), 1);
        let err = errors[0].to_string();
        assert!(err.contains("DNS name no-such-agent.invalid:7443"), "{err}");
        let s = settings(vec![], Some("no-port.invalid"), 2_000);
        let err = super::agents(&s).await.1[0].to_string();
        assert!(err.contains("want name:port"), "{err}");
    }

    #[tokio::test]
    async fn a_dns_name_gives_every_address_with_the_name_for_tls() {
        let s = settings(vec![], Some("localhost:7443"), 2_000);
        let (agents, errors) = agents(&s).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!agents.is_empty());
        for agent in &agents {
            assert_eq!(agent.tls_name, "localhost");
            assert!(
                agent.address.starts_with("localhost:7443 ("),
                "{}",
                agent.address
            );
        }
    }

    #[test]
    fn static_urls_are_checked() {
        assert!(static_agent("https://10.0.0.5:7443", false).is_ok());
        for (url, plaintext, says) in [
            ("http://10.0.0.5:7443", false, "plaintext"),
            ("https://10.0.0.5:7443", true, "insecurePlaintext"),
            ("https://10.0.0.5", false, "names no port"),
            ("10.0.0.5:7443", false, "https://host:port"),
        ] {
            let err = static_agent(url, plaintext).expect_err(url).to_string();
            assert!(err.contains(says) && err.contains(url), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let s = settings(vec![format!("http://127.0.0.1:{port}")], None, 2_000);
        let (agents, _) = agents(&s).await;
        let err = snapshot(&agents[0], &s)
            .await
            .expect_err("nobody")
            .to_string();
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("cannot connect"),
            "{err}"
        );
    }
}
