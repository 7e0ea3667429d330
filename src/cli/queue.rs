//! `postern queue ...`: the queue CLI, a client of the running daemon's
//! admin endpoint (found through the configuration file's `[admin] listen`,
//! with its `token_file`, else the token the daemon generated beside its
//! queue), in the spirit of postqueue/postsuper and qshape. What it prints
//! passes through [`super::escape_controls`] (tables) or
//! [`super::escape_json_controls`] (JSON): queue entries hold text clients
//! chose.

use super::{escape_controls, escape_json_controls};
use crate::ops::queue_api::{QueueSummary, Summary, AGE_BUCKETS_MIN};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Which messages: `--state`, `--domain`, `--older-than`.
#[derive(Args, Default)]
pub struct FilterArgs {
    /// ready, deferred, leased, held or quarantine.
    #[arg(long)]
    state: Option<String>,
    /// Messages with a recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Messages received longer ago than this (e.g. 30m, 1h, 2d).
    #[arg(long)]
    older_than: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("domain", &self.domain),
            ("older_than", &self.older_than),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        match q.is_empty() {
            true => String::new(),
            false => format!("?{}", q.join("&")),
        }
    }
}

/// Percent-encodes what is not safe in a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One message, or `--all` (matching the filters).
#[derive(Args)]
pub struct Target {
    /// Queue ID.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every waiting (ready or deferred) message matching the filters.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List messages (filters: --state, --domain, --older-than), in
    /// queue-id order, fetched a page at a time and printed as they come.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many messages (default: all).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this queue id (the last one of a previous listing).
        #[arg(long)]
        after: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state, and pending recipients by domain and age (like qshape).
    Summary {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show one message's record as JSON.
    Show { id: String },
    /// Release a held or quarantined message (crash count reset; due now).
    Release { id: String },
    /// Hold a waiting message (or --all matching) until it is released.
    Hold(Target),
    /// Deliver a waiting message (or --all matching) now.
    Retry(Target),
    /// Delete a message from the queue.
    Delete { id: String },
    /// Hand every waiting message (ready, deferred, held; quarantined with
    /// --quarantine) to a peer gateway over SMTP, with its history; a
    /// message leaves this queue after the peer's 250. Through the running
    /// daemon, or with --queue-dir straight from a queue directory no
    /// daemon holds (a leftover volume). Exit 0 when all went, 3 when the
    /// peer refused some (they stay), 1 on errors.
    Transfer {
        /// The peer gateway, HOST[:PORT] (port 25 by default).
        #[arg(long)]
        to: String,
        /// Only messages with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only this state (ready, deferred, held, quarantine).
        #[arg(long)]
        state: Option<String>,
        /// Quarantined messages too.
        #[arg(long)]
        quarantine: bool,
        /// Work on this queue directory instead of through the daemon.
        #[arg(long)]
        queue_dir: Option<std::path::PathBuf>,
        /// Messages relayed at once (default: fleet.transfer_concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// One JSON object per progress line.
        #[arg(long)]
        json: bool,
    },
    /// Save every intact message body of a queue directory that cannot be
    /// opened (moved aside) as DIR_OUT/<id>.eml, reading its body segments
    /// directly; the gateway need not run. Exit 0 when nothing was damaged,
    /// 2 when damaged stretches were skipped (listed).
    Salvage {
        /// The damaged queue directory (its `bodies/` is read).
        queue_dir: std::path::PathBuf,
        /// Where the .eml files go (created).
        out_dir: std::path::PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn request(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("cannot reach the admin endpoint at {admin}; is postern running?")
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, admin.to_string());
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a 200 answer; otherwise an error with the API's `error`
/// text (or the whole body when it has none).
pub(crate) fn answered((status, body): (u16, String)) -> anyhow::Result<String> {
    if status == 200 {
        return Ok(body);
    }
    let msg = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or(body);
    bail!("{}", msg.trim_end())
}

/// `postern health`: 0 when `path` answers 200.
pub async fn check(admin: SocketAddr, token: Option<String>, path: &str) -> anyhow::Result<()> {
    let (status, body) = request(admin, token.as_deref(), "GET", path).await?;
    if status != 200 {
        bail!("{path}: {status} {}", body.trim_end());
    }
    print!("{body}");
    Ok(())
}

/// The method and path of one CLI command; `None` for a command that does
/// not talk to the daemon (`salvage`).
fn route(cmd: &QueueCmd) -> Option<(&'static str, String)> {
    let one_or_all = |t: &Target, action: &str| match &t.id {
        Some(id) if !t.all => format!("/queue/{id}/{action}"),
        _ => format!("/queue/{action}{}", t.filter.query()),
    };
    Some(match cmd {
        QueueCmd::List { filter, .. } => ("GET", format!("/queue{}", filter.query())),
        QueueCmd::Summary { filter, .. } => ("GET", format!("/queue/summary{}", filter.query())),
        QueueCmd::Show { id } => ("GET", format!("/queue/{id}")),
        QueueCmd::Release { id } => ("POST", format!("/queue/{id}/release")),
        QueueCmd::Hold(t) => ("POST", one_or_all(t, "hold")),
        QueueCmd::Retry(t) => ("POST", one_or_all(t, "retry")),
        QueueCmd::Delete { id } => ("DELETE", format!("/queue/{id}")),
        QueueCmd::Salvage { .. } | QueueCmd::Transfer { .. } => return None,
    })
}

pub async fn run(admin: SocketAddr, token: Option<String>, cmd: QueueCmd) -> anyhow::Result<()> {
    if let QueueCmd::List {
        filter,
        limit,
        after,
        json,
    } = &cmd
    {
        return list(
            admin,
            token.as_deref(),
            filter,
            *limit,
            after.clone(),
            *json,
        )
        .await;
    }
    let Some((method, path)) = route(&cmd) else {
        anyhow::bail!("this command reads the queue directory itself (cli::queue_command)");
    };
    let body = answered(request(admin, token.as_deref(), method, &path).await?)?;
    match cmd {
        QueueCmd::Summary { json: false, .. } => print_summary(&body)?,
        QueueCmd::Hold(Target { all: true, .. }) | QueueCmd::Retry(Target { all: true, .. }) => {
            let v: serde_json::Value = serde_json::from_str(&body)?;
            println!(
                "{} message(s) {}",
                v["count"],
                v["action"].as_str().unwrap_or("")
            );
        }
        QueueCmd::Release { .. } | QueueCmd::Hold(_) | QueueCmd::Retry(_) => {
            let s: Summary = serde_json::from_str(&body)?;
            println!(
                "{}",
                escape_controls(&format!("{} is now {}", s.id, s.state))
            );
        }
        QueueCmd::Delete { id } => println!("{} deleted", escape_controls(&id)),
        _ => println!("{}", escape_json_controls(&body)),
    }
    Ok(())
}

fn print_summary(body: &str) -> anyhow::Result<()> {
    let s: QueueSummary = serde_json::from_str(body)?;
    let states: Vec<String> = s.states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let states = format!("{} message(s): {}", s.messages, states.join(", "));
    println!("{}", escape_controls(&states));
    let mut head = format!("{:>32} {:>6}", "pending recipients by age (min)", "T");
    for b in AGE_BUCKETS_MIN {
        head.push_str(&format!(" {b:>5}"));
    }
    head.push_str(&format!(" {:>5}", "more"));
    println!("{head}");
    let mut total = vec![0u64; AGE_BUCKETS_MIN.len() + 1];
    for row in &s.domains {
        for (t, n) in total.iter_mut().zip(&row.ages) {
            *t += n;
        }
    }
    let line = |name: &str, t: u64, ages: &[u64]| {
        let mut l = format!("{name:>32} {t:>6}");
        for n in ages {
            l.push_str(&format!(" {n:>5}"));
        }
        l
    };
    println!("{}", line("TOTAL", total.iter().sum(), &total));
    for row in &s.domains {
        println!(
            "{}",
            escape_controls(&line(&row.domain, row.total, &row.ages))
        );
    }
    Ok(())
}

/// Messages per request of `queue list` (the server's default page).
const PAGE: usize = crate::ops::queue_api::DEFAULT_PAGE;

/// `queue list`: pages of [`PAGE`] (`?limit=&after=`), each printed as it
/// arrives, so a listing of a million messages holds one page in memory.
async fn list(
    admin: SocketAddr,
    token: Option<&str>,
    filter: &FilterArgs,
    limit: Option<usize>,
    mut after: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let base = filter.query();
    let sep = if base.is_empty() { '?' } else { '&' };
    let mut left = limit.unwrap_or(usize::MAX);
    let mut shown = 0usize;
    if json {
        print!("[");
    } else {
        println!(
            "{:<24} {:<10} {:>7} {:>4} {:>3} {:<28} {:<28} reason",
            "id", "state", "age", "try", "crs", "from", "to"
        );
    }
    while left > 0 {
        let want = left.min(PAGE);
        let mut path = format!("/queue{base}{sep}limit={want}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        let body = answered(request(admin, token, "GET", &path).await?)?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        for row in &rows {
            if json {
                let sep = if shown == 0 { "" } else { "," };
                print!(
                    "{sep}{}",
                    escape_json_controls(&serde_json::to_string_pretty(row)?)
                );
            } else {
                let r: Summary = serde_json::from_value(row.clone())?;
                println!("{}", escape_controls(&table_line(&r)));
            }
            shown += 1;
        }
        left -= rows.len();
        match rows.last().and_then(|r| r["id"].as_str()) {
            Some(id) if rows.len() == want => after = Some(id.to_string()),
            _ => break,
        }
    }
    if json {
        println!("]");
    } else {
        println!("{shown} message(s)");
    }
    Ok(())
}

/// One row of the `queue list` table.
fn table_line(r: &Summary) -> String {
    let reason = r
        .quarantine
        .as_ref()
        .map(|q| format!("{}: {}", q.stage, q.reason))
        .or_else(|| r.last_error.clone())
        .unwrap_or_default();
    format!(
        "{:<24} {:<10} {:>6}s {:>4} {:>3} {:<28} {:<28} {}",
        r.id,
        r.state,
        r.age_secs,
        r.attempts,
        r.crashes,
        if r.from.is_empty() { "<>" } else { &r.from },
        r.to.join(","),
        reason
    )
}
