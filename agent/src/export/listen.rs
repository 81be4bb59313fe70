//! Admission of connections to a listener the agent serves (the API's Unix socket and TCP
//! address, Prometheus `/metrics`): at most `limit` open at once. One past it is accepted and
//! closed at once (its client sees the connection end before any answer) and counted, so a
//! client that leaks connections — or opens them and never speaks, or never finishes a TLS
//! handshake — costs the agent a bounded number of file descriptors and tasks, not all of
//! them. Each listener has its own limit, so remote clients filling the TCP listener's never
//! lock root out of the local socket. Admitted connections close after `idle` without a byte
//! either way (`IdleTimeout`).
//!
//! When accepting fails (descriptors exhausted: EMFILE, ENFILE, ENOBUFS) the listener stays
//! readable, so retrying at once would spin a core; the loop waits instead, 100 ms doubling to
//! 1 s while failures last, counts each failure and logs them at most every 10 s.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;

use super::idle::IdleTimeout;

/// What a listener turned away or failed at, read into the snapshot's drops.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections closed at once because the listener had its limit open.
    pub refused: AtomicU64,
    /// Accepts that failed (descriptors or memory exhausted), each followed by a pause.
    pub accept_failed: AtomicU64,
}

/// A listener whose connections the agent serves.
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
    idle: Duration,
    counters: Arc<ConnectionCounters>,
    backoff: AcceptBackoff,
}

impl<L: Listener> AdmittedConnections<L> {
    /// `name` says which listener in the log; `counters` count the connections closed for
    /// want of a slot and the failed accepts.
    pub fn new(
        listener: L,
        name: String,
        limit: usize,
        idle: Duration,
        counters: Arc<ConnectionCounters>,
    ) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limit)),
            idle,
            counters,
            backoff: AcceptBackoff::new(name),
        }
    }
}

impl<L: Listener> Stream for AdmittedConnections<L> {
    type Item = io::Result<Admitted<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            ready!(this.backoff.poll_wait(cx));
            let stream = match ready!(this.listener.poll_accept_io(cx)) {
                Ok(stream) => {
                    this.backoff.succeeded();
                    stream
                }
                // The client gave up between its connect and our accept: its loss alone.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    this.counters.accept_failed.fetch_add(1, Ordering::Relaxed);
                    this.backoff.failed(&e);
                    continue;
                }
            };
            match this.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    return Poll::Ready(Some(Ok(Admitted {
                        stream: IdleTimeout::new(stream, this.idle),
                        _slot: slot,
                    })));
                }
                Err(_) => {
                    this.counters.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                }
            }
        }
    }
}

/// Errors that end one connection, not the listener's ability to accept.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The pause after a failed accept: 100 ms, doubling to 1 s while failures last; and the
/// log of them, one line per 10 s at most with the count of those not logged.
#[derive(Debug)]
struct AcceptBackoff {
    name: String,
    pause: Option<Pin<Box<Sleep>>>,
    next: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    fn new(name: String) -> Self {
        Self {
            name,
            pause: None,
            next: FIRST_PAUSE,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Ready when no pause is running.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(pause) = &mut self.pause {
            ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        Poll::Ready(())
    }

    fn failed(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            let also = match self.unlogged {
                0 => String::new(),
                n => format!(" ({n} more failures since the last message)"),
            };
            tracing::warn!(
                "accepting a connection on {} failed: {e}{also}; pausing {} ms (each failure \
                 counts in herdwatch_agent_dropped_total{{reason=\"accept_failed\"}})",
                self.name,
                self.next.as_millis()
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.pause = Some(Box::pin(tokio::time::sleep(self.next)));
        self.next = (self.next * 2).min(LONGEST_PAUSE);
    }

    fn succeeded(&mut self) {
        self.next = FIRST_PAUSE;
    }
}

/// One admitted connection: the socket (closed after its idle time), and its slot, given
/// back when hyper drops it.
#[derive(Debug)]
pub struct Admitted<S> {
    stream: IdleTimeout<S>,
    _slot: OwnedSemaphorePermit,
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
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
        self.stream.get_ref().is_write_vectored()
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
        let counters = Arc::new(ConnectionCounters::default());
        let refused = || counters.refused.load(Ordering::Relaxed);
        let listener = UnixListener::bind(&path).expect("bind");
        let mut incoming = AdmittedConnections::new(
            listener,
            "the test socket".into(),
            2,
            Duration::from_secs(60),
            counters.clone(),
        );
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

    /// A listener whose every accept fails as with the descriptors exhausted, counting the
    /// attempts: the loop must wait between them, not spin.
    struct Exhausted(std::sync::atomic::AtomicUsize);

    impl Listener for Exhausted {
        type Io = UnixStream;

        fn poll_accept_io(&self, _cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Err(io::Error::from_raw_os_error(libc::EMFILE)))
        }
    }

    #[tokio::test]
    async fn failed_accepts_back_off_and_are_counted() {
        let counters = Arc::new(ConnectionCounters::default());
        let mut incoming = AdmittedConnections::new(
            Exhausted(Default::default()),
            "the test listener".into(),
            2,
            Duration::from_secs(60),
            counters.clone(),
        );
        // Pauses of 100, 200, 400, 800 ms: 5 tries in the first 1.5 s (fewer when the
        // machine is slow), where retrying at once would make millions.
        let next = tokio::time::timeout(Duration::from_millis(1_550), incoming.next()).await;
        assert!(next.is_err(), "nothing is admitted");
        let tries = incoming.listener.0.load(Ordering::Relaxed);
        assert!((2..=5).contains(&tries), "{tries} tries");
        assert_eq!(counters.accept_failed.load(Ordering::Relaxed), tries as u64);
    }

    #[tokio::test]
    async fn an_admitted_connection_that_never_speaks_is_closed_after_its_idle_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let counters = Arc::new(ConnectionCounters::default());
        let listener = UnixListener::bind(&path).expect("bind");
        let mut incoming = AdmittedConnections::new(
            listener,
            "t".into(),
            1,
            Duration::from_millis(300),
            counters,
        );
        let _client = UnixStream::connect(&path).await.expect("connect");
        let mut admitted = incoming.next().await.expect("admitted").expect("io");
        let mut byte = [0u8; 1];
        let err = admitted.read(&mut byte).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
