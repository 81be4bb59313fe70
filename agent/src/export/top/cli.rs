//! What `herdwatch top` is asked to do: watch an agent interactively (the default), print
//! one frame (`--print`), record what the agent sends (`--record`), or draw a recording
//! (`--from`). The agent is named by the same flags as `herdwatch findings`.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use herdwatch_proto::v1 as pb;

use super::{
    app, print, recording,
    state::{Pane, UiState},
};
use crate::{
    error::Result,
    export::api::client::{self, ApiFlags, Target},
};

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub api: ApiFlags,
    /// Print one frame from one fetch as plain text and exit (no terminal needed).
    #[arg(long)]
    pub print: bool,
    /// The pane --print draws.
    #[arg(long, value_enum, default_value = "pools", requires = "print")]
    pub pane: Pane,
    /// Width of the frame --print draws, in columns.
    #[arg(long, default_value_t = 160, requires = "print")]
    pub width: u16,
    /// Height of the frame --print draws, in lines.
    #[arg(long, default_value_t = 48, requires = "print")]
    pub height: u16,
    /// Record the agent's next --snapshots snapshots to FILE (for --from) and exit.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["print", "from"])]
    pub record: Option<PathBuf>,
    /// How many snapshots --record keeps (two or more give routes their rates).
    #[arg(
        long,
        default_value_t = 2,
        requires = "record",
        value_parser = clap::value_parser!(u16).range(1..=recording::MAX_SNAPSHOTS as i64)
    )]
    pub snapshots: u16,
    /// Draw a recording made with --record instead of asking an agent (with --print).
    #[arg(long, value_name = "FILE", requires = "print", conflicts_with_all = ["api", "token_file", "ca", "insecure"])]
    pub from: Option<PathBuf>,
}

/// Longest wait for the agent's next snapshot while recording: many intervals of any
/// sensible config.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

/// Runs `top` as `args` say; `socket` is the config's `api_socket`, the default agent.
pub fn main(args: &TopArgs, socket: Option<&Path>) -> Result<()> {
    if let Some(path) = &args.from {
        let snapshots = recording::read(path)?;
        let state = state_of(
            format!("recording {}", path.display()),
            snapshots,
            args.pane,
        );
        print!("{}", print::frame_text(&state, args.width, args.height)?);
        return Ok(());
    }
    let target = Target::from_flags(&args.api, socket)?;
    if !args.print && args.record.is_none() {
        return app::run(target);
    }
    let runtime = app::runtime()?;
    if let Some(path) = &args.record {
        let snapshots = runtime.block_on(watch(&target, usize::from(args.snapshots)))?;
        recording::write(path, &snapshots)?;
        eprintln!(
            "recorded {} snapshot(s) of {} to {}",
            snapshots.len(),
            target.address(),
            path.display()
        );
        return Ok(());
    }
    let snapshot = runtime.block_on(fetch(&target))?;
    let state = state_of(target.address(), vec![snapshot], args.pane);
    print!("{}", print::frame_text(&state, args.width, args.height)?);
    Ok(())
}

/// The screen's state after `snapshots`, on `pane`, as if the last one had just arrived.
pub(super) fn state_of(agent: String, snapshots: Vec<pb::Snapshot>, pane: Pane) -> UiState {
    let mut state = UiState::new(agent);
    state.pane = pane;
    for snapshot in snapshots {
        let at = snapshot.taken_at_unix_ms;
        state.ingest(snapshot, at);
    }
    state
}

/// The agent's current snapshot.
async fn fetch(target: &Target) -> Result<pb::Snapshot> {
    let mut api = client::connect_to(target).await?;
    let answer = api
        .get_snapshot(pb::GetSnapshotRequest {})
        .await
        .map_err(|status| target.status_error(&status))?;
    answer
        .into_inner()
        .snapshot
        .ok_or_else(|| target.status_error(&tonic::Status::internal("an empty answer")))
}

/// The agent's current snapshot and the next ones, `count` in all, from its Watch stream.
async fn watch(target: &Target, count: usize) -> Result<Vec<pb::Snapshot>> {
    let mut stream = client::watch_snapshots(target).await?;
    let mut snapshots: Vec<pb::Snapshot> = Vec::with_capacity(count);
    while snapshots.len() < count {
        let next = tokio::time::timeout(SNAPSHOT_WAIT, stream.message())
            .await
            .map_err(|_| {
                target.status_error(&tonic::Status::deadline_exceeded(format!(
                    "no snapshot in {} s",
                    SNAPSHOT_WAIT.as_secs()
                )))
            })?
            .map_err(|status| target.status_error(&status))?;
        let Some(message) = next else {
            return Err(target.status_error(&tonic::Status::unavailable(
                "the agent closed the stream (stopped or restarting?)",
            )));
        };
        let Some(snapshot) = message.snapshot else {
            continue;
        };
        // A snapshot sent twice (the stream begins with the latest) is kept once.
        if snapshots
            .last()
            .is_none_or(|last| last.taken_at_unix_ms != snapshot.taken_at_unix_ms)
        {
            snapshots.push(snapshot);
        }
    }
    Ok(snapshots)
}
