//! The accept loop and the session loop: the only code here that touches
//! sockets.
//!
//! Entry point: [`serve`] runs until the shutdown signal, spawning one task
//! per connection. A semaphore bounds concurrent sessions (over the limit a
//! client gets `421 4.3.2` and is closed). The session loop reads what the
//! client sent, runs every complete command through the [`Session`] (so
//! pipelined commands are answered in one write), feeds DATA to the
//! [`DataReceiver`], hands finished messages to the [`MessageSink`], and
//! enforces the RFC 5321 4.5.3.2 timeouts. I/O errors end that one session;
//! a panic in a session is caught at its task boundary and answered
//! `451 4.3.0`.

use crate::codec::{Frame, LineCodec};
use crate::data::DataReceiver;
use crate::session::{Action, Session, SessionConfig};
use crate::{MessageSink, Reply};
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Failures of the accept loop itself (never of one session).
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Serves SMTP on `listener` until `shutdown` turns true.
///
/// Each new session takes the configuration current in `configs` (a reload
/// changes it for new sessions; the connection caps stay as they were at
/// start). On shutdown, idle sessions are answered 421 4.3.2 and closed at
/// their next command boundary; a transaction in progress finishes first.
pub async fn serve<S: MessageSink>(
    listener: TcpListener,
    configs: watch::Receiver<Arc<SessionConfig>>,
    sink: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
    implicit_tls: bool,
) -> Result<(), ListenerError> {
    let caps = configs.borrow().clone();
    // Bounds concurrent sessions; a permit lives as long as its session.
    let slots = Arc::new(Semaphore::new(caps.max_connections));
    // Per-client-IP concurrency and rate (trusted networks exempt).
    let per_ip =
        crate::limits::IpLimiter::new(caps.max_connections_per_ip, caps.max_connection_rate_per_ip);
    let listener_name = match (implicit_tls, caps.require_auth) {
        (true, _) => "smtps",
        (false, true) => "submission",
        (false, false) => "smtp",
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; continuing");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let permit = slots.clone().try_acquire_owned();
        let (cfg, sink) = (configs.borrow().clone(), sink.clone());
        let ip_slot = if cfg.relay.is_trusted(peer.ip()) {
            Ok(None)
        } else {
            per_ip.admit(peer.ip(), std::time::Instant::now()).map(Some)
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let Ok(_permit) = permit else {
                let r = Reply::new(421, "4.3.2", "too many connections, try again later");
                sink.refused(&r);
                let _ = stream.write_all(&r.to_bytes()).await;
                return;
            };
            let _ip_slot = match ip_slot {
                Ok(s) => s,
                Err(r) => {
                    sink.refused(&r);
                    let _ = stream.write_all(&r.to_bytes()).await;
                    return;
                }
            };
            sink.session_opened(listener_name);
            let _open = OpenSession(&*sink);
            // A panic anywhere in this session ends this session only: the
            // client hears 451 (try again later), nothing else notices.
            let run = AssertUnwindSafe(connection(
                &mut stream,
                peer,
                cfg,
                &*sink,
                implicit_tls,
                stop,
            ));
            match run.catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "session ended"),
                Err(p) => {
                    let msg = panic_text(&*p);
                    tracing::error!(%peer, panic = %msg, "session panicked; answered 451");
                    sink.session_panicked(&msg);
                    let r = Reply::new(451, "4.3.0", "internal error; please try again later");
                    let _ = stream.write_all(&r.to_bytes()).await;
                }
            }
        });
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
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
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    cfg: Arc<SessionConfig>,
    sink: &S,
    implicit_tls: bool,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if !implicit_tls {
        if !cfg.greeting_delay.is_zero() && !cfg.relay.is_trusted(peer.ip()) {
            // Pre-greeting test: an honest client waits for the 220.
            let mut probe = [0u8; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(cfg.greeting_delay, stream.read(&mut probe)).await
            {
                if n > 0 {
                    let r = Reply::new(
                        554,
                        "5.5.1",
                        "protocol error: you talked before the greeting",
                    );
                    sink.refused(&r);
                    let _ = stream.write_all(&r.to_bytes()).await;
                    tracing::info!(%peer, "early talker refused");
                }
                return Ok(());
            }
        }
        let session = Session::new(cfg.clone(), peer.ip());
        if run_session(stream, session, &cfg, sink, true, &mut stop).await? == End::Closed {
            return Ok(());
        }
    }
    // STARTTLS was accepted (whatever the client pipelined after it is
    // gone with the plaintext loop), or this is an implicit-TLS port.
    let Some(tls) = cfg.tls.clone() else {
        return Ok(());
    };
    let handshake = tokio::time::timeout(cfg.command_timeout, tls.acceptor.accept(&mut *stream));
    let mut tls_stream = match handshake.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    sink.tls_established(
        tls_stream
            .get_ref()
            .1
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown"),
    );
    let desc = crate::tls::describe(tls_stream.get_ref().1);
    let session = Session::encrypted(cfg.clone(), peer.ip(), desc);
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
pub enum End {
    Closed,
    /// 220 was sent to STARTTLS; the caller performs the handshake.
    StartTls,
}

/// What the loop is reading.
enum Mode {
    Commands,
    Data(DataReceiver),
    /// A BDAT chunk: `remaining` of `size` octets still to come.
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
    },
}

/// Ends a BDAT chunk: its reply goes to `out`; true means close.
async fn finish_bdat<S: MessageSink>(
    session: &mut Session,
    sink: &S,
    size: u64,
    last: bool,
    out: &mut Vec<u8>,
) -> bool {
    let action = match session.bdat_end(size, last) {
        Ok(Some(msg)) => Action::Reply(sink.accept(msg).await),
        Ok(None) => return false,
        Err(a) => a,
    };
    match action {
        Action::Close(r) => {
            emit(sink, &r, out);
            true
        }
        Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) => {
            emit(sink, &r, out);
            false
        }
        Action::Authenticate { .. } | Action::Bdat { .. } => false,
    }
}

/// Runs one SMTP session on any byte stream.
pub async fn run_session<T, S>(
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
    let mut codec = LineCodec::new(cfg.max_command_line);
    let mut mode = Mode::Commands;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // When the current command line or DATA phase must be complete: a slow
    // client cannot hold the session by trickling a byte at a time.
    let mut phase_deadline: Option<std::time::Instant> = None;
    if greet {
        stream.write_all(&session.greeting().to_bytes()).await?;
    }
    loop {
        // Answer every complete command already buffered (pipelining).
        let mut pos = 0;
        let mut close = false;
        let mut starttls = false;
        while pos < buf.len() && !close && !starttls {
            match &mut mode {
                Mode::Commands => {
                    let action = match codec.decode(&buf[pos..]) {
                        Ok(None) => break,
                        Ok(Some(Frame::Skipped(n))) => {
                            pos += n;
                            continue;
                        }
                        Ok(Some(Frame::Line { consumed, text_len })) => {
                            let line = &buf[pos..pos + text_len];
                            pos += consumed;
                            session.command(line)
                        }
                        Err((_, n)) => {
                            pos += n;
                            session.line_too_long()
                        }
                    };
                    match action {
                        Action::Reply(r) => emit(sink, &r, &mut out),
                        Action::StartData(r) => {
                            emit(sink, &r, &mut out);
                            phase_deadline = None;
                            mode = Mode::Data(DataReceiver::new(
                                usize::try_from(cfg.max_message_size).unwrap_or(usize::MAX),
                                cfg.max_text_line,
                            ));
                        }
                        Action::Close(r) => {
                            emit(sink, &r, &mut out);
                            close = true;
                        }
                        Action::StartTls(r) => {
                            emit(sink, &r, &mut out);
                            starttls = true;
                        }
                        Action::Bdat { size: 0, last } => {
                            close = finish_bdat(&mut session, sink, 0, last, &mut out).await;
                        }
                        Action::Bdat { size, last } => {
                            phase_deadline = None;
                            mode = Mode::Bdat {
                                remaining: size,
                                size,
                                last,
                            };
                        }
                        Action::Authenticate { user, pass } => {
                            let ok = match &cfg.users {
                                Some(db) => db.verify(user.clone(), pass).await,
                                None => false,
                            };
                            match session.auth_done(user, ok) {
                                Action::Close(r) => {
                                    emit(sink, &r, &mut out);
                                    close = true;
                                }
                                Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) => {
                                    emit(sink, &r, &mut out)
                                }
                                Action::Authenticate { .. } | Action::Bdat { .. } => {}
                            }
                        }
                    }
                }
                Mode::Bdat {
                    remaining,
                    size,
                    last,
                } => {
                    let n = (*remaining).min((buf.len() - pos) as u64) as usize;
                    session.bdat_chunk(&buf[pos..pos + n]);
                    pos += n;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let (size, last) = (*size, *last);
                        mode = Mode::Commands;
                        phase_deadline = None;
                        close = finish_bdat(&mut session, sink, size, last, &mut out).await;
                    }
                }
                Mode::Data(rx) => {
                    let (n, done) = rx.ingest(&buf[pos..]);
                    pos += n;
                    if !done {
                        continue;
                    }
                    phase_deadline = None;
                    let Mode::Data(rx) = std::mem::replace(&mut mode, Mode::Commands) else {
                        unreachable!("mode checked above")
                    };
                    let reply = match session.data_done(rx.finish()) {
                        Ok(msg) => Action::Reply(sink.accept(msg).await),
                        Err(action) => action,
                    };
                    match reply {
                        Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) => {
                            emit(sink, &r, &mut out)
                        }
                        Action::Authenticate { .. } | Action::Bdat { .. } => {}
                        Action::Close(r) => {
                            emit(sink, &r, &mut out);
                            close = true;
                        }
                    }
                }
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if starttls {
            // Pipelined plaintext after STARTTLS is dropped, never replayed
            // inside TLS (the STARTTLS command-injection defence).
            return Ok(End::StartTls);
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(End::Closed);
        }
        let now = std::time::Instant::now();
        let (per_read, phase) = match mode {
            Mode::Commands => (cfg.command_timeout, cfg.command_timeout),
            Mode::Data(_) | Mode::Bdat { .. } => (cfg.data_timeout, cfg.data_total_timeout),
        };
        let pending = !buf.is_empty() || !matches!(mode, Mode::Commands);
        // Shutting down: an idle session (between commands, nothing
        // buffered) is closed now; a busy one when it next becomes idle.
        let idle = !pending && !session.in_transaction();
        // (A dropped sender counts as shutdown: nobody can stop us later.)
        if idle && (*stop.borrow() || stop.has_changed().is_err()) {
            let r = Reply::new(421, "4.3.2", "service shutting down, try again later");
            stream.write_all(&r.to_bytes()).await?;
            let _ = stream.shutdown().await;
            return Ok(End::Closed);
        }
        if !pending {
            phase_deadline = None;
        } else if phase_deadline.is_none() {
            phase_deadline = now.checked_add(phase);
        }
        let wait = match phase_deadline {
            Some(d) => per_read.min(d.saturating_duration_since(now)),
            None => per_read,
        };
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
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
            Err(_) => {
                let r = Reply::new(421, "4.4.2", "timeout, closing connection");
                sink.refused(&r);
                stream.write_all(&r.to_bytes()).await?;
                return Ok(End::Closed);
            }
        }
    }
}
