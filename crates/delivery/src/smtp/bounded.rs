//! Bounded next-hop replies: the TCP stream lettre reads replies from,
//! with a budget of octets per awaited reply.
//!
//! lettre's reply reader is an unbounded `read_line`: a next hop that sends
//! `220-` and then bytes without a line feed would grow our memory without
//! end. lettre takes any stream ([`AsyncTokioStream`]), so it gets a
//! [`Wire`] over a [`Bounded`] TCP stream instead of the bare one (plain,
//! then TLS over the same [`Bounded`] after STARTTLS): before each step the
//! shell says how many replies it awaits ([`ReplyBudget::expect`]), and once
//! the next hop has sent more than `max_reply_size` octets per awaited reply
//! every read fails with an I/O error, which lettre reports as a failed
//! read. The budget is counted on the wire, below TLS (STARTTLS wraps the
//! [`Bounded`] stream), so it bounds an encrypted flood just the same; it includes what
//! lettre's buffer reads ahead (at most one read, a few KiB).
//!
//! Failure modes: an exhausted budget is sticky ([`ReplyBudget::is_over`]):
//! the connection is spent, never pooled, and the shell turns the failed
//! read into a temporary "over-long reply" reason.

use lettre::transport::smtp::client::AsyncTokioStream;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Octets a next hop may still send for the replies now awaited on one
/// connection. Shared by the connection (which sets it before each step) and
/// its [`Bounded`] stream (which spends it); atomics only because lettre
/// wants a `Sync` stream: one task uses a connection at a time.
#[derive(Debug)]
pub(crate) struct ReplyBudget {
    /// Octets one reply may take (`delivery.max_reply_size`).
    per_reply: usize,
    /// Octets left for the replies now awaited.
    left: AtomicUsize,
    /// Set when the next hop sent more than it was allowed: the connection
    /// is of no further use.
    over: AtomicBool,
}

impl ReplyBudget {
    /// A budget of `per_reply` octets per awaited reply, nothing awaited yet.
    pub(crate) fn new(per_reply: usize) -> Arc<ReplyBudget> {
        Arc::new(ReplyBudget {
            per_reply,
            left: AtomicUsize::new(0),
            over: AtomicBool::new(false),
        })
    }

    /// The next step awaits `replies` replies: allows that many times the
    /// per-reply size from now on (what was allowed before and not spent
    /// is forgotten). Does nothing once the budget ran over.
    pub(crate) fn expect(&self, replies: usize) {
        if !self.is_over() {
            let allowed = self.per_reply.saturating_mul(replies);
            self.left.store(allowed, Ordering::Relaxed);
        }
    }

    /// Spends `n` octets just read; false (and over for good) when they
    /// were more than what was left.
    fn spend(&self, n: usize) -> bool {
        let left = self.left.load(Ordering::Relaxed);
        if n > left || self.is_over() {
            self.left.store(0, Ordering::Relaxed);
            self.over.store(true, Ordering::Relaxed);
            return false;
        }
        self.left.store(left - n, Ordering::Relaxed);
        true
    }

    /// True once the next hop sent more than it was allowed.
    pub(crate) fn is_over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

/// The error every read returns once the budget is spent.
fn over_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "next hop sent an over-long reply",
    )
}

/// A TCP stream whose reads fail once the next hop has sent more than its
/// [`ReplyBudget`] allows. Writes pass through.
#[derive(Debug)]
pub(crate) struct Bounded {
    /// The connection to the next hop.
    tcp: TcpStream,
    /// What the next hop may still send; shared with the connection.
    budget: Arc<ReplyBudget>,
}

impl Bounded {
    /// Wraps `tcp`, spending `budget`.
    pub(crate) fn new(tcp: TcpStream, budget: Arc<ReplyBudget>) -> Bounded {
        Bounded { tcp, budget }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.budget.is_over() {
            return Poll::Ready(Err(over_long()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if this.budget.spend(n) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(over_long()))
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// The stream lettre reads from: before STARTTLS a [`Bounded`] TCP stream
/// in a slot the shell can take it back from for the TLS handshake
/// ([`Wire::take`]); after it, TLS over that same [`Bounded`] stream, so
/// the reply budget still counts octets on the wire.
#[derive(Debug)]
pub(crate) enum Wire {
    /// Plain text; the slot is emptied by [`Wire::take`].
    Plain(Arc<std::sync::Mutex<Option<Bounded>>>),
    /// After STARTTLS.
    Tls(Box<tokio_rustls::client::TlsStream<Bounded>>),
}

impl Wire {
    /// A plain stream and the slot to take it back from.
    pub(crate) fn plain(b: Bounded) -> (Wire, Arc<std::sync::Mutex<Option<Bounded>>>) {
        let slot = Arc::new(std::sync::Mutex::new(Some(b)));
        (Wire::Plain(slot.clone()), slot)
    }

    /// Takes the plain stream out of `slot` (for the TLS handshake); the
    /// [`Wire`] that shared it fails every later read and write.
    pub(crate) fn take(slot: &std::sync::Mutex<Option<Bounded>>) -> Option<Bounded> {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn handed_over() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream handed over to TLS")
}

/// Runs `f` on the plain stream in the slot, or fails when it was taken.
fn with_plain<T>(
    slot: &std::sync::Mutex<Option<Bounded>>,
    f: impl FnOnce(Pin<&mut Bounded>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    match slot.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(b) => f(Pin::new(b)),
        None => Poll::Ready(Err(handed_over())),
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(slot) => with_plain(slot, |b| b.poll_read(cx, buf)),
            Wire::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(slot) => with_plain(slot, |b| b.poll_write(cx, buf)),
            Wire::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(slot) => with_plain(slot, |b| b.poll_flush(cx)),
            Wire::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(slot) => with_plain(slot, |b| b.poll_shutdown(cx)),
            Wire::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(slot) => with_plain(slot, |b| b.poll_write_vectored(cx, bufs)),
            Wire::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Wire::Plain(_) => true,
            Wire::Tls(t) => t.is_write_vectored(),
        }
    }
}

impl AsyncTokioStream for Wire {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Wire::Plain(slot) => match slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(b) => b.tcp.peer_addr(),
                None => Err(handed_over()),
            },
            Wire::Tls(t) => t.get_ref().0.tcp.peer_addr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn budget_per_awaited_reply() {
        let b = ReplyBudget::new(10);
        // Nothing awaited: any octet is too many.
        assert!(b.spend(0));
        assert!(!b.spend(1));
        let b = ReplyBudget::new(10);
        b.expect(2);
        assert!(b.spend(15) && b.spend(5));
        // A new step forgets what the last one left.
        b.expect(1);
        assert!(b.spend(10));
        assert!(!b.is_over());
        assert!(!b.spend(1));
        assert!(b.is_over());
        // Over is for good.
        b.expect(5);
        assert!(!b.spend(0));
    }

    #[tokio::test]
    async fn reads_fail_past_the_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // Fails once the client stops reading and closes: ignore.
            let _ = s.write_all(&[b'x'; 4096]).await;
        });
        let budget = ReplyBudget::new(1000);
        budget.expect(1);
        let mut s = Bounded::new(TcpStream::connect(addr).await.unwrap(), budget.clone());
        let mut got = 0;
        let mut buf = [0u8; 256];
        let err = loop {
            match s.read(&mut buf).await {
                Ok(0) => panic!("end of stream before the budget ran out"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(got <= 1000, "{got}");
        assert_eq!(err.to_string(), "next hop sent an over-long reply");
        assert!(budget.is_over());
        drop(s);
        peer.await.unwrap();
    }
}
