//! Admission of connections to the API socket: at most `limit` open at once. One past it is
//! accepted and closed at once (its client sees the connection end before any answer) and
//! counted, so a client that leaks connections — or opens them and never speaks — costs the
//! agent a bounded number of file descriptors and tasks, not all of them.
use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::Stream;

use super::bounds::ApiCounters;

/// The accepted connections, each holding its slot until it is dropped.
#[derive(Debug)]
pub struct AdmittedConnections {
    listener: UnixListener,
    slots: Arc<Semaphore>,
    counters: Arc<ApiCounters>,
}

impl AdmittedConnections {
    /// `counters` count the connections closed for want of a slot.
    pub fn new(listener: UnixListener, limit: usize, counters: Arc<ApiCounters>) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limit)),
            counters,
        }
    }
}

impl Stream for AdmittedConnections {
    type Item = io::Result<Admitted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let (stream, _) = ready!(self.listener.poll_accept(cx))?;
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return Poll::Ready(Some(Ok(Admitted {
                        stream,
                        _slot: slot,
                    })));
                }
                Err(_) => {
                    self.counters
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                }
            }
        }
    }
}

/// One admitted connection: the socket, and its slot, given back when hyper drops it.
#[derive(Debug)]
pub struct Admitted {
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn past_the_limit_a_connection_is_closed_and_counted_until_a_slot_frees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let counters = Arc::new(ApiCounters::default());
        let refused = || counters.connections_refused.load(Ordering::Relaxed);
        let listener = UnixListener::bind(&path).expect("bind");
        let mut incoming = AdmittedConnections::new(listener, 2, counters.clone());
        let _a = UnixStream::connect(&path).await.expect("connect");
        let _b = UnixStream::connect(&path).await.expect("connect");
        let first = incoming.next().await.expect("admitted").expect("io");
        let _second = incoming.next().await.expect("admitted").expect("io");
        let mut third = UnixStream::connect(&path)
            .await
            .expect("the kernel accepts it");
        // Polling admits nothing more: the third is closed and counted.
        let next = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(next.is_err(), "no third connection admitted");
        assert_eq!(refused(), 1);
        let mut byte = [0u8; 1];
        assert_eq!(third.read(&mut byte).await.expect("read"), 0, "closed");
        // A closed connection gives its slot back.
        drop(first);
        let _fourth = UnixStream::connect(&path).await.expect("connect");
        let admitted = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(admitted, Ok(Some(Ok(_)))),
            "the freed slot is used"
        );
        assert_eq!(refused(), 1);
    }
}
