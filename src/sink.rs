//! The listener's [`MessageSink`]: the queue. `250` only after the message
//! and envelope are flushed to disk; a failed write is `451`, so the client
//! keeps responsibility for the message.

use crate::metrics::Metrics;
use postern_listener::{MessageSink, ReceivedMessage, Reply};
use postern_queue::Queue;
use std::sync::Arc;

pub struct QueueSink {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
}

impl MessageSink for QueueSink {
    async fn accept(&self, msg: ReceivedMessage) -> Reply {
        let id = msg.envelope.id;
        let size = msg.body.len();
        let rcpts = msg.envelope.recipients.len();
        let from = msg
            .envelope
            .sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match self.queue.enqueue(msg.envelope, &msg.body).await {
            Ok(()) => {
                self.metrics.received.inc();
                self.metrics.message_size.observe(size as f64);
                tracing::info!(%id, %from, rcpts, size, "queued");
                Reply::new(250, "2.0.0", format!("queued as {id}"))
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "queue write failed; message refused");
                Reply::new(451, "4.3.0", "queue write failed, try again later")
            }
        }
    }
}
