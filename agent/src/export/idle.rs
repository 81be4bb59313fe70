//! A connection that closes itself after a stretch with no byte read or written: a client
//! that connects and never speaks, or stops reading half-way, gives its descriptor back.
//!
//! The deadline is moved lazily: each byte notes the time, and only when the timer fires is
//! it checked against the last activity, so a busy connection costs no timer work per read.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

#[derive(Debug)]
pub struct IdleTimeout<S> {
    stream: S,
    idle: Duration,
    last_activity: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub fn new(stream: S, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            stream,
            idle,
            last_activity: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Called while the stream is waiting: the error to end it with once `idle` has passed
    /// with no activity, otherwise the timer re-armed (for the last activity) and Pending.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last_activity + self.idle;
            if due <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no byte either way for {} s", self.idle.as_secs()),
                ));
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Pending => self.poll_expired(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn a_silent_peer_is_cut_off_after_the_idle_time_an_active_one_is_not() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let idle = Duration::from_millis(600);
        let mut conn = IdleTimeout::new(ours, idle);
        let mut byte = [0u8; 1];
        // A byte every 100 ms for three idle times: never cut off.
        let started = Instant::now();
        while started.elapsed() < idle * 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            theirs.write_all(b"x").await.expect("write");
            conn.read_exact(&mut byte)
                .await
                .expect("an active peer stays");
        }
        let waited = Instant::now();
        let err = conn.read(&mut byte).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(waited.elapsed() >= idle, "not before the idle time");
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_cut_off_too() {
        let (ours, _theirs) = tokio::io::duplex(4);
        let mut conn = IdleTimeout::new(ours, Duration::from_millis(200));
        // The pipe holds 4 bytes; the rest waits for a reader that never comes.
        let err = conn.write_all(&[0u8; 64]).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
