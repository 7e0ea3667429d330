//! The admin HTTP endpoint (hyper): `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (the queue answers, the
//! listeners are bound, no back pressure) and the queue API
//! ([`crate::ops::queue_api`]). Loopback by default; anything else is 404.
//!
//! With `admin.token_file` set (mandatory off loopback), `/metrics` and
//! `/queue` need `Authorization: Bearer <token>` (401 otherwise, compared
//! in constant time); the health endpoints stay open for probes.

use crate::ops::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use postern_queue::Queue;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the handlers can see.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    /// Back-pressure level (0 none); not ready while it is set.
    pub pressure: Arc<std::sync::atomic::AtomicU8>,
    pub tracker: Arc<crate::ops::tracking::Tracker>,
    /// Bearer token for everything but the health endpoints.
    pub token: Option<String>,
}

/// Whether the request carries the token (no token configured: yes).
fn authorized(req: &Request<hyper::body::Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (
        req.method().as_str().to_string(),
        req.uri().path().to_string(),
    );
    let open = matches!(path.as_str(), "/healthz" | "/readyz");
    if !open && !authorized(&req, st.token.as_deref()) {
        let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n".into());
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(r);
    }
    if let Some((code, body)) =
        crate::ops::queue_api::handle(&st.queue, &st.tracker, &method, &path, req.uri().query())
    {
        let mut r = text(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), body);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    Ok(match path.as_str() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, st.metrics.render(&st.queue));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let _ = st.queue.next_due_ms();
            match st.pressure.load(std::sync::atomic::Ordering::Relaxed) {
                0 => text(StatusCode::OK, "ready\n".into()),
                n => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("back pressure level {n}: refusing new mail\n"),
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

/// Serves the admin endpoint until shutdown.
pub async fn serve(
    listener: TcpListener,
    st: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let st = st.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, st.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}
