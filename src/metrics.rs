//! The Prometheus registry and Postern's metrics (names prefixed `postern_`).
//!
//! [`Metrics::render`] produces the text exposition format for `/metrics`,
//! refreshing the queue gauges from the queue first.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub received: IntCounter,
    pub delivered: IntCounterVec,
    pub deferred: IntCounter,
    pub bounced: IntCounter,
    pub dsn_sent: IntCounter,
    pub queue_size: IntGaugeVec,
    pub message_size: Histogram,
    pub delivery_latency: Histogram,
    pub crashes: IntCounterVec,
    pub quarantined: IntCounterVec,
    pub worker_restarts: IntCounterVec,
    pub gateway_restarts: IntCounter,
    pub back_pressure: prometheus::IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let received = IntCounter::new(
            "postern_messages_received_total",
            "Messages accepted and queued (250 sent).",
        )?;
        let delivered = IntCounterVec::new(
            Opts::new(
                "postern_recipients_delivered_total",
                "Recipients delivered.",
            ),
            &["route"],
        )?;
        let deferred = IntCounter::new(
            "postern_recipients_deferred_total",
            "Recipient delivery attempts that failed temporarily.",
        )?;
        let bounced = IntCounter::new(
            "postern_recipients_bounced_total",
            "Recipients that failed permanently or expired.",
        )?;
        let dsn_sent = IntCounter::new("postern_dsn_generated_total", "DSNs generated.")?;
        let queue_size = IntGaugeVec::new(
            Opts::new("postern_queue_messages", "Messages in the queue by state."),
            &["state"],
        )?;
        let message_size = Histogram::with_opts(
            HistogramOpts::new("postern_message_size_bytes", "Size of accepted messages.")
                .buckets(prometheus::exponential_buckets(1024.0, 4.0, 9)?),
        )?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "postern_delivery_latency_seconds",
                "Time from acceptance to delivery.",
            )
            .buckets(prometheus::exponential_buckets(0.005, 4.0, 10)?),
        )?;
        let crashes = IntCounterVec::new(
            Opts::new(
                "postern_crashes_total",
                "Crashes caught, by stage and level.",
            ),
            &["stage", "level"],
        )?;
        let quarantined = IntCounterVec::new(
            Opts::new(
                "postern_messages_quarantined_total",
                "Messages put in quarantine, by the stage that failed.",
            ),
            &["stage"],
        )?;
        let worker_restarts = IntCounterVec::new(
            Opts::new(
                "postern_worker_restarts_total",
                "Worker processes replaced after dying or overrunning.",
            ),
            &["kind"],
        )?;
        let gateway_restarts = IntCounter::new(
            "postern_gateway_restarts_total",
            "Times the supervisor restarted the gateway process.",
        )?;
        let back_pressure = prometheus::IntGauge::new(
            "postern_back_pressure",
            "Back-pressure level: 0 none, 1 refusing untrusted clients, 2 refusing all.",
        )?;
        for c in [
            Box::new(received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(delivered.clone()),
            Box::new(deferred.clone()),
            Box::new(bounced.clone()),
            Box::new(dsn_sent.clone()),
            Box::new(queue_size.clone()),
            Box::new(message_size.clone()),
            Box::new(delivery_latency.clone()),
            Box::new(crashes.clone()),
            Box::new(quarantined.clone()),
            Box::new(worker_restarts.clone()),
            Box::new(gateway_restarts.clone()),
            Box::new(back_pressure.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            received,
            delivered,
            deferred,
            bounced,
            dsn_sent,
            queue_size,
            message_size,
            delivery_latency,
            crashes,
            quarantined,
            worker_restarts,
            gateway_restarts,
            back_pressure,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self, queue: &postern_queue::Queue) -> String {
        let c = queue.counts();
        for (state, n) in [
            ("due", c.ready_or_deferred),
            ("leased", c.leased),
            ("held", c.held),
            ("quarantine", c.quarantine),
        ] {
            self.queue_size.with_label_values(&[state]).set(n as i64);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
