//! The admin HTTP endpoint (hyper): `/metrics` (Prometheus text format),
//! `/healthz` (the process answers), `/readyz` (the queue answers, the
//! listeners are bound, no back pressure) and the queue API
//! ([`crate::ops::queue_api`]). Loopback by default; anything else is 404.
//!
//! Who may do what ([`AdminAccess`], from `[admin]`): with `token_file` set
//! (mandatory off loopback), `/metrics` and `/queue` need
//! `Authorization: Bearer <token>` (401 otherwise, compared in constant
//! time). Without it the gateway generated a token beside the queue:
//! reads stay open, POST and DELETE need that token.
//!
//! A page in a browser must not reach the endpoint (CSRF, DNS rebinding):
//! without `token_file` the Host header must name the endpoint itself (its
//! bound address; `localhost`, `127.0.0.1` or `[::1]` with its port on
//! loopback), and always a request from another site (`Origin` other than
//! `http://<Host>`, `Sec-Fetch-Site: cross-site|same-site`) gets 403 and a
//! POST or DELETE with a form's content type 415 ([`refusal`]). The health
//! endpoints stay open whatever the request, for probes.
//!
//! Bounded: at most `admin.max_connections` connections at once, and a
//! client has `admin.header_timeout` to send each request's headers (an
//! idle keep-alive connection too). Clients that hold every slot must not
//! make the health probes fail (an orchestrator would restart a healthy
//! gateway): past the cap, [`PROBE_RESERVE`] more connections are served
//! the health endpoints only, one request each with [`PROBE_HEADER_TIMEOUT`]
//! to send it (anything else: 503). Past that too, a connection is closed
//! at once.

use crate::config::AdminAccess;
use crate::ops::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use postern_queue::Queue;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Connections past `admin.max_connections` still served, for the health
/// endpoints only.
pub const PROBE_RESERVE: usize = 8;

/// How long a connection of the probe reserve has to send its request.
pub const PROBE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the handlers can see.
pub struct AdminState {
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The queue the queue API reads and acts on.
    pub queue: Queue,
    /// Back-pressure level (0 none); not ready while it is set.
    pub pressure: Arc<std::sync::atomic::AtomicU8>,
    /// Where admin actions are recorded (`"by": "admin"`).
    pub tracker: Arc<crate::ops::tracking::Tracker>,
    /// How requests are admitted: the bearer token and what it guards, the
    /// connection cap and the header timeout.
    pub token: AdminAccess,
    /// `GET /tls-policy/<domain>`: what outbound TLS applies, worked out
    /// by the running deliverer (with its MTA-STS cache).
    pub explain: Option<Explain>,
    /// Drain mode: `POST /drain` sets it, `POST /undrain` clears it; while
    /// set, new SMTP connections get 421 and `/readyz` 503.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// `POST /queue/transfer` starts a hand-over to a peer; `GET
    /// /queue/transfer` says how it goes.
    pub transfer: Option<Arc<crate::gateway::transfer::Transfers>>,
}

/// Works out a destination's TLS policy as JSON.
pub type Explain = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>
        + Send
        + Sync,
>;

/// The Host values that name the endpoint bound at `bound`: its address,
/// and on a loopback or unspecified address the loopback names with its
/// port (lower case; without the port too when it is 80, as clients omit
/// the default port).
fn own_hosts(bound: SocketAddr) -> Vec<String> {
    let port = bound.port();
    let mut hosts = vec![bound.to_string().to_ascii_lowercase()];
    if bound.ip().is_loopback() || bound.ip().is_unspecified() {
        hosts.extend([
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]);
    }
    if port == 80 {
        let bare: Vec<String> = hosts
            .iter()
            .filter_map(|h| h.strip_suffix(":80").map(String::from))
            .collect();
        hosts.extend(bare);
    }
    hosts
}

/// POST, DELETE and anything else that is not a read.
fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// The one Host header, when there is exactly one and it is text.
fn host_header(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::HOST).iter();
    match (all.next(), all.next()) {
        (Some(h), None) => h.to_str().ok().map(str::trim),
        _ => None,
    }
}

/// A content type an HTML form sends without a CORS preflight (an
/// unreadable one counts as such).
fn form_content_type(value: &HeaderValue) -> bool {
    let Ok(v) = value.to_str() else { return true };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
    )
}

/// Why a request is refused before any handler sees it, `None` to let it
/// through: a Host that is not one of `hosts` when `check_host` (DNS
/// rebinding: a page whose name now resolves to us; a missing Host too),
/// a request from another site (`Origin`, `Sec-Fetch-Site`: cross-site
/// request forgery), a mutating request with a form's content type.
fn refusal<B>(
    req: &Request<B>,
    hosts: &[String],
    check_host: bool,
) -> Option<(StatusCode, &'static str)> {
    let headers = req.headers();
    let host = host_header(headers);
    let ours = |h: &str| hosts.iter().any(|o| o.eq_ignore_ascii_case(h));
    if check_host {
        if !host.is_some_and(ours) {
            return Some((StatusCode::FORBIDDEN, "Host must name this admin endpoint"));
        }
        if req.uri().authority().is_some_and(|a| !ours(a.as_str())) {
            return Some((
                StatusCode::FORBIDDEN,
                "the request target does not name this admin endpoint",
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = host.is_some_and(|h| {
            origin
                .to_str()
                .is_ok_and(|o| o.trim().eq_ignore_ascii_case(&format!("http://{h}")))
        });
        if !same {
            return Some((StatusCode::FORBIDDEN, "cross-origin requests are refused"));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("cross-site").trim();
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Some((StatusCode::FORBIDDEN, "cross-site requests are refused"));
        }
    }
    if mutating(req.method())
        && headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .any(form_content_type)
    {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "form content types are refused: send no body",
        ));
    }
    None
}

/// Whether the request carries `token` as `Authorization: Bearer`.
fn authorized<B>(req: &Request<B>, token: &str) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
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

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = text(status, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Refuses, authenticates, then routes one request.
/// On a connection of the probe reserve (`probe_only`) only the health
/// endpoints are served.
async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<AdminState>,
    hosts: Arc<Vec<String>>,
    probe_only: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (
        req.method().as_str().to_string(),
        req.uri().path().to_string(),
    );
    let open = matches!(path.as_str(), "/healthz" | "/readyz");
    if probe_only && !open {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin.max_connections reached: only /healthz and /readyz are served\n".into(),
        ));
    }
    if !open {
        if let Some((status, why)) = refusal(&req, &hosts, !st.token.configured) {
            let body = serde_json::json!({ "error": why }).to_string();
            return Ok(json(status, body));
        }
        let needs_token = st.token.configured || mutating(req.method());
        if needs_token && !authorized(&req, &st.token.token) {
            let mut r = text(StatusCode::UNAUTHORIZED, "bearer token required\n".into());
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    }
    if let Some(answer) = drain_api(&st, &method, &path) {
        return Ok(answer);
    }
    if path == "/queue/transfer" {
        if let Some(t) = &st.transfer {
            let query = req.uri().query().map(str::to_string);
            let (code, body) = t.api(&method, query.as_deref());
            return Ok(json(
                StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
                body,
            ));
        }
    }
    if let (Some(domain), "GET", Some(explain)) = (
        path.strip_prefix("/tls-policy/"),
        method.as_str(),
        &st.explain,
    ) {
        let v = explain(domain.to_ascii_lowercase()).await;
        return Ok(json(StatusCode::OK, v.to_string()));
    }
    // Listing or acting on the queue walks it: on a blocking thread, never
    // on a runtime thread that sessions and deliveries share.
    let query = req.uri().query().map(str::to_string);
    let api = {
        let (st, method, path) = (st.clone(), method.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            crate::ops::queue_api::handle(&st.queue, &st.tracker, &method, &path, query.as_deref())
        })
        .await
        .unwrap_or_else(|e| {
            Some((
                500,
                serde_json::json!({ "error": format!("queue API failed: {e}") }).to_string(),
            ))
        })
    };
    if let Some((code, body)) = api {
        return Ok(json(
            StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
            body,
        ));
    }
    Ok(match path.as_str() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, st.metrics.render(&st.queue));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if st.draining.load(std::sync::atomic::Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: not taking new mail\n".into(),
        ),
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

/// `GET /drain` (the state and what is left to deliver), `POST /drain`,
/// `POST /undrain`.
fn drain_api(st: &AdminState, method: &str, path: &str) -> Option<Response<Full<Bytes>>> {
    use std::sync::atomic::Ordering;
    let set = match (method, path) {
        ("GET", "/drain") => None,
        ("POST", "/drain") => Some(true),
        ("POST", "/undrain") => Some(false),
        _ => return None,
    };
    if let Some(on) = set {
        let was = st.draining.swap(on, Ordering::SeqCst);
        st.metrics.process.draining.set(i64::from(on));
        if was != on {
            tracing::warn!(
                draining = on,
                "drain mode {}",
                if on {
                    "on: new connections get 421"
                } else {
                    "off"
                }
            );
        }
    }
    let c = st.queue.counts();
    let body = serde_json::json!({
        "draining": st.draining.load(Ordering::SeqCst),
        "waiting": c.ready_or_deferred,
        "delivering": c.leased,
        "held": c.held,
        "quarantine": c.quarantine,
    });
    Some(json(StatusCode::OK, body.to_string()))
}

/// Serves the admin endpoint until shutdown.
pub async fn serve(
    listener: TcpListener,
    st: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The Host names this endpoint answers to, from the address actually
    // bound (the configured port may be 0). Unknown: every Host is refused.
    let hosts = Arc::new(match listener.local_addr() {
        Ok(bound) => own_hosts(bound),
        Err(e) => {
            tracing::warn!(error = %e, "admin endpoint: bound address unknown; refusing every Host");
            Vec::new()
        }
    });
    // One permit per open connection (`admin.max_connections`), then the
    // probe reserve.
    let cap = st.token.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(cap));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
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
        let (permit, probe_only) = match slots.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => {
                match reserve.clone().try_acquire_owned() {
                    Ok(p) => (p, true),
                    Err(_) => {
                        tracing::debug!("admin.max_connections and the probe reserve reached: connection closed");
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let (st, hosts) = (st.clone(), hosts.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = match probe_only {
                true => PROBE_HEADER_TIMEOUT.min(st.token.header_timeout),
                false => st.token.header_timeout,
            };
            let svc = service_fn(move |req| handle(req, st.clone(), hosts.clone(), probe_only));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .keep_alive(!probe_only);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn own_hosts_are_the_bound_address_and_loopback_names() {
        let h = own_hosts("127.0.0.1:8025".parse().unwrap());
        for ok in ["127.0.0.1:8025", "localhost:8025", "[::1]:8025"] {
            assert!(h.iter().any(|x| x == ok), "{ok}: {h:?}");
        }
        assert!(!h.iter().any(|x| x == "127.0.0.1"));
        let h = own_hosts("10.0.0.5:8025".parse().unwrap());
        assert_eq!(h, ["10.0.0.5:8025"]);
        let h = own_hosts("[::]:80".parse().unwrap());
        for ok in ["[::]:80", "localhost:80", "localhost", "[::1]", "127.0.0.1"] {
            assert!(h.iter().any(|x| x == ok), "{ok}: {h:?}");
        }
    }

    #[test]
    fn rebinding_and_cross_site_requests_are_refused() {
        let hosts = own_hosts("127.0.0.1:8025".parse().unwrap());
        let refused = |r: &Request<()>, check: bool| refusal(r, &hosts, check).map(|(s, _)| s);
        let host = ("host", "127.0.0.1:8025");
        // The CLI's request, curl's, a same-origin page's.
        assert_eq!(refused(&req("GET", "/queue", &[host]), true), None);
        assert_eq!(
            refused(&req("GET", "/queue", &[("host", "LocalHost:8025")]), true),
            None
        );
        let same = [
            host,
            ("origin", "http://127.0.0.1:8025"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(refused(&req("POST", "/queue/hold", &same), true), None);
        assert_eq!(
            refused(
                &req(
                    "POST",
                    "/queue/hold",
                    &[host, ("content-type", "application/json")]
                ),
                true
            ),
            None
        );
        // DNS rebinding: another name, another port, none at all.
        let forbidden = Some(StatusCode::FORBIDDEN);
        for h in ["evil.example:8025", "127.0.0.1:9999", "127.0.0.1"] {
            assert_eq!(
                refused(&req("GET", "/queue", &[("host", h)]), true),
                forbidden
            );
        }
        assert_eq!(refused(&req("GET", "/queue", &[]), true), forbidden);
        assert_eq!(
            refused(&req("GET", "http://evil.example/queue", &[host]), true),
            forbidden
        );
        // Not checked when a configured token guards everything.
        assert_eq!(
            refused(
                &req("GET", "/queue", &[("host", "postern-admin:8025")]),
                false
            ),
            None
        );
        // Cross-site: a foreign Origin (even with a token configured),
        // Sec-Fetch-Site.
        for extra in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "https://127.0.0.1:8025"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let r = req("POST", "/queue/hold", &[host, extra]);
            assert_eq!(refused(&r, true), forbidden, "{extra:?}");
            assert_eq!(refused(&r, false), forbidden, "{extra:?}");
        }
        // What an HTML form can send without a preflight.
        for ct in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "Text/Plain;charset=UTF-8",
        ] {
            let r = req("POST", "/queue/hold", &[host, ("content-type", ct)]);
            assert_eq!(refused(&r, true), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            let r = req("DELETE", "/queue/x", &[host, ("content-type", ct)]);
            assert_eq!(refused(&r, false), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            assert_eq!(
                refused(&req("GET", "/queue", &[host, ("content-type", ct)]), true),
                None
            );
        }
    }

    #[test]
    fn bearer_token_is_compared_whole() {
        let with = |v: &str| req("POST", "/queue/hold", &[("authorization", v)]);
        assert!(authorized(&with("Bearer s3cret"), "s3cret"));
        assert!(!authorized(&with("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&with("s3cret"), "s3cret"));
        assert!(!authorized(&req("POST", "/", &[]), "s3cret"));
        assert!(mutating(&Method::POST) && mutating(&Method::DELETE));
        assert!(!mutating(&Method::GET) && !mutating(&Method::HEAD));
    }
}
