//! The configuration schema: the tree `postern` deserialises from TOML.
//!
//! Entry points: [`Config`] (deserialised by [`crate::config::load`], which
//! adds line/column to syntax errors) and [`Config::validate`], which returns
//! every semantic problem at once. The `[delivery]` and `[[route]]` sections
//! are the delivery crate's own types (it reads them). Every limit Postern enforces is a field here with
//! a documented default; `Config::default()` is the embedded configuration
//! `postern run` uses when no file is given.

use ipnet::IpNet;
use postern_core::units::{ByteSize, HumanDuration};
pub use postern_delivery::{
    split_host_port, DeliveryConfig, OutboundTlsConfig, Route, TlsPolicyEntry,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the SMTP listener and its limits.
    pub server: ServerConfig,
    /// `[relay]`: whose mail we accept for where.
    pub relay: RelayConfig,
    /// `[queue]`: the durable queue and retry schedule.
    pub queue: QueueConfig,
    /// `[delivery]`: outbound SMTP and DNS.
    pub delivery: DeliveryConfig,
    /// `[[route]]`: static next hops, winning over MX.
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    /// `[admin]`: the HTTP admin endpoint.
    pub admin: AdminConfig,
    /// `[workers]`: crash isolation.
    pub workers: WorkersConfig,
    /// `[convert]`: the conversion core.
    pub convert: ConvertConfig,
    /// `[tls]`: certificate for STARTTLS and implicit TLS.
    pub tls: TlsConfig,
    /// `[auth]`: SMTP AUTH.
    pub auth: AuthConfig,
    /// `[log]`: the diagnostic log.
    pub log: LogConfig,
    /// `[tracking]`: the message tracking log.
    pub tracking: TrackingConfig,
    /// `[outbound_tls]`: outbound transport security (levels, MTA-STS,
    /// DANE).
    pub outbound_tls: OutboundTlsConfig,
    /// `[[tls_policy]]`: the TLS level of particular destinations.
    #[serde(rename = "tls_policy")]
    pub tls_policies: Vec<TlsPolicyEntry>,
    /// `[tls_report]`: TLS-RPT (RFC 8460) aggregate reports.
    pub tls_report: TlsReportConfig,
    /// `[fleet]`: several gateways side by side (drain, queue hand-over).
    pub fleet: FleetConfig,
}

/// `[fleet]`: what a gateway accepts from its peers and how it leaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Networks of peer gateways whose transferred messages keep their
    /// history (arrival time, attempts, delay notices, trust) and skip
    /// content processing. Empty: no peer; the history field is removed
    /// from every message.
    pub peers: Vec<IpNet>,
    /// On SIGTERM, drain first (421 to new connections, `/readyz` 503,
    /// delivery goes on) until nothing waits or this much time passes,
    /// then stop. "0s": stop at once.
    pub drain_on_stop: HumanDuration,
    /// Messages relayed at once by `postern queue transfer`.
    pub transfer_concurrency: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            peers: Vec::new(),
            drain_on_stop: HumanDuration(Duration::ZERO),
            transfer_concurrency: 8,
        }
    }
}

/// `[tls_report]`: daily TLS-RPT reports to the domains that ask for them
/// (`_smtp._tls` TXT). Off until `organization` and `contact` are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsReportConfig {
    /// `organization-name` in reports.
    pub organization: String,
    /// `contact-info` in reports (an address or URL).
    pub contact: String,
    /// The reporting period (one day; a lab may shorten it).
    pub interval: HumanDuration,
    /// The From address of mailed reports; empty: `noreply-smtp-tls-reporting@<hostname>`.
    pub from: String,
    /// Most policy domains counted per period (the rest are not reported).
    pub max_domains: usize,
}

impl Default for TlsReportConfig {
    fn default() -> Self {
        TlsReportConfig {
            organization: String::new(),
            contact: String::new(),
            interval: HumanDuration(Duration::from_secs(86_400)),
            from: String::new(),
            max_domains: 100_000,
        }
    }
}

impl TlsReportConfig {
    /// True when reports are to be made.
    pub fn enabled(&self) -> bool {
        !self.organization.is_empty() && !self.contact.is_empty()
    }
}

/// `[log]`: the ordinary diagnostic log (tracing) on standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (human-readable) or `"json"` (one object per line).
    pub format: String,
    /// error, warn, info, debug or trace; `POSTERN_LOG` wins when set.
    pub level: String,
    /// Append to this file instead of standard error (a Windows service
    /// without one logs to `postern.log` in the queue directory).
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
            file: None,
        }
    }
}

/// `[tracking]`: the message tracking log, one JSON line per message event.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackingConfig {
    /// `"file"`, `"stdout"` or `"off"`.
    pub destination: String,
    /// The file (default: `tracking.log` in the queue directory).
    pub path: Option<PathBuf>,
    /// Rotate when the file reaches this size.
    pub max_size: ByteSize,
    /// Rotated files kept (`tracking.log.1` newest … `.N` oldest).
    pub keep: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig {
            destination: "file".into(),
            path: None,
            max_size: ByteSize(64 * 1024 * 1024),
            keep: 5,
        }
    }
}

impl TrackingConfig {
    /// The tracking file for a queue directory.
    pub fn file(&self, queue_dir: &std::path::Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| queue_dir.join("tracking.log"))
    }
}

/// `[auth]`: SMTP AUTH for submission and authenticated relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:argon2-hash` lines (`postern hash-password` makes the hashes).
    pub users_file: Option<PathBuf>,
    /// Failed attempts per client IP and per user in ten minutes before
    /// further attempts get 454 4.7.0.
    pub max_failures: u32,
    /// Password checks (Argon2, 19 MiB each) running at once; an AUTH over
    /// the cap gets 454 4.7.0 instead of starting another.
    pub max_concurrent_verifies: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            max_failures: 5,
            max_concurrent_verifies: 4,
        }
    }
}

/// `[tls]`: certificate for STARTTLS and implicit TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; STARTTLS is offered when this and the key are set.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Addresses for implicit TLS (the port 465 style).
    pub implicit_listen: Vec<SocketAddr>,
}

/// `[workers]`: crash isolation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Content worker processes; 0 runs content processing in the gateway
    /// itself (no isolation; for comparison and for platforms without it).
    pub processes: usize,
    /// Address-space limit of each content worker.
    pub memory_limit: ByteSize,
    /// Wall-clock and CPU deadline for one message in a worker, and for the
    /// receive stage in the gateway.
    pub message_deadline: HumanDuration,
    /// Crashes after which a message is quarantined (Exchange's default: 2).
    pub poison_threshold: u32,
    /// Longest a single delivery attempt may stay in flight before the
    /// supervisor declares the gateway hung.
    pub delivery_deadline: HumanDuration,
    /// Address-space limit of the gateway process; "0" for none.
    pub gateway_memory_limit: ByteSize,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            processes: 2,
            memory_limit: ByteSize(256 * 1024 * 1024),
            message_deadline: HumanDuration(Duration::from_secs(30)),
            poison_threshold: 2,
            delivery_deadline: HumanDuration(Duration::from_secs(15 * 60)),
            gateway_memory_limit: ByteSize(4 * 1024 * 1024 * 1024),
        }
    }
}

/// `[convert]`: the conversion core.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvertConfig {
    /// Largest header block of the message or of one MIME part.
    pub max_header_size: ByteSize,
    /// Deepest multipart nesting.
    pub max_mime_depth: usize,
    /// Most MIME parts in one message.
    pub max_mime_parts: usize,
    /// Run SPF, DKIM and DMARC on inbound mail (from untrusted clients).
    pub authenticate: bool,
    /// authserv-id in Authentication-Results; empty: the server hostname.
    pub authserv_id: String,
    /// Refuse DMARC p=reject failures at end of DATA with 550 5.7.1.
    pub dmarc_reject: bool,
    /// DMARC p=quarantine (and unrefused p=reject) failures: "header" or "hold".
    pub dmarc_quarantine: String,
    /// Time budget of the SPF/DKIM/DMARC lookups of one inbound message;
    /// checks not done by then are `temperror` and the message is accepted
    /// (a DNS outage must not run it into `workers.message_deadline`).
    pub auth_timeout: HumanDuration,
    /// Outbound: remove Received headers added by internal hosts.
    pub strip_internal_received: bool,
    /// Outbound: header name prefixes to remove (case-insensitive).
    pub strip_headers: Vec<String>,
    /// Outbound: internal domain = public domain, in the envelope sender and
    /// From/Sender/Reply-To.
    pub masquerade: std::collections::BTreeMap<String, String>,
    /// Outbound: file of "internal@address public@address" lines.
    pub canonical_map: Option<PathBuf>,
    /// Outbound: text appended to text/plain and text/html bodies.
    pub disclaimer: String,
    /// Outbound TNEF (winmail.dat) handling: "convert", "leave" or "strip".
    pub tnef: String,
    /// Outbound: add Date and Message-ID when the internal sender left them out.
    pub add_missing_headers: bool,
    /// DKIM signing keys, one per sender domain.
    pub dkim: Vec<DkimKeyConfig>,
    /// Per destination domain overrides.
    pub domain: Vec<DomainConvertConfig>,
}

/// `[[convert.dkim]]`: one signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// Sender domain signed for (the DKIM `d=` tag).
    pub domain: String,
    /// Selector: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM file: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
    /// "rsa-sha256" or "ed25519-sha256".
    #[serde(default = "default_dkim_algorithm")]
    pub algorithm: String,
    /// Headers to sign; empty for the default set.
    #[serde(default)]
    pub headers: Vec<String>,
}

fn default_dkim_algorithm() -> String {
    "rsa-sha256".into()
}

/// `[[convert.domain]]`: conversion for one destination domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConvertConfig {
    /// Destination domain, exact match.
    pub domain: String,
    /// "convert", "leave" or "strip".
    pub tnef: String,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            max_header_size: ByteSize(256 * 1024),
            max_mime_depth: 20,
            max_mime_parts: 1000,
            authenticate: true,
            authserv_id: String::new(),
            dmarc_reject: false,
            dmarc_quarantine: "header".into(),
            auth_timeout: HumanDuration(Duration::from_secs(10)),
            strip_internal_received: true,
            strip_headers: vec!["X-MS-Exchange-Organization-".into()],
            masquerade: Default::default(),
            canonical_map: None,
            disclaimer: String::new(),
            tnef: "convert".into(),
            add_missing_headers: true,
            dkim: Vec::new(),
            domain: Vec::new(),
        }
    }
}

/// `[server]`: the SMTP listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Name in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    /// Addresses to accept SMTP connections on.
    pub listen: Vec<SocketAddr>,
    /// Submission addresses (port 587 style): MAIL requires AUTH there.
    pub submission_listen: Vec<SocketAddr>,
    /// Largest message accepted (SIZE and during DATA).
    pub max_message_size: ByteSize,
    /// Recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Concurrent sessions; more get 421 4.3.2 at connect.
    pub max_connections: usize,
    /// Errors per session before 421 and close.
    pub max_errors: u32,
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest DATA text line, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Wait for the next command (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout: HumanDuration,
    /// Wait for each chunk of DATA (RFC 5321 4.5.3.2.5: 3 minutes).
    pub data_timeout: HumanDuration,
    /// Whole DATA phase, however the client trickles (RFC 5321 4.5.3.2.6:
    /// 10 minutes); a command line must also arrive within command_timeout.
    pub data_total_timeout: HumanDuration,
    /// Concurrent sessions per client IP, IPv6 per /64 (trusted networks
    /// exempt): 421 4.7.0.
    pub max_connections_per_ip: usize,
    /// New connections per client IP (IPv6: /64) per minute (trusted
    /// exempt): 421 4.7.0.
    pub max_connection_rate_per_ip: u32,
    /// Untrusted clients wait this long for the greeting; one that talks
    /// first is an early talker: 554 and close. "0s" turns the test off.
    pub greeting_delay: HumanDuration,
    /// NOOP, RSET, VRFY and HELP per session before 421 4.7.0; a repeated
    /// EHLO/HELO and `BDAT 0` without LAST count too.
    pub max_noops: u32,
    /// Message data (DATA and BDAT buffers, until the message is answered)
    /// every session together may hold in memory; a message that does not
    /// fit is read to its end, not stored, and answered 452 4.3.1. "0": no
    /// limit.
    pub max_data_in_memory: ByteSize,
    /// Received header fields a message may arrive with (Postfix's
    /// hopcount_limit); more is a mail loop: 554 5.4.6. 0 turns it off.
    pub max_hops: usize,
    /// Addresses we receive mail on through a proxy, a load balancer or NAT
    /// (Postfix's proxy_interfaces), e.g. the public address of a port
    /// redirect: a next hop at one of them, on any port, is a mail loop
    /// (5.4.6).
    pub proxy_addresses: Vec<std::net::IpAddr>,
    /// On SIGTERM: how long sessions in a transaction and deliveries in
    /// flight may take to finish before the process exits anyway.
    pub shutdown_timeout: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: String::new(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission_listen: Vec::new(),
            max_message_size: ByteSize(50 * 1024 * 1024),
            max_recipients: 100,
            max_connections: 2000,
            max_errors: 10,
            max_command_line: 512,
            max_text_line: 1000,
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(180)),
            data_total_timeout: HumanDuration(Duration::from_secs(600)),
            max_connections_per_ip: 50,
            max_connection_rate_per_ip: 600,
            greeting_delay: HumanDuration(Duration::from_secs(1)),
            max_noops: 50,
            max_data_in_memory: ByteSize(512 * 1024 * 1024),
            max_hops: 50,
            proxy_addresses: Vec::new(),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[relay]`: whose mail we accept for where.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Domains anyone may send mail to (inbound).
    pub accepted_domains: Vec<String>,
    /// Client networks that may relay to any domain (outbound).
    pub trusted_networks: Vec<IpNet>,
    /// Valid recipients of accepted domains (`user@domain`, `@domain`);
    /// unknown users there get 550 5.1.1 at RCPT instead of a later bounce.
    pub recipients_file: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            accepted_domains: Vec::new(),
            trusted_networks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            recipients_file: None,
        }
    }
}

/// `[queue]`: the durable queue and retry schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Delay before retry n (the last repeats), each with ±10 % jitter.
    pub retry_intervals: Vec<HumanDuration>,
    /// After this long undelivered, recipients bounce with a DSN.
    pub max_age: HumanDuration,
    /// Delay notices (DSN `Action: delayed`): after each of these ages a
    /// message still waiting gets one notice to its sender (per recipient
    /// whose NOTIFY allows DELAY; never for a DSN). Empty: none, as
    /// Postfix's default; e.g. `["4h"]` as Exchange.
    pub delay_warning: Vec<HumanDuration>,
    /// How long a delivery lease lasts before the message is due again.
    pub lease: HumanDuration,
    /// sled page cache size.
    pub cache_size: ByteSize,
    /// Back pressure: messages in the queue at which untrusted clients are
    /// refused (452 4.3.1); at twice this, everyone is.
    pub max_messages: u64,
    /// Back pressure: free disk under the queue below which untrusted
    /// clients are refused; at half of it, everyone is.
    pub min_free_disk: ByteSize,
    /// Back pressure: gateway resident memory above which untrusted clients
    /// are refused; at 1.5 times it, everyone is. "0" turns it off.
    pub max_memory: ByteSize,
    /// Longest the queue may take to store a message durably at the end of
    /// DATA. Past it the client gets 451 4.3.0 and the gateway, whose
    /// storage is stuck, stops in order and is restarted.
    pub write_timeout: HumanDuration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| HumanDuration(Duration::from_secs(n * 60));
        QueueConfig {
            path: PathBuf::from("data/queue"),
            retry_intervals: vec![m(1), m(5), m(15), m(60), m(240)],
            max_age: HumanDuration(Duration::from_secs(5 * 86400)),
            delay_warning: Vec::new(),
            lease: HumanDuration(Duration::from_secs(15 * 60)),
            cache_size: ByteSize(64 * 1024 * 1024),
            max_messages: 100_000,
            min_free_disk: ByteSize(1024 * 1024 * 1024),
            max_memory: ByteSize(0),
            write_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[admin]`: the HTTP admin endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint (`/metrics`, `/queue`, `/healthz`,
    /// `/readyz`).
    pub listen: SocketAddr,
    /// File holding the bearer token that `/metrics` and `/queue` require
    /// (`Authorization: Bearer ...`). Mandatory when `listen` is not loopback.
    /// Without it the gateway generates `<queue path>/admin.token` (0600) at
    /// first start and requires it for every mutating request (POST, DELETE).
    pub token_file: Option<PathBuf>,
    /// Admin connections open at once; one over the cap is closed at once
    /// (default 64).
    pub max_connections: usize,
    /// Time a client has to send a request's headers, the first one included;
    /// slower connections are closed (default 10s).
    pub header_timeout: HumanDuration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token_file: None,
            max_connections: 64,
            header_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl Config {
    /// Every semantic problem in the configuration, empty when it is usable.
    /// The checks go section by section, in a fixed order, so the same file
    /// always gives the same list.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        self.check_limits(&mut errs);
        self.check_tls_and_auth(&mut errs);
        self.check_convert(&mut errs);
        self.check_names(&mut errs);
        self.check_routes(&mut errs);
        self.check_outbound_tls(&mut errs);
        errs
    }

    /// `[outbound_tls]`, `[[tls_policy]]` and `[tls_report]`.
    fn check_outbound_tls(&self, errs: &mut Vec<String>) {
        if let Err(e) = postern_delivery::validate_policies(&self.tls_policies) {
            errs.push(e);
        }
        let t = &self.outbound_tls;
        for (name, path) in [("ca_file", &t.ca_file), ("trust_anchor", &t.trust_anchor)] {
            if let Some(p) = path {
                if !p.is_file() {
                    errs.push(format!(
                        "outbound_tls.{name}: {} is not a readable file",
                        p.display()
                    ));
                }
            }
        }
        if t.mta_sts_timeout.0.is_zero() || t.mta_sts_max_size.0 < 1024 {
            errs.push(
                "outbound_tls.mta_sts_timeout must be above 0 and mta_sts_max_size at least 1 KiB"
                    .into(),
            );
        }
        if self.fleet.transfer_concurrency == 0 {
            errs.push("fleet.transfer_concurrency must be at least 1".into());
        }
        if let Some(w) = self
            .queue
            .delay_warning
            .iter()
            .find(|w| w.0.is_zero() || w.0 >= self.queue.max_age.0)
        {
            errs.push(format!(
                "queue.delay_warning: {:?} must be above 0 and below queue.max_age",
                w.0
            ));
        }
        let r = &self.tls_report;
        if r.organization.is_empty() != r.contact.is_empty() {
            errs.push("tls_report: set both organization and contact (or neither)".into());
        }
        if r.interval.0 < Duration::from_secs(1) {
            errs.push("tls_report.interval must be at least 1s".into());
        }
    }

    /// Listener, queue, delivery, auth and worker limits.
    fn check_limits(&self, errs: &mut Vec<String>) {
        if self.server.listen.is_empty() {
            errs.push("server.listen: at least one address is required".to_string());
        }
        if self.server.max_command_line < 512 {
            errs.push("server.max_command_line: RFC 5321 requires at least 512".to_string());
        }
        if self.server.max_text_line < 1000 {
            errs.push("server.max_text_line: RFC 5321 requires at least 1000".to_string());
        }
        if self.server.max_recipients == 0 || self.server.max_connections == 0 {
            errs.push("server.max_recipients and max_connections must be at least 1".to_string());
        }
        if self.queue.retry_intervals.is_empty() {
            errs.push("queue.retry_intervals: at least one interval is required".to_string());
        }
        if self.delivery.max_mx_hosts == 0 || self.delivery.max_concurrency == 0 {
            errs.push("delivery.max_mx_hosts and max_concurrency must be at least 1".to_string());
        }
        if self.delivery.max_per_destination == 0 {
            errs.push("delivery.max_per_destination must be at least 1".to_string());
        }
        // A reply and what is read ahead of it (up to a TLS record) fit.
        if self.delivery.max_reply_size.0 < 32 * 1024 {
            errs.push("delivery.max_reply_size must be at least 32KiB".to_string());
        }
        if self.delivery.attempt_timeout.0 < Duration::from_secs(1) {
            errs.push("delivery.attempt_timeout must be at least 1s".to_string());
        }
        if self.auth.max_failures == 0 {
            errs.push("auth.max_failures must be at least 1 (0 would refuse every AUTH)".into());
        }
        if self.auth.max_concurrent_verifies == 0 {
            errs.push("auth.max_concurrent_verifies must be at least 1".to_string());
        }
        if self.admin.max_connections == 0 || self.admin.header_timeout.0.is_zero() {
            errs.push("admin.max_connections and header_timeout must be above 0".to_string());
        }
        if self.workers.poison_threshold == 0 {
            errs.push("workers.poison_threshold must be at least 1".to_string());
        }
        if self.workers.processes > 0 && self.workers.memory_limit.0 < 16 * 1024 * 1024 {
            errs.push("workers.memory_limit below 16MiB cannot run a worker".to_string());
        }
    }

    /// Certificate and key pairing, and listeners that need them or AUTH.
    fn check_tls_and_auth(&self, errs: &mut Vec<String>) {
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            errs.push("tls.cert_file and tls.key_file go together".to_string());
        }
        if !self.server.submission_listen.is_empty() && self.auth.users_file.is_none() {
            errs.push("server.submission_listen needs auth.users_file".to_string());
        }
        if !self.tls.implicit_listen.is_empty() && self.tls.cert_file.is_none() {
            errs.push("tls.implicit_listen needs tls.cert_file and tls.key_file".to_string());
        }
    }

    /// `[convert]` choices: TNEF handling, DMARC quarantine, DKIM algorithms.
    fn check_convert(&self, errs: &mut Vec<String>) {
        let tnef_ok = |m: &str| matches!(m, "convert" | "leave" | "strip");
        if !tnef_ok(&self.convert.tnef) || self.convert.domain.iter().any(|d| !tnef_ok(&d.tnef)) {
            errs.push("convert.tnef must be \"convert\", \"leave\" or \"strip\"".to_string());
        }
        if !matches!(self.convert.dmarc_quarantine.as_str(), "header" | "hold") {
            errs.push("convert.dmarc_quarantine must be \"header\" or \"hold\"".to_string());
        }
        if self.convert.auth_timeout.0.is_zero() {
            errs.push("convert.auth_timeout must be above 0".to_string());
        }
        for k in &self.convert.dkim {
            if !matches!(k.algorithm.as_str(), "rsa-sha256" | "ed25519-sha256") {
                errs.push(format!(
                    "convert.dkim ({}): algorithm must be rsa-sha256 or ed25519-sha256",
                    k.domain
                ));
            }
        }
    }

    /// Accepted domains, the admin endpoint's exposure, log and tracking
    /// choices.
    fn check_names(&self, errs: &mut Vec<String>) {
        for d in &self.relay.accepted_domains {
            if postern_core::Address::parse(&format!("x@{d}")).is_err() || d.starts_with('[') {
                errs.push(format!("relay.accepted_domains: {d:?} is not a domain"));
            }
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token_file.is_none() {
            errs.push(format!(
                "admin.listen {} is not loopback: admin.token_file is required",
                self.admin.listen
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            errs.push("log.format must be \"text\" or \"json\"".to_string());
        }
        if !matches!(
            self.log.level.to_ascii_lowercase().as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            errs.push("log.level must be error, warn, info, debug or trace".to_string());
        }
        if !matches!(
            self.tracking.destination.as_str(),
            "file" | "stdout" | "off"
        ) {
            errs.push("tracking.destination must be \"file\", \"stdout\" or \"off\"".to_string());
        }
    }

    /// Every `[[route]]` has hosts, each a valid host or host:port.
    fn check_routes(&self, errs: &mut Vec<String>) {
        for (i, r) in self.routes.iter().enumerate() {
            if r.hosts.is_empty() {
                errs.push(format!(
                    "route[{i}] ({}): hosts must not be empty",
                    r.domain
                ));
            }
            for h in &r.hosts {
                if let Err(e) = split_host_port(h, self.delivery.port) {
                    errs.push(format!("route[{i}] ({}): {e}", r.domain));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_timeout_must_be_above_zero() {
        let mut c = Config::default();
        c.convert.auth_timeout = HumanDuration(Duration::ZERO);
        assert_eq!(c.validate(), vec!["convert.auth_timeout must be above 0"]);
        c.convert.auth_timeout = HumanDuration(Duration::from_secs(300));
        assert!(c.validate().is_empty());
    }

    #[test]
    fn defaults_are_valid_and_loopback_only() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let nets: Vec<String> = c
            .relay
            .trusted_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, vec!["127.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn validate_reports_every_problem_in_order() {
        let mut c = Config::default();
        c.server.listen.clear();
        c.log.format = "xml".into();
        c.routes.push(Route {
            domain: "x.test".into(),
            hosts: vec![],
        });
        c.routes.push(Route {
            domain: "y.test".into(),
            hosts: vec!["bad host:x".into(), "bad host".into()],
        });
        assert_eq!(
            c.validate(),
            vec![
                "server.listen: at least one address is required",
                "log.format must be \"text\" or \"json\"",
                "route[0] (x.test): hosts must not be empty",
                "route[1] (y.test): invalid port in \"bad host:x\"",
                "route[1] (y.test): invalid host \"bad host\"",
            ]
        );
        // The port's own parse error is kept as the source.
        let e = split_host_port("mx.test:99999", 25).unwrap_err();
        assert!(std::error::Error::source(&e).is_some());
    }
}
