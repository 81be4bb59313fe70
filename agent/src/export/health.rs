//! Readiness for `/readyz`: the pipeline publishes a snapshot every interval, and the last
//! interval lost (almost) no kernel events. Liveness (`/healthz`) needs no state: answering
//! at all is the proof.
//!
//! The programs being attached is implied: the HTTP listener starts after they attach and
//! its task is aborted before they detach.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::model::Snapshot;

/// Share of the last interval's kernel events that may be lost with the agent still ready:
/// above it, the views are missing more than a rounding error.
pub const MAX_LOSS_SHARE: f64 = 0.01;

/// What the last published snapshot said about its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Interval {
    published: Instant,
    received: u64,
    lost: u64,
}

/// The readiness of the pipeline, updated by `track` and read by `/readyz`.
#[derive(Debug, Clone)]
pub struct Readiness {
    interval: Duration,
    last: Arc<Mutex<Option<Interval>>>,
}

impl Readiness {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Arc::default(),
        }
    }

    /// Follows the published snapshots until the sender is gone; run it as a task.
    pub async fn track(self, mut latest: watch::Receiver<Arc<Snapshot>>) {
        let mut previous: Option<(u64, u64)> = None;
        while latest.changed().await.is_ok() {
            let snap = latest.borrow_and_update().clone();
            let totals = event_totals(&snap);
            // The first snapshot's counts cover everything since start: one interval's worth.
            let (received, lost) = match previous {
                Some((r, l)) => (totals.0.saturating_sub(r), totals.1.saturating_sub(l)),
                None => totals,
            };
            previous = Some(totals);
            let interval = Interval {
                published: Instant::now(),
                received,
                lost,
            };
            if let Ok(mut last) = self.last.lock() {
                *last = Some(interval);
            }
        }
    }

    /// Ok when ready, otherwise the one-line reason.
    pub fn check(&self) -> Result<(), String> {
        let last = self.last.lock().map(|l| *l).unwrap_or(None);
        verdict(Instant::now(), last, self.interval)
    }
}

/// Kernel events received and lost since start: the process events and the socket records.
fn event_totals(s: &Snapshot) -> (u64, u64) {
    let a = &s.agent;
    let received = a.events_received + a.socket_events_received;
    let lost = a.kernel.events_dropped + a.kernel.socket_events_dropped + a.events_channel_full;
    (received, lost)
}

fn verdict(now: Instant, last: Option<Interval>, interval: Duration) -> Result<(), String> {
    let Some(last) = last else {
        return Err("no snapshot published yet (the first comes one interval after start)".into());
    };
    let age = now.saturating_duration_since(last.published);
    if age > interval * 2 {
        return Err(format!(
            "the pipeline published its last snapshot {} ms ago (interval {} ms)",
            age.as_millis(),
            interval.as_millis()
        ));
    }
    let seen = last.received + last.lost;
    if seen > 0 && last.lost as f64 / seen as f64 > MAX_LOSS_SHARE {
        return Err(format!(
            "the last interval lost {} of {seen} kernel events (more than {} %)",
            last.lost,
            MAX_LOSS_SHARE * 100.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);

    #[test]
    fn not_ready_before_the_first_snapshot() {
        let err = verdict(Instant::now(), None, INTERVAL).expect_err("nothing yet");
        assert!(err.contains("no snapshot"), "{err}");
    }

    #[test]
    fn ready_while_snapshots_are_fresh_and_loss_is_small() {
        let now = Instant::now();
        let last = Interval {
            published: now,
            received: 1000,
            lost: 5,
        };
        assert_eq!(verdict(now, Some(last), INTERVAL), Ok(()));
        let later = now + Duration::from_millis(2_500);
        let err = verdict(later, Some(last), INTERVAL).expect_err("stale");
        assert!(err.contains("2500 ms ago"), "{err}");
    }

    #[test]
    fn not_ready_when_the_last_interval_lost_too_much() {
        let now = Instant::now();
        let last = Interval {
            published: now,
            received: 900,
            lost: 100,
        };
        let err = verdict(now, Some(last), INTERVAL).expect_err("lossy");
        assert!(err.contains("lost 100 of 1000"), "{err}");
    }

    #[tokio::test]
    async fn tracks_the_loss_of_each_interval_not_since_start() {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let readiness = Readiness::new(INTERVAL);
        let task = tokio::spawn(readiness.clone().track(rx));
        let publish = |received: u64, lost: u64| {
            let mut snap = Snapshot::default();
            snap.agent.events_received = received;
            snap.agent.kernel.events_dropped = lost;
            tx.send_replace(Arc::new(snap));
        };
        let settle = || async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        publish(1000, 500);
        settle().await;
        assert!(readiness.check().is_err(), "half lost");
        // The next interval lost nothing: ready, although the total since start is high.
        publish(2000, 500);
        settle().await;
        assert_eq!(readiness.check(), Ok(()));
        task.abort();
    }
}
