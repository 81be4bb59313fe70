//! The client side of the API, over its Unix socket or over TCP (`--api https://host:port`):
//! what `herdwatch findings`, `herdwatch top` (and tests) use to read a running agent. Every failure names the socket or address, and says what to check.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use herdwatch_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use hyper_util::rt::TokioIo;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint, Uri},
};

use super::{
    auth::{AttachToken, Token, read_token_file},
    bounds::ApiLimits,
    tls,
};
use crate::{
    error::{Error, Result},
    model::Finding,
};

/// How long to wait for the socket to accept, and for an answer to begin (a Watch stream's
/// answer begins at once; its messages are not bounded by this).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client of the agent at `socket`. The connection is made here, so a vanished
/// agent is reported now, naming the socket.
pub async fn connect(socket: &Path) -> Result<AgentServiceClient<Channel>> {
    Ok(AgentServiceClient::new(channel(socket).await?)
        .max_decoding_message_size(ApiLimits::default().max_response_bytes))
}

/// A gRPC channel to the agent's socket, for any service it serves (health checks too).
pub async fn channel(socket: &Path) -> Result<Channel> {
    let dial = socket.to_path_buf();
    // gRPC needs a URI; the connector below ignores it and dials the socket.
    Endpoint::from_static("http://herdwatch-agent.invalid")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(dial).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|err| Error::Api {
            socket: socket.to_path_buf(),
            message: if not_answering(&err) {
                // A full accept queue (EAGAIN) or a connect that timed out: an agent is
                // there, but too busy (or stuck) to take the connection.
                format!(
                    "did not answer within {} s (it is running but not accepting connections)",
                    CONNECT_TIMEOUT.as_secs()
                )
            } else {
                format!(
                    "cannot connect (is `herdwatch run` running, and are you root?): {}",
                    causes(&err)
                )
            },
        })
}

/// True when the connection failed because the agent did not take it in time, rather than
/// because nothing is there.
fn not_answering(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        {
            return true;
        }
        if e.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Every finding the agent keeps, active first, as the model has them.
pub async fn findings(socket: &Path) -> Result<Vec<Finding>> {
    findings_at(&Target::Socket(socket.to_path_buf())).await
}

/// Every finding of the agent at `target`, active first, as the model has them.
pub async fn findings_at(target: &Target) -> Result<Vec<Finding>> {
    let mut client = connect_to(target).await?;
    let answer = client
        .list_findings(pb::ListFindingsRequest::default())
        .await
        .map_err(|status| target.status_error(&status))?;
    answer
        .into_inner()
        .findings
        .into_iter()
        .map(Finding::try_from)
        .collect()
}

/// A client of the agent at either kind of target: calls carry the token, if any.
pub type Client = AgentServiceClient<InterceptedService<Channel, AttachToken>>;

/// A connected client of the agent at `target`. The connection (and, over TCP, the TLS
/// handshake) is made here, so an unreachable or untrusted agent is reported now.
pub async fn connect_to(target: &Target) -> Result<Client> {
    let (channel, attach) = match target {
        Target::Socket(path) => (channel(path).await?, AttachToken::default()),
        Target::Remote(remote) => (
            remote.channel().await?,
            AttachToken::new(remote.token.as_ref())?,
        ),
    };
    Ok(AgentServiceClient::with_interceptor(channel, attach)
        .max_decoding_message_size(ApiLimits::default().max_response_bytes))
}

/// The agent's snapshot stream at `target` (its current snapshot first, then each new
/// one), for `top`'s live view and its `--record`.
pub async fn watch_snapshots(
    target: &Target,
) -> Result<tonic::Streaming<pb::WatchSnapshotsResponse>> {
    let mut api = connect_to(target).await?;
    let answer = api
        .watch_snapshots(pb::WatchSnapshotsRequest {})
        .await
        .map_err(|status| target.status_error(&status))?;
    Ok(answer.into_inner())
}

/// How the CLI names the agent to ask: nothing (the local socket) or `--api` and its
/// companions. Shared by every subcommand that reads the API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiFlags {
    /// The agent's API over TCP: https://host:port (http:// only with --insecure), or the
    /// path of its Unix socket. Without it, the local socket (api_socket).
    #[arg(long, value_name = "URL|PATH")]
    pub api: Option<String>,
    /// File holding the bearer token (the agent's api_token_file); mode 0600.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the agent's certificate must chain to (default: the system's
    /// roots).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Allow --api http://: an agent serving plaintext (its api_insecure = true).
    #[arg(long)]
    pub insecure: bool,
}

/// Where the agent's API is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The local Unix socket (`api_socket`).
    Socket(PathBuf),
    /// A TCP address, usually another host's agent (boxed: its TLS config is large).
    Remote(Box<Remote>),
}

/// An agent's API over TCP, its TLS and token settled.
#[derive(Debug, Clone)]
pub struct Remote {
    uri: Uri,
    tls: Option<ClientTlsConfig>,
    ca: Option<PathBuf>,
    token: Option<Token>,
    token_file: Option<PathBuf>,
}

impl Target {
    /// The target the flags name; without `--api`, the local `socket` (None = the config
    /// turned it off).
    pub fn from_flags(flags: &ApiFlags, socket: Option<&Path>) -> Result<Self> {
        let Some(url) = &flags.api else {
            if flags.token_file.is_some() || flags.ca.is_some() || flags.insecure {
                return Err(flag_error(
                    "--token-file, --ca and --insecure apply to --api only".into(),
                ));
            }
            let socket = socket.ok_or_else(|| {
                flag_error(
                    "api_socket is off in the config, so there is no local agent API to ask; \
                     give --api https://host:port"
                        .into(),
                )
            })?;
            return Ok(Self::Socket(socket.to_path_buf()));
        };
        if names_a_socket(url) {
            if flags.token_file.is_some() || flags.ca.is_some() || flags.insecure {
                return Err(flag_error(format!(
                    "--token-file, --ca and --insecure apply to an address over TCP, not to the \
                     socket {url}"
                )));
            }
            return Ok(Self::Socket(PathBuf::from(url)));
        }
        Ok(Self::Remote(Box::new(Remote::new(url, flags)?)))
    }

    /// The socket path or the address, as errors and `top`'s status line name it.
    pub fn address(&self) -> String {
        match self {
            Self::Socket(path) => path.display().to_string(),
            Self::Remote(remote) => remote.uri.to_string(),
        }
    }

    /// The refusal or failure of a call, as an error naming the target and, for an
    /// UNAUTHENTICATED answer, which token was (or was not) sent.
    pub fn status_error(&self, status: &tonic::Status) -> Error {
        let remote = match self {
            Self::Socket(socket) => return status_error(socket, status),
            Self::Remote(remote) => remote,
        };
        let mut message = format!("{:?}: {}", status.code(), status.message());
        if status.code() == tonic::Code::Unauthenticated {
            message.push_str(&match &remote.token_file {
                None => " — no token was sent: give --token-file with the agent's api_token_file"
                    .to_string(),
                Some(path) => format!(
                    " — the token in --token-file {} is not the one in the agent's \
                     api_token_file",
                    path.display()
                ),
            });
        }
        Error::RemoteApi {
            address: remote.uri.to_string(),
            message,
        }
    }
}

/// `--api` names a Unix socket when it is not a URL and reads as a path: it begins with `/`
/// or `.`, or has no `:` at all (so `node1:9466`, a URL without its scheme, is still told to
/// add one).
fn names_a_socket(api: &str) -> bool {
    !api.contains("://") && (api.starts_with('/') || api.starts_with('.') || !api.contains(':'))
}

fn flag_error(message: String) -> Error {
    Error::Config {
        origin: "--api".into(),
        message,
    }
}

impl Remote {
    fn new(url: &str, flags: &ApiFlags) -> Result<Self> {
        let uri: Uri = url.parse().map_err(|e| {
            flag_error(format!(
                "{url:?} is not a URL ({e}); want https://host:port"
            ))
        })?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| flag_error(format!("{url:?} names no host; want https://host:port")))?;
        if uri.port_u16().is_none() {
            return Err(flag_error(format!(
                "{url:?} names no port; the agent listens where its api_listen says, e.g. \
                 https://{host}:9466"
            )));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(flag_error(format!(
                "{url:?}: the API is at the root of its address; want https://host:port"
            )));
        }
        let tls = match uri.scheme_str() {
            Some("https") if flags.insecure => {
                return Err(flag_error(
                    "--insecure only allows http://; over https:// the agent's certificate is \
                     always verified (give --ca with the CA that signed it)"
                        .into(),
                ));
            }
            Some("https") => Some(tls::client_config(flags.ca.as_deref())?),
            Some("http") if !flags.insecure => {
                return Err(flag_error(format!(
                    "{url:?} would send the token and read every answer in plaintext; use \
                     https://, or add --insecure for an agent whose api_insecure = true serves \
                     plaintext on a network you trust"
                )));
            }
            Some("http") if flags.ca.is_some() => {
                return Err(flag_error("--ca applies to https:// only".into()));
            }
            Some("http") => None,
            _ => {
                return Err(flag_error(format!(
                    "{url:?}: want https://host:port (or http:// with --insecure)"
                )));
            }
        };
        let token = flags
            .token_file
            .as_deref()
            .map(|path| read_token_file(path, "--token-file"))
            .transpose()?;
        Ok(Self {
            uri,
            tls,
            ca: flags.ca.clone(),
            token,
            token_file: flags.token_file.clone(),
        })
    }

    async fn channel(&self) -> Result<Channel> {
        let address = self.uri.to_string();
        let mut endpoint = Endpoint::from(self.uri.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ANSWER_TIMEOUT);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::RemoteApi {
                    address: address.clone(),
                    message: format!("cannot set up TLS: {}", causes(&e)),
                })?;
        }
        endpoint.connect().await.map_err(|err| Error::RemoteApi {
            message: format!("{}: {}", self.diagnose(&err), causes(&err)),
            address,
        })
    }

    /// What a failed connection most likely means, from the errors underneath it.
    fn diagnose(&self, err: &(dyn std::error::Error + 'static)) -> String {
        let trusted = match &self.ca {
            Some(ca) => format!("the CA in --ca {}", ca.display()),
            None => "the system's roots (give --ca with the CA that signed the agent's \
                     api_tls_cert)"
                .to_string(),
        };
        let mut cause = Some(err);
        while let Some(e) = cause {
            let io = e.downcast_ref::<std::io::Error>();
            // tokio-rustls reports a failed handshake as an io::Error wrapping rustls's;
            // io::Error's source() skips the wrapped error, so look inside.
            let tls_error = e.downcast_ref::<rustls::Error>().or_else(|| {
                io.and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(tls_error) = tls_error {
                return match tls_error {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                        format!(
                            "TLS handshake failed: the agent's certificate does not chain to \
                             {trusted}"
                        )
                    }
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. },
                    ) => format!(
                        "TLS handshake failed: the agent's certificate is not issued for {}",
                        self.uri.host().unwrap_or_default()
                    ),
                    _ => "TLS handshake failed (does the agent serve TLS there? an agent with \
                          api_insecure and no api_tls_cert serves plaintext: http:// with \
                          --insecure)"
                        .to_string(),
                };
            }
            if let Some(io) = io {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        return "nothing listens there (is the agent running, with api_listen \
                                at this address?)"
                            .into();
                    }
                    std::io::ErrorKind::TimedOut => {
                        return "no answer in time: the address is unreachable, or a firewall \
                                drops the packets"
                            .into();
                    }
                    _ => {}
                }
            }
            cause = e.source();
        }
        if self.tls.is_none() {
            return "cannot connect (if the agent serves TLS there, use https://)".into();
        }
        if self.ca.is_none() && causes(err).contains("native certs") {
            return "TLS cannot start: this system has no CA certificates (install \
                    ca-certificates, or give --ca with the CA that signed the agent's \
                    api_tls_cert)"
                .into();
        }
        "cannot connect".into()
    }
}

/// The agent's refusal or failure, as an error naming the socket.
pub fn status_error(socket: &Path, status: &tonic::Status) -> Error {
    Error::Api {
        socket: PathBuf::from(socket),
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

/// An error and its sources on one line: tonic's own text ("transport error") says little;
/// the I/O error underneath ("No such file or directory") says what is wrong.
pub(super) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
