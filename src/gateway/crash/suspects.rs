//! Charging the messages that were in flight when the gateway died.
//!
//! `postern run` passes them in the environment ([`crate::run::handoff`]:
//! space-separated keys and the cause of death). Before the gateway
//! starts any work, each suspect is charged one crash: a queued message
//! (`q:<id>` while read back, `d:<id>` while delivered) reaching `poison_threshold` is quarantined at once, so even a
//! poison message that is the first one read from the queue cannot cause a
//! crash loop; below the threshold it has `crashes > 0` and will be
//! delivered alone. Content hashes (`r:<hash>`) are charged in the suspects
//! table that intake consults.

use crate::gateway::settle::{charge_crash, Crash};
use crate::ops::metrics::Metrics;
use postern_core::QueueId;
use postern_queue::{Queue, State};

/// Charges every suspect named in the environment; returns how many.
pub async fn charge_from_env(queue: &Queue, threshold: u32, metrics: &Metrics) -> usize {
    let Some((list, death)) = crate::run::handoff::suspects_from_env() else {
        return 0;
    };
    let mut n = 0;
    for key in list.split_whitespace() {
        n += 1;
        if let Some(id) = key.strip_prefix("d:").and_then(QueueId::parse) {
            charge_message(queue, id, "delivery", threshold, &death, metrics);
        } else if let Some(id) = key.strip_prefix("q:").and_then(QueueId::parse) {
            charge_message(queue, id, "queue", threshold, &death, metrics);
        } else if let Some(h) = key
            .strip_prefix("r:")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            metrics
                .process
                .crashes
                .with_label_values(&["receive", "3"])
                .inc();
            match queue.charge_suspect(h, &format!("receive: gateway {death}")) {
                Ok(c) => {
                    tracing::error!(content = %format!("{h:016x}"), crashes = c, %death, "receive-stage suspect charged")
                }
                Err(e) => tracing::error!(error = %e, "cannot charge a content suspect"),
            }
        }
    }
    if let Err(e) = queue.flush().await {
        tracing::error!(error = %e, "cannot flush suspect charges");
    }
    n
}

fn charge_message(
    queue: &Queue,
    id: QueueId,
    stage: &str,
    threshold: u32,
    death: &str,
    metrics: &Metrics,
) {
    metrics
        .process
        .crashes
        .with_label_values(&[stage, "3"])
        .inc();
    let reason = format!("gateway {death} while this message was in stage {stage}");
    let crash = Crash {
        stage,
        reason: &reason,
        last_error: &reason,
    };
    let now = postern_core::now_ms();
    let res = queue.update(id, &|r| {
        charge_crash(r, crash, threshold, now, None);
        Ok(())
    });
    match res {
        Ok(r) if r.state == State::Quarantine => {
            metrics
                .messages
                .quarantined
                .with_label_values(&[stage])
                .inc();
            tracing::error!(%id, crashes = r.crashes, %reason, "suspect quarantined");
            crate::run::eventlog::quarantined(&id.to_string(), stage, &reason);
        }
        Ok(r) => {
            tracing::error!(%id, crashes = r.crashes, %reason, "suspect charged; will run alone")
        }
        Err(e) => tracing::warn!(%id, error = %e, "suspect not in the queue"),
    }
}
