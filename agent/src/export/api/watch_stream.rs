//! Feeding one Watch stream: a task turns each published snapshot into messages and puts them
//! in the stream's bounded buffer; the response body takes them out as fast as HTTP/2 flow
//! control lets it, which is as fast as the client reads.
//!
//! A client that stops reading fills the buffer. The feeder never waits for it (that would
//! hold a snapshot, and memory, per stalled client): it cuts the stream off, counts it
//! (`api_watcher_too_slow`), and the client, if it ever reads again, gets what was buffered
//! and then RESOURCE_EXHAUSTED saying why. A message larger than the API sends ends the
//! stream the same way, with the reason `messages` gave (and counted there).
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_stream::Stream;

use super::bounds::ApiCounters;
use crate::model::Snapshot;

/// The response body of a Watch call.
#[derive(Debug)]
pub struct WatchStream<T> {
    buffered: mpsc::Receiver<Result<T, tonic::Status>>,
    cut_off: Arc<AtomicBool>,
    told: bool,
}

impl<T> Stream for WatchStream<T> {
    type Item = Result<T, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.buffered.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) if self.cut_off.load(Ordering::Acquire) && !self.told => {
                self.told = true;
                Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                    "watch stream cut off: the client stopped reading and its buffer filled; \
                     the agent counted it as dropped (api_watcher_too_slow)",
                ))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Starts feeding a stream: `messages` turns the latest snapshot, then each new one, into
/// the messages to send, or into the error that ends the stream. `slot` is held until the feeder stops (client gone, cut off, or the
/// agent stopping).
pub fn feed<T, F>(
    mut latest: watch::Receiver<Arc<Snapshot>>,
    buffer: usize,
    slot: OwnedSemaphorePermit,
    counters: Arc<ApiCounters>,
    mut messages: F,
) -> WatchStream<T>
where
    T: Send + 'static,
    F: FnMut(&Snapshot) -> Result<Vec<T>, tonic::Status> + Send + 'static,
{
    let (tx, buffered) = mpsc::channel(buffer.max(1));
    let cut_off = Arc::new(AtomicBool::new(false));
    let flag = cut_off.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut snap = latest.borrow_and_update().clone();
        loop {
            let (batch, refusal) = match messages(snap.as_ref()) {
                Ok(batch) => (batch, None),
                Err(status) => (Vec::new(), Some(status)),
            };
            if let Some(status) = refusal {
                // The client learns why its stream ends (unless it also stopped reading).
                let _ = tx.try_send(Err(status));
                return;
            }
            for message in batch {
                match tx.try_send(Ok(message)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        flag.store(true, Ordering::Release);
                        counters.watchers_too_slow.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() {
                    // The pipeline stopped: no more snapshots, the stream ends.
                    return;
                },
                () = tx.closed() => return,
            }
            snap = latest.borrow_and_update().clone();
        }
    });
    WatchStream {
        buffered,
        cut_off,
        told: false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use tokio_stream::StreamExt as _;

    use super::*;

    fn snapshot(at: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            taken_at_unix_ms: at,
            ..Snapshot::default()
        })
    }

    fn slot(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        slots.clone().try_acquire_owned().expect("a free slot")
    }

    /// Waits (bounded) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_reader_gets_the_latest_snapshot_then_every_new_one() {
        let (tx, rx) = watch::channel(snapshot(1));
        let slots = Arc::new(Semaphore::new(1));
        let counters = Arc::new(ApiCounters::default());
        let mut stream = feed(rx, 4, slot(&slots), counters.clone(), |s| {
            Ok(vec![s.taken_at_unix_ms])
        });
        assert_eq!(stream.next().await.and_then(Result::ok), Some(1));
        tx.send_replace(snapshot(2));
        assert_eq!(stream.next().await.and_then(Result::ok), Some(2));
        assert_eq!(slots.available_permits(), 0, "the stream holds its slot");
        drop(stream);
        // The feeder notices the client is gone and gives the slot back.
        eventually("the slot is freed", || slots.available_permits() == 1).await;
        assert_eq!(counters.watchers_too_slow.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_is_cut_off_counted_and_told_why() {
        let (tx, rx) = watch::channel(snapshot(1));
        let slots = Arc::new(Semaphore::new(1));
        let counters = Arc::new(ApiCounters::default());
        let mut stream = feed(rx, 3, slot(&slots), counters.clone(), |s| {
            Ok(vec![s.taken_at_unix_ms])
        });
        // Nobody reads: snapshots 1..=3 fill the buffer, the 4th does not fit.
        for at in 2..=4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(snapshot(at));
        }
        eventually("the stream is cut off", || {
            counters.watchers_too_slow.load(Ordering::Relaxed) == 1
        })
        .await;
        eventually("the slot is freed", || slots.available_permits() == 1).await;
        let mut got = Vec::new();
        while let Some(item) = stream.next().await {
            got.push(item);
        }
        let sent: Vec<u64> = got
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(sent, [1, 2, 3], "what was buffered is still delivered");
        let last = got
            .last()
            .and_then(|r| r.as_ref().err())
            .expect("ends with an error");
        assert_eq!(last.code(), tonic::Code::ResourceExhausted);
        assert!(last.message().contains("stopped reading"), "{last}");
        // Later snapshots cost the cut-off stream nothing.
        tx.send_replace(snapshot(5));
        assert_eq!(counters.watchers_too_slow.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_agent_stops_publishing() {
        let (tx, rx) = watch::channel(snapshot(1));
        let slots = Arc::new(Semaphore::new(1));
        let mut stream = feed(rx, 4, slot(&slots), Arc::default(), |s| {
            Ok(vec![s.taken_at_unix_ms])
        });
        assert_eq!(stream.next().await.and_then(Result::ok), Some(1));
        drop(tx);
        assert!(stream.next().await.is_none(), "a clean end, not an error");
    }

    #[tokio::test]
    async fn a_refused_message_ends_the_stream_with_its_reason() {
        let (tx, rx) = watch::channel(snapshot(1));
        let slots = Arc::new(Semaphore::new(1));
        let mut stream = feed(rx, 4, slot(&slots), Arc::default(), |s| {
            if s.taken_at_unix_ms < 2 {
                Ok(vec![s.taken_at_unix_ms])
            } else {
                Err(tonic::Status::resource_exhausted("too large"))
            }
        });
        assert_eq!(stream.next().await.and_then(Result::ok), Some(1));
        tx.send_replace(snapshot(2));
        let refused = stream
            .next()
            .await
            .and_then(Result::err)
            .expect("the reason");
        assert_eq!(refused.message(), "too large");
        assert!(stream.next().await.is_none());
        eventually("the slot is freed", || slots.available_permits() == 1).await;
    }
}
