//! The admin HTTP endpoint (hyper): `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (the queue answers and the
//! listeners are bound) and the queue API ([`crate::queue_api`]). Loopback
//! by default; anything else is 404.

use crate::metrics::Metrics;
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
    if let Some((code, body)) =
        crate::queue_api::handle(&st.queue, &method, &path, req.uri().query())
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
