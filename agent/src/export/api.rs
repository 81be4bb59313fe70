//! The agent's local API: a Unix socket (root-only by default) answering one request line with
//! one JSON document, so `herdwatch findings` and scripts can read a running agent.
//!
//! Requests: `findings`, `pool_events`, `snapshot`. The answer is the latest periodic
//! snapshot's data; the connection closes after it. JSON over a Unix socket rather than gRPC:
//! the socket's file mode is the access control, and nothing here needs a schema compiler.
use std::{path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::{
    error::{Error, Result},
    model::Snapshot,
};

/// Longest request line accepted.
const MAX_REQUEST: usize = 256;

/// Binds the socket (replacing a stale one left by a dead agent) and serves it until the
/// task is aborted.
pub fn serve(
    path: &Path,
    latest: watch::Receiver<Arc<Snapshot>>,
) -> Result<tokio::task::JoinHandle<()>> {
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
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let snap = latest.borrow().clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &snap).await {
                    tracing::debug!("api client: {e}");
                }
            });
        }
    }))
}

async fn answer(stream: UnixStream, snap: &Snapshot) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let body = match line.trim() {
        "findings" => serde_json::to_vec(&snap.findings),
        "pool_events" => serde_json::to_vec(&snap.pool_events),
        "snapshot" => serde_json::to_vec(snap),
        other => Ok(format!(
            "{{\"error\":\"unknown request {:?}; ask findings, pool_events or snapshot\"}}",
            other.chars().take(40).collect::<String>()
        )
        .into_bytes()),
    }
    .map_err(std::io::Error::other)?;
    write.write_all(&body).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Client side: sends `request` to the agent at `path`, returns the JSON answer.
pub fn ask(path: &Path, request: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| Error::Io {
        what: format!(
            "the herdwatch agent's API at {} (is `herdwatch run` running, and are you root?)",
            path.display()
        ),
        source,
    })?;
    let io = |source| Error::Io {
        what: format!("the herdwatch agent's API at {}", path.display()),
        source,
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(io)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(io)?;
    Ok(answer)
}
