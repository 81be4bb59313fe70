//! The channel that carries socket-record batches from the ring reader to the pipeline, and
//! brings spent batches back: the reader refills a batch whose memory has already grown to
//! fit 256 records instead of growing a new one (and reallocating it several times) per
//! wake-up. Both directions are bounded; a batch that finds no room is dropped (counted when
//! it carries records, simply freed when it is a spare).
use tokio::sync::mpsc;

use super::socket_events::SocketBatch;

/// Spent batches kept for reuse: enough for the reader to never wait on the allocator
/// while the pipeline works through the batches already sent.
const SPARE_BATCHES: usize = 8;

/// The reader's end.
#[derive(Debug)]
pub struct BatchSender {
    full: mpsc::Sender<SocketBatch>,
    spares: mpsc::Receiver<SocketBatch>,
}

/// Why a batch was not sent.
#[derive(Debug)]
pub enum SendError {
    /// The pipeline is behind: the batch (returned) is dropped.
    Full(SocketBatch),
    /// The pipeline has stopped.
    Closed,
}

impl BatchSender {
    /// An empty batch: a spent one if the pipeline gave one back, else a new one.
    pub fn empty(&mut self) -> SocketBatch {
        self.spares.try_recv().unwrap_or_default()
    }

    pub fn try_send(&self, batch: SocketBatch) -> Result<(), SendError> {
        self.full.try_send(batch).map_err(|e| match e {
            mpsc::error::TrySendError::Full(batch) => SendError::Full(batch),
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }
}

/// The pipeline's end.
#[derive(Debug)]
pub struct BatchReceiver {
    full: mpsc::Receiver<SocketBatch>,
    spares: mpsc::Sender<SocketBatch>,
}

impl BatchReceiver {
    pub async fn recv(&mut self) -> Option<SocketBatch> {
        self.full.recv().await
    }

    pub fn try_recv(&mut self) -> Option<SocketBatch> {
        self.full.try_recv().ok()
    }

    /// Gives a spent batch back to the reader (or frees it when enough are waiting).
    pub fn recycle(&self, mut batch: SocketBatch) {
        batch.clear();
        let _ = self.spares.try_send(batch);
    }
}

/// A channel holding at most `capacity` batches in flight.
pub fn channel(capacity: usize) -> (BatchSender, BatchReceiver) {
    let (full_tx, full_rx) = mpsc::channel(capacity.max(1));
    let (spare_tx, spare_rx) = mpsc::channel(SPARE_BATCHES);
    (
        BatchSender {
            full: full_tx,
            spares: spare_rx,
        },
        BatchReceiver {
            full: full_rx,
            spares: spare_tx,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_batch_comes_back_empty_with_its_memory() {
        let (mut tx, mut rx) = channel(2);
        let mut batch = tx.empty();
        for _ in 0..256 {
            batch.push(&[7u8; 300]);
        }
        let grown = batch.capacity_bytes();
        assert!(tx.try_send(batch).is_ok());
        let received = rx.try_recv().expect("sent");
        assert_eq!(received.len(), 256);
        rx.recycle(received);
        let again = tx.empty();
        assert!(again.is_empty());
        assert_eq!(again.capacity_bytes(), grown);
    }

    #[test]
    fn a_full_channel_hands_the_batch_back_and_spares_are_bounded() {
        let (mut tx, rx) = channel(1);
        let first = tx.empty();
        assert!(tx.try_send(first).is_ok());
        let second = tx.empty();
        assert!(matches!(tx.try_send(second), Err(SendError::Full(_))));
        for _ in 0..SPARE_BATCHES + 4 {
            rx.recycle(SocketBatch::default());
        }
        let mut spares = 0;
        while tx.spares.try_recv().is_ok() {
            spares += 1;
        }
        assert_eq!(spares, SPARE_BATCHES);
        drop(rx);
        let third = tx.empty();
        assert!(matches!(tx.try_send(third), Err(SendError::Closed)));
    }
}
