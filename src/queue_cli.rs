//! `postern queue ...`: the queue CLI, a client of the running daemon's
//! admin endpoint (found through the configuration file's `[admin] listen`).

use crate::queue_api::Summary;
use anyhow::{bail, Context};
use clap::Subcommand;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

#[derive(Subcommand)]
pub enum QueueCmd {
    /// List messages (all, or in one state: ready, deferred, leased, held, quarantine).
    List {
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's record as JSON.
    Show { id: String },
    /// Release a held or quarantined message (crash count reset; due now).
    Release { id: String },
    /// Hold a waiting message until it is released.
    Hold { id: String },
    /// Delete a message from the queue.
    Delete { id: String },
}

async fn request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("cannot reach the admin endpoint at {admin}; is postern running?")
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub async fn run(admin: SocketAddr, cmd: QueueCmd) -> anyhow::Result<()> {
    let (method, path) = match &cmd {
        QueueCmd::List { state, .. } => (
            "GET",
            match state {
                Some(s) => format!("/queue?state={s}"),
                None => "/queue".into(),
            },
        ),
        QueueCmd::Show { id } => ("GET", format!("/queue/{id}")),
        QueueCmd::Release { id } => ("POST", format!("/queue/{id}/release")),
        QueueCmd::Hold { id } => ("POST", format!("/queue/{id}/hold")),
        QueueCmd::Delete { id } => ("DELETE", format!("/queue/{id}")),
    };
    let (status, body) = request(admin, method, &path).await?;
    if status != 200 {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or(body);
        bail!("{msg}");
    }
    match cmd {
        QueueCmd::List { json: false, .. } => print_table(&body)?,
        QueueCmd::Release { .. } | QueueCmd::Hold { .. } => {
            let s: Summary = serde_json::from_str(&body)?;
            println!("{} is now {}", s.id, s.state);
        }
        QueueCmd::Delete { id } => println!("{id} deleted"),
        _ => println!("{body}"),
    }
    Ok(())
}

fn print_table(body: &str) -> anyhow::Result<()> {
    let rows: Vec<Summary> = serde_json::from_str(body)?;
    println!(
        "{:<24} {:<10} {:>7} {:>4} {:>3} {:<28} {:<28} reason",
        "id", "state", "age", "try", "crs", "from", "to"
    );
    for r in &rows {
        let reason = r
            .quarantine
            .as_ref()
            .map(|q| format!("{}: {}", q.stage, q.reason))
            .or_else(|| r.last_error.clone())
            .unwrap_or_default();
        println!(
            "{:<24} {:<10} {:>6}s {:>4} {:>3} {:<28} {:<28} {}",
            r.id,
            r.state,
            r.age_secs,
            r.attempts,
            r.crashes,
            if r.from.is_empty() { "<>" } else { &r.from },
            r.to.join(","),
            reason
        );
    }
    println!("{} message(s)", rows.len());
    Ok(())
}
