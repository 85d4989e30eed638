//! Limits on connections: how many are served at once, and how long a client
//! may take to send its first request's headers. Without them, a client that
//! opens connections and sends half a request holds them (and their memory)
//! for as long as it likes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// The defaults are documented in the README (`--max-connections`, `--header-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The time from accepting a connection to the end of its first request's headers.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// A TCP acceptor that holds a permit per open connection.
pub struct LimitedAcceptor {
    inner: TcpAcceptor,
    permits: Arc<Semaphore>,
    header_timeout: Duration,
}

impl LimitedAcceptor {
    pub fn new(inner: TcpAcceptor, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            header_timeout: limits.header_timeout,
        }
    }
}

impl Acceptor for LimitedAcceptor {
    type Io = LimitedStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let stream = LimitedStream {
            io,
            _permit: permit,
            deadline: Some(Box::pin(tokio::time::sleep(self.header_timeout))),
            tail: Vec::with_capacity(4),
        };
        Ok((stream, local, remote, scheme))
    }
}

/// A connection that fails its reads once the header deadline passes before
/// the first request's headers (`\r\n\r\n`) arrived.
pub struct LimitedStream {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last bytes read, so an end of headers split across reads is seen.
    tail: Vec<u8>,
}

impl LimitedStream {
    fn saw(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.windows(4).any(|w| w == b"\r\n\r\n") {
            self.deadline = None;
            self.tail = Vec::new();
        } else if self.tail.len() > 3 {
            self.tail.drain(..self.tail.len() - 3);
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request's headers did not arrive in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.deadline.is_some() {
            if let Poll::Ready(Ok(())) = &polled {
                let new = buf.filled()[before..].to_vec();
                this.saw(&new);
            }
        }
        polled
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
