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

/// Every metric, in groups by what they describe.
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// SMTP sessions and replies.
    pub smtp: SmtpMetrics,
    /// Messages as the intake sees them.
    pub messages: MessageMetrics,
    /// Delivery attempts, DNS and outbound connections.
    pub delivery: DeliveryMetrics,
    /// The process: crashes, restarts, back pressure, reloads.
    pub process: ProcessMetrics,
}

/// SMTP sessions and the replies they got.
pub struct SmtpMetrics {
    /// Sessions accepted, by listener.
    pub sessions: IntCounterVec,
    /// Sessions open now.
    pub sessions_active: IntGauge,
    /// 4xx/5xx replies sent, by reason.
    pub smtp_rejections: IntCounterVec,
    /// Sessions that negotiated TLS, by version.
    pub tls_sessions: IntCounterVec,
}

/// Messages between the end of DATA and the queue.
pub struct MessageMetrics {
    /// Completely received (end of DATA or BDAT LAST).
    pub received: IntCounter,
    /// Queued durably and answered 250.
    pub accepted: IntCounter,
    /// Refused at the end of DATA, by reason.
    pub rejected: IntCounterVec,
    /// Size of accepted messages.
    pub message_size: Histogram,
    /// DSNs generated.
    pub dsn_sent: IntCounter,
    /// Messages put in quarantine, by stage.
    pub quarantined: IntCounterVec,
    /// Messages in the queue by state (refreshed at each scrape).
    pub queue_size: IntGaugeVec,
}

/// Delivery, by destination class (internal or internet).
pub struct DeliveryMetrics {
    /// Recipients delivered.
    pub delivered: IntCounterVec,
    /// Recipient attempts that failed temporarily.
    pub deferred: IntCounterVec,
    /// Recipients that failed permanently or expired.
    pub bounced: IntCounterVec,
    /// Time from acceptance to delivery.
    pub delivery_latency: HistogramVec,
    /// DNS lookups by type and result.
    pub dns_lookups: IntCounterVec,
    /// Outbound connections by whether STARTTLS was negotiated.
    pub delivery_connections: IntCounterVec,
    /// Idle outbound connections found dead when reused (the transaction
    /// was sent again on a new one).
    pub dead_connections: IntCounter,
    /// Outbound TLS policy results, by policy and result (ok or the
    /// TLS-RPT result type).
    pub tls_results: IntCounterVec,
    /// TLS-RPT reports, by result (sent, failed).
    pub tls_reports: IntCounterVec,
}

/// The process's own health.
pub struct ProcessMetrics {
    /// Crashes caught, by stage and level of the ladder.
    pub crashes: IntCounterVec,
    /// Worker processes replaced.
    pub worker_restarts: IntCounterVec,
    /// Worker deaths by cause (`SIGABRT`, `0xC0000409 fail-fast/abort`,
    /// `hang`...: [`postern_supervisor::exit::cause_label`]).
    pub worker_deaths: IntCounterVec,
    /// Gateway restarts by the supervisor.
    pub gateway_restarts: IntCounter,
    /// 1 for the cause of the gateway's last death (set at its restart).
    pub gateway_last_death: IntGaugeVec,
    /// Back-pressure level (0, 1, 2).
    pub back_pressure: IntGauge,
    /// 1 while the queue's file system is full (a write failed for want of
    /// space and space has not returned).
    pub storage_full: IntGauge,
    /// Configuration reloads by result.
    pub config_reloads: IntCounterVec,
    /// Tracking lines dropped because the writer fell behind.
    pub tracking_dropped: IntCounter,
    /// 1 while the gateway is draining (`postern drain`).
    pub draining: IntGauge,
    /// Messages handed to a peer gateway, by result (sent: offered to the
    /// peer; accepted: the peer said 250 and the message left this queue;
    /// failed: it stays here).
    pub transfers: IntCounterVec,
    /// Messages taken over from a peer gateway (accepted with their
    /// history).
    pub transfers_received: IntCounter,
    /// Delay notices (DSN `Action: delayed`) sent.
    pub delay_notices: IntCounter,
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

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    reg(r, IntGauge::new(name, help)?)
}

impl SmtpMetrics {
    fn new(r: &Registry) -> Result<SmtpMetrics, prometheus::Error> {
        Ok(SmtpMetrics {
            sessions: counter_vec(
                r,
                "postern_smtp_sessions_total",
                "SMTP sessions accepted, by listener.",
                &["listener"],
            )?,
            sessions_active: gauge(r, "postern_smtp_sessions_active", "SMTP sessions open now.")?,
            smtp_rejections: counter_vec(
                r,
                "postern_smtp_rejections_total",
                "4xx and 5xx replies sent to SMTP clients, by reason.",
                &["reason"],
            )?,
            tls_sessions: counter_vec(
                r,
                "postern_smtp_tls_sessions_total",
                "Inbound sessions that negotiated TLS, by protocol version.",
                &["version"],
            )?,
        })
    }
}

impl MessageMetrics {
    fn new(r: &Registry) -> Result<MessageMetrics, prometheus::Error> {
        let sizes = HistogramOpts::new("postern_message_size_bytes", "Size of accepted messages.")
            .buckets(prometheus::exponential_buckets(1024.0, 4.0, 9)?);
        Ok(MessageMetrics {
            received: counter(
                r,
                "postern_messages_received_total",
                "Messages received completely (end of DATA or BDAT LAST).",
            )?,
            accepted: counter(
                r,
                "postern_messages_accepted_total",
                "Messages queued durably and answered 250.",
            )?,
            rejected: counter_vec(
                r,
                "postern_messages_rejected_total",
                "Received messages refused at the end of DATA, by reason.",
                &["reason"],
            )?,
            message_size: reg(r, Histogram::with_opts(sizes)?)?,
            dsn_sent: counter(r, "postern_dsn_generated_total", "DSNs generated.")?,
            quarantined: counter_vec(
                r,
                "postern_messages_quarantined_total",
                "Messages put in quarantine, by the stage that failed.",
                &["stage"],
            )?,
            queue_size: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("postern_queue_messages", "Messages in the queue by state."),
                    &["state"],
                )?,
            )?,
        })
    }
}

impl DeliveryMetrics {
    fn new(r: &Registry) -> Result<DeliveryMetrics, prometheus::Error> {
        let latency = HistogramOpts::new(
            "postern_delivery_latency_seconds",
            "Time from acceptance to delivery, by destination class.",
        )
        .buckets(prometheus::exponential_buckets(0.005, 4.0, 10)?);
        Ok(DeliveryMetrics {
            delivered: counter_vec(
                r,
                "postern_recipients_delivered_total",
                "Recipients delivered, by destination class.",
                &["class"],
            )?,
            deferred: counter_vec(
                r,
                "postern_recipients_deferred_total",
                "Recipient delivery attempts that failed temporarily, by destination class.",
                &["class"],
            )?,
            bounced: counter_vec(
                r,
                "postern_recipients_bounced_total",
                "Recipients that failed permanently or expired, by destination class.",
                &["class"],
            )?,
            delivery_latency: reg(r, HistogramVec::new(latency, &["class"])?)?,
            dns_lookups: counter_vec(
                r,
                "postern_dns_lookups_total",
                "DNS lookups made for delivery, by type and result.",
                &["type", "result"],
            )?,
            delivery_connections: counter_vec(
                r,
                "postern_delivery_connections_total",
                "Outbound SMTP connections opened, by whether STARTTLS was negotiated.",
                &["tls"],
            )?,
            dead_connections: counter(
                r,
                "postern_delivery_dead_connections_total",
                "Idle outbound connections found closed by the next hop when reused; the transaction went again on a new connection.",
            )?,
            tls_results: counter_vec(
                r,
                "postern_delivery_tls_total",
                "Outbound TLS policy results: new sessions and failures before one, by policy (none, may, encrypt, verify, mta-sts, mta-sts-testing, dane, dane-only) and result (ok, or the TLS-RPT result type).",
                &["policy", "result"],
            )?,
            tls_reports: counter_vec(
                r,
                "postern_tls_reports_total",
                "TLS-RPT aggregate reports, by result (sent, failed).",
                &["result"],
            )?,
        })
    }
}

impl ProcessMetrics {
    fn new(r: &Registry) -> Result<ProcessMetrics, prometheus::Error> {
        Ok(ProcessMetrics {
            crashes: counter_vec(
                r,
                "postern_crashes_total",
                "Crashes caught, by stage and level.",
                &["stage", "level"],
            )?,
            worker_restarts: counter_vec(
                r,
                "postern_worker_restarts_total",
                "Worker processes replaced after dying or overrunning.",
                &["kind"],
            )?,
            worker_deaths: counter_vec(
                r,
                "postern_worker_deaths_total",
                "Content workers that died or overran, by cause.",
                &["cause"],
            )?,
            gateway_restarts: counter(
                r,
                "postern_gateway_restarts_total",
                "Times the supervisor restarted the gateway process.",
            )?,
            gateway_last_death: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "postern_gateway_last_death",
                        "1 for the cause of the gateway process's last death.",
                    ),
                    &["cause"],
                )?,
            )?,
            draining: gauge(
                r,
                "postern_draining",
                "1 while the gateway is draining: new connections get 421 4.3.2, /readyz answers 503, delivery goes on.",
            )?,
            transfers: counter_vec(
                r,
                "postern_transfers_total",
                "Messages handed to a peer gateway by postern queue transfer, by result (sent, accepted, failed).",
                &["result"],
            )?,
            transfers_received: counter(
                r,
                "postern_transfers_received_total",
                "Messages taken over from a peer gateway with their arrival time and attempt history.",
            )?,
            delay_notices: counter(
                r,
                "postern_delay_notices_total",
                "Delay notices (DSN Action: delayed) sent to senders.",
            )?,
            back_pressure: gauge(
                r,
                "postern_back_pressure",
                "Back-pressure level: 0 none, 1 refusing untrusted clients, 2 refusing all.",
            )?,
            storage_full: gauge(
                r,
                "postern_queue_storage_full",
                "1 while the queue's file system is full: a write failed for want of space and space has not returned.",
            )?,
            config_reloads: counter_vec(
                r,
                "postern_config_reloads_total",
                "Configuration reloads (SIGHUP), by result.",
                &["result"],
            )?,
            tracking_dropped: counter(
                r,
                "postern_tracking_dropped_total",
                "Tracking log lines dropped because the writer fell behind.",
            )?,
        })
    }
}

impl Metrics {
    /// Registers every metric, with the label sets dashboards expect.
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
            smtp: SmtpMetrics::new(&r)?,
            messages: MessageMetrics::new(&r)?,
            delivery: DeliveryMetrics::new(&r)?,
            process: ProcessMetrics::new(&r)?,
            registry: r,
        };
        m.create_series();
        Ok(m)
    }

    /// Series that exist from the start, so dashboards and alerts see 0
    /// rather than nothing.
    fn create_series(&self) {
        let (d, p) = (&self.delivery, &self.process);
        for class in ["internal", "internet"] {
            d.delivery_latency.with_label_values(&[class]);
            d.delivered.with_label_values(&[class]);
            d.deferred.with_label_values(&[class]);
            d.bounced.with_label_values(&[class]);
        }
        for result in ["success", "failure"] {
            p.config_reloads.with_label_values(&[result]);
        }
        for listener in ["smtp", "smtps", "submission"] {
            self.smtp.sessions.with_label_values(&[listener]);
        }
        for reason in postern_listener::Reply::REASONS {
            self.smtp.smtp_rejections.with_label_values(&[reason]);
            self.messages.rejected.with_label_values(&[reason]);
        }
        for version in ["TLSv1_2", "TLSv1_3"] {
            self.smtp.tls_sessions.with_label_values(&[version]);
        }
        for kind in ["mx", "address"] {
            for result in ["ok", "nxdomain", "nodata", "error"] {
                d.dns_lookups.with_label_values(&[kind, result]);
            }
        }
        for tls in ["yes", "no"] {
            d.delivery_connections.with_label_values(&[tls]);
        }
        for policy in ["may", "verify", "mta-sts", "dane"] {
            d.tls_results.with_label_values(&[policy, "ok"]);
        }
        for result in ["sent", "failed"] {
            d.tls_reports.with_label_values(&[result]);
        }
        for result in ["sent", "accepted", "failed"] {
            p.transfers.with_label_values(&[result]);
        }
        for stage in ["receive", "content", "queue", "delivery"] {
            self.messages.quarantined.with_label_values(&[stage]);
            p.crashes.with_label_values(&[stage, "1"]);
        }
        p.crashes.with_label_values(&["content", "2"]);
        p.worker_restarts.with_label_values(&["content"]);
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
            self.messages
                .queue_size
                .with_label_values(&[state])
                .set(n as i64);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
