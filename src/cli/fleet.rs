//! Taking a gateway out of a fleet: `postern drain` / `undrain` (the
//! running daemon stops taking mail: 421 to new connections, `/readyz`
//! 503, delivery goes on), and `postern queue transfer --to PEER`, which
//! hands its waiting messages to a peer gateway, through the daemon or,
//! with `--queue-dir`, straight from a queue directory no daemon holds (a
//! leftover volume). Progress is printed as it goes (`--json`: one object
//! per line).
//!
//! Exit codes: 0 done; 1 an error (no daemon, bad arguments, the queue
//! cannot be opened); 3 `drain --wait` timed out with mail still waiting,
//! or a transfer left messages behind (the peer refused them).

use super::escape_controls;
use crate::gateway::transfer::Progress;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `postern drain`: drain mode on; with `wait`, until nothing waits or
/// `timeout` passes.
pub async fn drain(
    admin: SocketAddr,
    token: Option<String>,
    on: bool,
    wait: bool,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = if on { "/drain" } else { "/undrain" };
    let body = super::queue::answered(
        super::queue::request(admin, token.as_deref(), "POST", path).await?,
    )?;
    let mut v: serde_json::Value = serde_json::from_str(&body)?;
    show_drain(&v, json);
    if !(on && wait) {
        return Ok(ExitCode::SUCCESS);
    }
    let end = Instant::now() + timeout;
    loop {
        let left = v["waiting"].as_u64().unwrap_or(0) + v["delivering"].as_u64().unwrap_or(0);
        if left == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= end {
            eprintln!("drain: {left} message(s) still waiting after {timeout:?}");
            return Ok(ExitCode::from(3));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body = super::queue::answered(
            super::queue::request(admin, token.as_deref(), "GET", "/drain").await?,
        )?;
        v = serde_json::from_str(&body)?;
        show_drain(&v, json);
    }
}

fn show_drain(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else {
        println!(
            "{}: {} waiting, {} delivering, {} held, {} quarantined",
            if v["draining"] == true {
                "draining"
            } else {
                "not draining"
            },
            v["waiting"],
            v["delivering"],
            v["held"],
            v["quarantine"]
        );
    }
}

fn show_progress(p: &Progress, json: bool) {
    if json {
        println!("{}", serde_json::to_string(p).unwrap_or_default());
    } else {
        println!(
            "transfer to {}: {} found, {} accepted, {} failed{} ({:.1} s)",
            escape_controls(&p.to),
            p.found,
            p.accepted,
            p.failed,
            if p.running { ", running" } else { "" },
            p.elapsed_ms as f64 / 1000.0
        );
        if !p.running {
            for e in &p.errors {
                println!("  {}", escape_controls(e));
            }
        }
    }
}

fn transfer_code(p: &Progress) -> ExitCode {
    if p.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `postern queue transfer` through the running daemon.
pub async fn transfer_via_daemon(
    admin: SocketAddr,
    token: Option<String>,
    req: &crate::gateway::transfer::Request,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut q = vec![format!("to={}", req.to.replace(':', "%3A"))];
    if let Some(d) = &req.domain {
        q.push(format!("domain={d}"));
    }
    if let Some(s) = &req.state {
        q.push(format!("state={s}"));
    }
    if req.quarantine {
        q.push("quarantine=1".into());
    }
    q.push(format!("concurrency={}", req.concurrency));
    let path = format!("/queue/transfer?{}", q.join("&"));
    let (code, body) = super::queue::request(admin, token.as_deref(), "POST", &path).await?;
    if code != 202 {
        super::queue::answered((code, body))?;
        anyhow::bail!("the daemon did not start the transfer (HTTP {code})");
    }
    let mut last_shown = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let body = super::queue::answered(
            super::queue::request(admin, token.as_deref(), "GET", "/queue/transfer").await?,
        )?;
        let p: Progress = serde_json::from_str(&body)?;
        if !p.running {
            show_progress(&p, json);
            return Ok(transfer_code(&p));
        }
        if last_shown.elapsed() >= Duration::from_secs(1) {
            show_progress(&p, json);
            last_shown = Instant::now();
        }
    }
}

/// `postern queue transfer --queue-dir DIR`: straight from a queue no
/// daemon holds (a leftover volume).
pub async fn transfer_offline(
    cfg: &crate::config::Config,
    dir: &std::path::Path,
    req: &crate::gateway::transfer::Request,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let opts = postern_queue::QueueOptions {
        path: dir.to_path_buf(),
        cache_bytes: cfg.queue.cache_size.0,
        segment_size: postern_queue::DEFAULT_SEGMENT_SIZE,
    };
    let (queue, _recovery) = tokio::task::spawn_blocking(move || postern_queue::Queue::open(&opts))
        .await?
        .map_err(|e| anyhow::anyhow!("cannot open the queue at {}: {e}", dir.display()))?;
    let conversion = crate::content::conversion::Conversion::from_config(cfg)?;
    let metrics = std::sync::Arc::new(crate::ops::metrics::Metrics::new()?);
    let deliverer = crate::gateway::wiring::peer_deliverer(cfg, &conversion, &metrics, &req.to)?;
    let last = std::sync::Mutex::new(Instant::now());
    let report = |p: &Progress| {
        let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
        if p.running && l.elapsed() >= Duration::from_secs(1) {
            show_progress(p, json);
            *l = Instant::now();
        }
    };
    let done = crate::gateway::transfer::transfer(
        &queue,
        &deliverer,
        req,
        &cfg.server.hostname,
        None,
        None,
        &report,
    )
    .await;
    show_progress(&done, json);
    queue
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing the queue: {e}"))?;
    Ok(transfer_code(&done))
}
