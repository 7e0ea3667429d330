//! The Prometheus registry and Postern's metrics (names prefixed `postern_`,
//! counters end in `_total`, units in the name, bounded label values).
//!
//! [`Metrics::render`] produces the text exposition format for `/metrics`,
//! refreshing the queue gauges from the queue first. Label vocabularies:
//! `listener` smtp|smtps|submission; `reason` (SMTP refusals) from
//! [`postern_listener::Reply::reason`]; `class` internal (an accepted
//! domain: inbound relay) or internet (MX delivery, outbound); DNS `type`
//! mx|address and `result` ok|nxdomain|nodata|error.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub sessions: IntCounterVec,
    pub sessions_active: IntGauge,
    pub smtp_rejections: IntCounterVec,
    pub tls_sessions: IntCounterVec,
    pub received: IntCounter,
    pub accepted: IntCounter,
    pub rejected: IntCounterVec,
    pub delivered: IntCounterVec,
    pub deferred: IntCounterVec,
    pub bounced: IntCounterVec,
    pub dsn_sent: IntCounter,
    pub queue_size: IntGaugeVec,
    pub message_size: Histogram,
    pub delivery_latency: HistogramVec,
    pub dns_lookups: IntCounterVec,
    pub delivery_connections: IntCounterVec,
    pub crashes: IntCounterVec,
    pub quarantined: IntCounterVec,
    pub worker_restarts: IntCounterVec,
    pub gateway_restarts: IntCounter,
    pub back_pressure: IntGauge,
    pub config_reloads: IntCounterVec,
    pub tracking_dropped: IntCounter,
}

/// Registers `c` and hands it back.
fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C, prometheus::Error> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    reg(r, IntCounter::new(name, help)?)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let build = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("postern_build_info", "Postern version, always 1."),
                &["version"],
            )?,
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Metrics {
            sessions: counter_vec(
                &r,
                "postern_smtp_sessions_total",
                "SMTP sessions accepted, by listener.",
                &["listener"],
            )?,
            sessions_active: reg(
                &r,
                IntGauge::new("postern_smtp_sessions_active", "SMTP sessions open now.")?,
            )?,
            smtp_rejections: counter_vec(
                &r,
                "postern_smtp_rejections_total",
                "4xx and 5xx replies sent to SMTP clients, by reason.",
                &["reason"],
            )?,
            tls_sessions: counter_vec(
                &r,
                "postern_smtp_tls_sessions_total",
                "Inbound sessions that negotiated TLS, by protocol version.",
                &["version"],
            )?,
            received: counter(
                &r,
                "postern_messages_received_total",
                "Messages received completely (end of DATA or BDAT LAST).",
            )?,
            accepted: counter(
                &r,
                "postern_messages_accepted_total",
                "Messages queued durably and answered 250.",
            )?,
            rejected: counter_vec(
                &r,
                "postern_messages_rejected_total",
                "Received messages refused at the end of DATA, by reason.",
                &["reason"],
            )?,
            delivered: counter_vec(
                &r,
                "postern_recipients_delivered_total",
                "Recipients delivered, by destination class.",
                &["class"],
            )?,
            deferred: counter_vec(
                &r,
                "postern_recipients_deferred_total",
                "Recipient delivery attempts that failed temporarily, by destination class.",
                &["class"],
            )?,
            bounced: counter_vec(
                &r,
                "postern_recipients_bounced_total",
                "Recipients that failed permanently or expired, by destination class.",
                &["class"],
            )?,
            dsn_sent: counter(&r, "postern_dsn_generated_total", "DSNs generated.")?,
            queue_size: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("postern_queue_messages", "Messages in the queue by state."),
                    &["state"],
                )?,
            )?,
            message_size: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("postern_message_size_bytes", "Size of accepted messages.")
                        .buckets(prometheus::exponential_buckets(1024.0, 4.0, 9)?),
                )?,
            )?,
            delivery_latency: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "postern_delivery_latency_seconds",
                        "Time from acceptance to delivery, by destination class.",
                    )
                    .buckets(prometheus::exponential_buckets(0.005, 4.0, 10)?),
                    &["class"],
                )?,
            )?,
            dns_lookups: counter_vec(
                &r,
                "postern_dns_lookups_total",
                "DNS lookups made for delivery, by type and result.",
                &["type", "result"],
            )?,
            delivery_connections: counter_vec(
                &r,
                "postern_delivery_connections_total",
                "Outbound SMTP connections opened, by whether STARTTLS was negotiated.",
                &["tls"],
            )?,
            crashes: counter_vec(
                &r,
                "postern_crashes_total",
                "Crashes caught, by stage and level.",
                &["stage", "level"],
            )?,
            quarantined: counter_vec(
                &r,
                "postern_messages_quarantined_total",
                "Messages put in quarantine, by the stage that failed.",
                &["stage"],
            )?,
            worker_restarts: counter_vec(
                &r,
                "postern_worker_restarts_total",
                "Worker processes replaced after dying or overrunning.",
                &["kind"],
            )?,
            gateway_restarts: counter(
                &r,
                "postern_gateway_restarts_total",
                "Times the supervisor restarted the gateway process.",
            )?,
            back_pressure: reg(
                &r,
                IntGauge::new(
                    "postern_back_pressure",
                    "Back-pressure level: 0 none, 1 refusing untrusted clients, 2 refusing all.",
                )?,
            )?,
            config_reloads: counter_vec(
                &r,
                "postern_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                &["result"],
            )?,
            tracking_dropped: counter(
                &r,
                "postern_tracking_dropped_total",
                "Tracking log lines dropped because the writer fell behind.",
            )?,
            registry: r,
        };
        // Series that exist from the start, so dashboards and alerts see 0
        // rather than nothing.
        for class in ["internal", "internet"] {
            m.delivery_latency.with_label_values(&[class]);
            m.delivered.with_label_values(&[class]);
            m.deferred.with_label_values(&[class]);
            m.bounced.with_label_values(&[class]);
        }
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for listener in ["smtp", "smtps", "submission"] {
            m.sessions.with_label_values(&[listener]);
        }
        for reason in postern_listener::Reply::REASONS {
            m.smtp_rejections.with_label_values(&[reason]);
            m.rejected.with_label_values(&[reason]);
        }
        for version in ["TLSv1_2", "TLSv1_3"] {
            m.tls_sessions.with_label_values(&[version]);
        }
        for kind in ["mx", "address"] {
            for result in ["ok", "nxdomain", "nodata", "error"] {
                m.dns_lookups.with_label_values(&[kind, result]);
            }
        }
        for tls in ["yes", "no"] {
            m.delivery_connections.with_label_values(&[tls]);
        }
        for stage in ["receive", "content", "queue", "delivery"] {
            m.quarantined.with_label_values(&[stage]);
            m.crashes.with_label_values(&[stage, "1"]);
        }
        m.crashes.with_label_values(&["content", "2"]);
        m.worker_restarts.with_label_values(&["content"]);
        Ok(m)
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
