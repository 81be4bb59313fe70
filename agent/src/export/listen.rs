//! Admission of connections to an API listener (the Unix socket, or TCP): at most `limit`
//! open at once. One past it is accepted and closed at once (its client sees the connection
//! end before any answer) and counted, so a client that leaks connections — or opens them and
//! never speaks, or never finishes a TLS handshake — costs the agent a bounded number of file
//! descriptors and tasks, not all of them. Each listener has its own limit, so remote clients
//! filling the TCP listener's never lock root out of the local socket.
use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_stream::Stream;

use super::bounds::ApiCounters;

/// A listener whose connections the API serves.
pub trait Listener: Unpin {
    type Io: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin;

    fn poll_accept_io(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Listener for UnixListener {
    type Io = UnixStream;

    fn poll_accept_io(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        self.poll_accept(cx).map_ok(|(stream, _)| stream)
    }
}

impl Listener for TcpListener {
    type Io = TcpStream;

    fn poll_accept_io(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let (stream, _) = ready!(self.poll_accept(cx))?;
        // gRPC messages are small and answered at once: do not hold them back for Nagle.
        // Failing to set it costs latency, not correctness.
        let _ = stream.set_nodelay(true);
        Poll::Ready(Ok(stream))
    }
}

/// The accepted connections, each holding its slot until it is dropped.
#[derive(Debug)]
pub struct AdmittedConnections<L> {
    listener: L,
    slots: Arc<Semaphore>,
    counters: Arc<ApiCounters>,
}

impl<L: Listener> AdmittedConnections<L> {
    /// `counters` count the connections closed for want of a slot.
    pub fn new(listener: L, limit: usize, counters: Arc<ApiCounters>) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limit)),
            counters,
        }
    }
}

impl<L: Listener> Stream for AdmittedConnections<L> {
    type Item = io::Result<Admitted<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let stream = ready!(self.listener.poll_accept_io(cx))?;
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
pub struct Admitted<S> {
    stream: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
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
