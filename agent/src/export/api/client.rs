//! The client side of the API over its Unix socket: what `herdwatch findings` (and tests, and
//! later `herdwatch top`) use to read a running agent.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use herdwatch_proto::v1::{self as pb, agent_service_client::AgentServiceClient};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::bounds::ApiLimits;
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
            message: format!(
                "cannot connect (is `herdwatch run` running, and are you root?): {}",
                causes(&err)
            ),
        })
}

/// Every finding the agent keeps, active first, as the model has them.
pub async fn findings(socket: &Path) -> Result<Vec<Finding>> {
    let mut client = connect(socket).await?;
    let answer = client
        .list_findings(pb::ListFindingsRequest::default())
        .await
        .map_err(|status| status_error(socket, &status))?;
    answer
        .into_inner()
        .findings
        .into_iter()
        .map(Finding::try_from)
        .collect()
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
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_agent_is_named_by_its_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let err = findings(&socket).await.expect_err("no agent there");
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("herdwatch run"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
