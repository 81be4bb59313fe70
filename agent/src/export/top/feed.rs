//! The link to the agent: follows its `WatchSnapshots` stream and hands each snapshot to the
//! screen; when the agent goes away (stopped, restarted, socket gone, stream cut off) or
//! refuses (a wrong token) it says so and dials again with a growing pause, for as long as
//! `top` runs.
use std::time::Duration;

use herdwatch_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    export::api::client::{self, Target},
};

#[derive(Debug)]
pub enum FeedEvent {
    Snapshot(Box<pb::Snapshot>),
    /// The link broke (or never came up); the next try is in `retry_ms`.
    Lost {
        error: String,
        attempt: u32,
        retry_ms: u64,
    },
}

/// First pause after a failure; doubled per failure up to `MAX_RETRY_MS`, so a restarting
/// agent is found again within seconds and a gone one costs one dial every few seconds.
const FIRST_RETRY_MS: u64 = 250;
const MAX_RETRY_MS: u64 = 4000;

pub fn retry_ms(attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(16);
    (FIRST_RETRY_MS << doublings).min(MAX_RETRY_MS)
}

/// Runs until the screen stops listening (its receiver dropped).
pub async fn follow(target: Target, tx: mpsc::Sender<FeedEvent>) {
    let mut attempt = 0u32;
    loop {
        let error = match watch(&target, &tx, &mut attempt).await {
            Ok(()) => return,
            // The status line names the agent already.
            Err(Error::Api { message, .. } | Error::RemoteApi { message, .. }) => message,
            Err(other) => other.to_string(),
        };
        attempt = attempt.saturating_add(1);
        let retry_ms = retry_ms(attempt);
        let lost = FeedEvent::Lost {
            error,
            attempt,
            retry_ms,
        };
        if tx.send(lost).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    }
}

/// One connection: `Ok` only when the screen is gone; any end of the stream is an error.
async fn watch(target: &Target, tx: &mpsc::Sender<FeedEvent>, attempt: &mut u32) -> Result<()> {
    let mut stream = client::watch_snapshots(target).await?;
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                *attempt = 0;
                let Some(snapshot) = message.snapshot else {
                    continue;
                };
                if tx
                    .send(FeedEvent::Snapshot(Box::new(snapshot)))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(None) => {
                return Err(target.status_error(&tonic::Status::unavailable(
                    "the agent closed the stream (stopped or restarting?)",
                )));
            }
            Err(status) => return Err(target.status_error(&status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_ms(1), 250);
        assert_eq!(retry_ms(2), 500);
        assert_eq!(retry_ms(5), 4000);
        assert_eq!(retry_ms(u32::MAX), 4000);
    }

    #[tokio::test]
    async fn a_missing_agent_is_reported_and_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let (tx, mut rx) = mpsc::channel(4);
        let feed = tokio::spawn(follow(Target::Socket(socket), tx));
        for want in 1..=2 {
            match rx.recv().await {
                Some(FeedEvent::Lost { error, attempt, .. }) => {
                    assert_eq!(attempt, want);
                    assert!(error.contains("No such file"), "{error}");
                }
                other => panic!("expected the link lost, got {other:?}"),
            }
        }
        // The screen going away ends the feed.
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), feed)
            .await
            .expect("the feed stops")
            .expect("without panicking");
    }
}
