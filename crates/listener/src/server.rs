//! The accept loop and the session loop: the only code here that touches
//! sockets.
//!
//! Entry point: [`serve`] runs until the shutdown signal, spawning one task
//! per connection, then waits for every session task it spawned to end. A
//! semaphore bounds concurrent sessions (over the limit a client gets
//! `421 4.3.2` and is closed), and per-IP limits apply to untrusted clients.
//! The session loop is read → [`Session::ingest`] → write: the session
//! answers every complete command already read (so pipelined commands are
//! answered in one write) and says where the loop must act: await the
//! [`MessageSink`] for a finished message, the users file for AUTH, start
//! TLS, or close. The loop enforces the RFC 5321 4.5.3.2 timeouts and closes
//! idle sessions on shutdown, with the decisions taken in [`crate::timing`].
//! I/O errors end that one session; a panic in a session is caught at its
//! task boundary and answered `451 4.3.0`.

use crate::limits::{IpLimiter, Slot};
use crate::session::{Session, Step};
use crate::timing::{closes_for_shutdown, PhaseDeadline, Timeouts};
use crate::{MessageSink, Reply, SessionConfig};
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Free room for each read while a message's text arrives.
const READ_DATA: usize = 64 * 1024;

/// Failures of the accept loop itself (never of one session).
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Accepting a connection failed in a way that is not about that one
    /// connection (transient failures are retried).
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Serves SMTP on `listener` until `shutdown` turns true (or its sender is
/// dropped).
///
/// Each new session takes the configuration current in `configs` (a reload
/// changes it for new sessions; the connection caps stay as they were at
/// start). On shutdown, `serve` stops accepting (it drops `listener`),
/// then waits until every session task it spawned has ended before it
/// returns `Ok(())`: idle sessions are answered 421 4.3.2 and closed at
/// once, busy ones at their next command boundary (a transaction in
/// progress finishes first, within the session timeouts). The caller puts
/// its own deadline on that wait. A fatal accept error returns at once;
/// sessions already running then carry on unawaited.
pub async fn serve<S: MessageSink>(
    listener: TcpListener,
    configs: watch::Receiver<Arc<SessionConfig>>,
    sink: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
    implicit_tls: bool,
) -> Result<(), ListenerError> {
    let caps = configs.borrow().clone();
    let (tracker, mut all_ended) = mpsc::channel::<()>(1);
    let shared = Arc::new(Shared {
        sink,
        slots: Arc::new(Semaphore::new(caps.max_connections)),
        per_ip: IpLimiter::new(caps.max_connections_per_ip, caps.max_connection_rate_per_ip),
        name: match (implicit_tls, caps.require_auth) {
            (true, _) => "smtps",
            (false, true) => "submission",
            (false, false) => "smtp",
        },
        implicit_tls,
        stop: shutdown.clone(),
        _tracker: tracker,
    });
    let mut last_warned: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    // Out of descriptors (EMFILE): the connection waits in
                    // the backlog while sessions end; we try again in 50 ms
                    // rather than spin, and say so once a minute at most.
                    if last_warned.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accept failed; waiting 50 ms between tries");
                        last_warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
            _ = shutdown.changed() => break,
        };
        let cfg = configs.borrow().clone();
        shared.admit(stream, peer, cfg);
    }
    drop(listener);
    // Each session task holds a clone of `shared`, and with it the only
    // sender: the channel closes when the last session task has ended.
    drop(shared);
    let _ = all_ended.recv().await;
    Ok(())
}

/// What every session task of one listener shares.
struct Shared<S> {
    /// Where messages go, and who counts sessions and refusals.
    sink: Arc<S>,
    /// Bounds concurrent sessions; a permit lives as long as its session.
    slots: Arc<Semaphore>,
    /// Per-client-IP concurrency and rate (trusted networks exempt).
    per_ip: Arc<IpLimiter>,
    /// `smtp`, `smtps` or `submission`, for the sink's session count.
    name: &'static str,
    /// TLS from the first byte (port 465) rather than by STARTTLS.
    implicit_tls: bool,
    /// The shutdown signal; each session watches its own clone.
    stop: watch::Receiver<bool>,
    /// Never sent on: it is dropped with the last `Shared`, which closes the
    /// channel `serve` waits on, so `serve` knows every session has ended.
    _tracker: mpsc::Sender<()>,
}

impl<S: MessageSink> Shared<S> {
    /// Takes a connection's places under the caps (or notes why not) and
    /// runs it in a task of its own.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr, cfg: Arc<SessionConfig>) {
        let _ = stream.set_nodelay(true);
        let permit = self.slots.clone().try_acquire_owned();
        let ip_slot = if cfg.relay.is_trusted(peer.ip()) {
            Ok(None)
        } else {
            self.per_ip.admit(peer.ip(), Instant::now()).map(Some)
        };
        tokio::spawn(session_task(
            self.clone(),
            stream,
            peer,
            cfg,
            permit,
            ip_slot,
        ));
    }
}

/// One connection's task: refused when over a cap, else its session, whose
/// panic ends this session only: the client hears 451 (try again later),
/// nothing else notices.
async fn session_task<S: MessageSink>(
    shared: Arc<Shared<S>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<SessionConfig>,
    permit: Result<OwnedSemaphorePermit, TryAcquireError>,
    ip_slot: Result<Option<Slot>, Reply>,
) {
    let sink = &*shared.sink;
    let Ok(_permit) = permit else {
        let r = Reply::new(421, "4.3.2", "too many connections, try again later");
        refuse(sink, &mut stream, &r).await;
        return;
    };
    let _ip_slot = match ip_slot {
        Ok(slot) => slot,
        Err(r) => {
            refuse(sink, &mut stream, &r).await;
            return;
        }
    };
    if cfg.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let r = Reply::plain(
            421,
            vec![format!(
                "4.3.2 {} is draining; please try another server",
                cfg.hostname
            )],
        );
        refuse(sink, &mut stream, &r).await;
        return;
    }
    sink.session_opened(shared.name);
    let _open = OpenSession(sink);
    let stop = shared.stop.clone();
    let run = AssertUnwindSafe(connection(
        &mut stream,
        peer,
        cfg,
        sink,
        shared.implicit_tls,
        stop,
    ));
    match run.catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "session ended"),
        Err(p) => {
            let msg = postern_supervisor::panic_message(&*p);
            tracing::error!(%peer, panic = %msg, "session panicked; answered 451");
            sink.session_panicked(&msg);
            let r = Reply::new(451, "4.3.0", "internal error; please try again later");
            let _ = stream.write_all(&r.to_bytes()).await;
        }
    }
}

/// Refuses a connection before its session starts.
async fn refuse<S: MessageSink>(sink: &S, stream: &mut TcpStream, r: &Reply) {
    sink.refused(r);
    let _ = stream.write_all(&r.to_bytes()).await;
}

/// Errors that say "this one connection failed", not "the listener is broken".
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

/// One connection: plain, upgraded by STARTTLS, or TLS from the start.
async fn connection<S: MessageSink>(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cfg: Arc<SessionConfig>,
    sink: &S,
    implicit_tls: bool,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if !implicit_tls {
        if talked_first(stream, peer, &cfg, sink).await {
            return Ok(());
        }
        let session = Session::new(cfg.clone(), peer.ip());
        if run_session(stream, session, &cfg, sink, true, &mut stop).await? == End::Closed {
            return Ok(());
        }
    }
    // STARTTLS was accepted (whatever the client pipelined after it is
    // gone with the plaintext loop), or this is an implicit-TLS port.
    let Some(tls) = &cfg.tls else {
        return Ok(());
    };
    let handshake = tokio::time::timeout(cfg.command_timeout, tls.accept(&mut *stream));
    let mut tls_stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let conn = tls_stream.get_ref().1;
    sink.tls_established(crate::tls::version_name(conn));
    let session = Session::encrypted(cfg.clone(), peer.ip(), crate::tls::describe(conn));
    // After STARTTLS the client speaks first (EHLO); on an implicit-TLS
    // port it waits for our greeting.
    run_session(
        &mut tls_stream,
        session,
        &cfg,
        sink,
        implicit_tls,
        &mut stop,
    )
    .await?;
    Ok(())
}

/// The pre-greeting test, for untrusted clients when a delay is set: an
/// honest client waits for the 220. True when the connection is done (the
/// client talked first and was refused, or hung up).
async fn talked_first<S: MessageSink>(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cfg: &SessionConfig,
    sink: &S,
) -> bool {
    if cfg.greeting_delay.is_zero() || cfg.relay.is_trusted(peer.ip()) {
        return false;
    }
    let mut probe = [0u8; 64];
    let Ok(Ok(n)) = tokio::time::timeout(cfg.greeting_delay, stream.read(&mut probe)).await else {
        return false;
    };
    if n > 0 {
        let r = Reply::new(
            554,
            "5.5.1",
            "protocol error: you talked before the greeting",
        );
        refuse(sink, stream, &r).await;
        tracing::info!(%peer, "early talker refused");
    }
    true
}

/// Writes `r` to `out`, telling the sink about refusals.
fn emit<S: MessageSink>(sink: &S, r: &Reply, out: &mut Vec<u8>) {
    if r.is_error() {
        sink.refused(r);
    }
    r.write_to(out);
}

/// Tells the sink a session ended, however it ends (panics included).
struct OpenSession<'a, S: MessageSink>(&'a S);

impl<S: MessageSink> Drop for OpenSession<'_, S> {
    fn drop(&mut self) {
        self.0.session_closed();
    }
}

/// How a session loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    /// 220 was sent to STARTTLS; the caller performs the handshake.
    StartTls,
}

/// Runs one SMTP session on any byte stream: read → ingest → write.
async fn run_session<T, S>(
    stream: &mut T,
    mut session: Session,
    cfg: &SessionConfig,
    sink: &S,
    greet: bool,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<End>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: MessageSink,
{
    let timeouts = Timeouts::of(cfg);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut deadline = PhaseDeadline::default();
    if greet {
        stream.write_all(&session.greeting().to_bytes()).await?;
    }
    loop {
        let end = answer(&mut session, &mut buf, cfg, sink, &mut out).await;
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        match end {
            // Pipelined plaintext after STARTTLS is dropped with `buf`.
            Some(End::StartTls) => return Ok(End::StartTls),
            Some(End::Closed) => {
                let _ = stream.shutdown().await;
                return Ok(End::Closed);
            }
            None => {}
        }
        let pending = !buf.is_empty() || session.reading_message();
        let idle = !pending && !session.in_transaction();
        let stop_requested = *stop.borrow();
        if closes_for_shutdown(idle, stop_requested, stop.has_changed().is_err()) {
            return shutting_down(stream).await;
        }
        if session.take_phase_change() {
            deadline.reset();
        }
        let (per_read, phase) = timeouts.for_phase(session.reading_message());
        let wait = deadline.next_wait(per_read, phase, pending, Instant::now());
        // Commands need little room; message text is read in large reads
        // (a 100 KB message in a few wake-ups, not a dozen), and the room
        // goes back once the message has been taken.
        let room = if session.reading_message() {
            READ_DATA
        } else {
            4096
        };
        if buf.capacity() - buf.len() < room {
            buf.reserve(room.max(8192));
        } else if !session.reading_message() && buf.capacity() > 2 * READ_DATA {
            buf.shrink_to(8192);
        }
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => r,
            // Wakes the idle-session check above; changes only once.
            _ = stop.changed(), if idle => continue,
        };
        match read {
            Ok(Ok(0)) => return Ok(End::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return timed_out(stream, sink).await,
        }
    }
}

/// Shutdown closes an idle session: 421 4.3.2, then close.
async fn shutting_down<T: AsyncWrite + Unpin>(stream: &mut T) -> std::io::Result<End> {
    let r = Reply::new(421, "4.3.2", "service shutting down, try again later");
    stream.write_all(&r.to_bytes()).await?;
    let _ = stream.shutdown().await;
    Ok(End::Closed)
}

/// The client kept the session waiting past a timeout: 421 4.4.2.
async fn timed_out<T, S>(stream: &mut T, sink: &S) -> std::io::Result<End>
where
    T: AsyncWrite + Unpin,
    S: MessageSink,
{
    let r = Reply::new(421, "4.4.2", "timeout, closing connection");
    sink.refused(&r);
    stream.write_all(&r.to_bytes()).await?;
    Ok(End::Closed)
}

/// Runs everything buffered through the session, awaiting the sink and the
/// users file where the session asks; the replies go to `out`, the used
/// bytes leave `buf`. `Some` ends the session loop.
async fn answer<S: MessageSink>(
    session: &mut Session,
    buf: &mut Vec<u8>,
    cfg: &SessionConfig,
    sink: &S,
    out: &mut Vec<u8>,
) -> Option<End> {
    let mut pos = 0;
    let end = loop {
        let (used, step) = session.ingest(&buf[pos..]);
        pos += used;
        for r in session.take_replies() {
            emit(sink, &r, out);
        }
        match step {
            Step::Read => break None,
            Step::Deliver(msg) => session.delivered(sink.accept(*msg).await),
            Step::Verify { user, pass, permit } => {
                let ok = match &cfg.users {
                    Some(db) => db.verify(user.clone(), pass, permit).await,
                    None => false,
                };
                session.verified(user, ok);
            }
            Step::StartTls => break Some(End::StartTls),
            Step::Close => break Some(End::Closed),
        }
    };
    buf.drain(..pos);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReceivedMessage;
    use tokio::io::{AsyncBufReadExt, BufReader};

    struct Sink;

    impl MessageSink for Sink {
        async fn accept(&self, _msg: ReceivedMessage) -> Reply {
            Reply::new(250, "2.0.0", "queued")
        }
    }

    /// Reads reply lines until one starts with `prefix`.
    async fn until(client: &mut BufReader<TcpStream>, prefix: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            let n = client.read_line(&mut line).await.unwrap();
            assert!(n > 0, "connection closed before {prefix}");
            if line.starts_with(prefix) {
                return;
            }
        }
    }

    #[tokio::test]
    async fn serve_returns_once_every_session_has_ended() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_configs_tx, configs) = watch::channel(crate::config::test_config());
        let (stop_tx, stop) = watch::channel(false);
        let mut served = tokio::spawn(serve(listener, configs, Arc::new(Sink), stop, false));
        let mut busy = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut idle = BufReader::new(TcpStream::connect(addr).await.unwrap());
        until(&mut busy, "220 ").await;
        until(&mut idle, "220 ").await;
        busy.get_mut()
            .write_all(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
            .await
            .unwrap();
        until(&mut busy, "250 2.1.0").await;
        stop_tx.send(true).unwrap();
        // The idle session is closed at once; the one in a transaction is
        // not, and `serve` waits for it.
        until(&mut idle, "421 4.3.2").await;
        let early = tokio::time::timeout(Duration::from_millis(200), &mut served).await;
        assert!(early.is_err(), "serve returned while a session was busy");
        busy.get_mut().write_all(b"RSET\r\n").await.unwrap();
        until(&mut busy, "421 4.3.2").await;
        let done = tokio::time::timeout(Duration::from_secs(10), served).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "serve must return Ok");
    }
}
