//! Configuration reload (SIGHUP) inside a running gateway.
//!
//! The new file is loaded and validated, and every part built from it (the
//! conversion policy with its DKIM keys and maps, session settings with the
//! TLS certificate, users and recipients files, the deliverer with routes
//! and DNS, new content workers) is built completely *before* anything is
//! swapped: if one step fails the running configuration stays, whole, and
//! the error is logged and counted (`postern_config_reloads_total{result=
//! "failure"}`). Work in progress keeps the rules it started with (see
//! [`crate::gateway::live::Live`]); new sessions, messages and delivery attempts get
//! the new ones.
//!
//! Reloaded: relay domains and trusted networks, recipients and users files,
//! TLS certificate, session limits and timeouts (except connection caps),
//! routes, DNS servers and delivery timeouts, retry intervals, max age and
//! lease, conversion (DKIM, masquerading, disclaimer, TNEF, authentication),
//! worker settings. Needs a restart (logged when changed): listen addresses,
//! admin endpoint and token, queue path, cache and back-pressure limits,
//! connection caps, delivery concurrency, shutdown timeout, tracking and log
//! settings. (The new deliverer starts with fresh per-destination counters:
//! while attempts begun under the old one finish, a destination can briefly
//! see up to twice `max_per_destination` connections.)

use crate::config::Config;
use crate::content::conversion::Conversion;
use crate::gateway::assemble;
use crate::gateway::intake::Intake;
use crate::gateway::scheduler::Scheduler;
use crate::ops::metrics::Metrics;
use postern_listener::SessionConfig;
use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct Reloader {
    /// The file the gateway was started with (`None`: embedded default).
    pub path: Option<PathBuf>,
    /// The configuration in force, to tell what changed.
    pub running: Mutex<Config>,
    pub metrics: Arc<Metrics>,
    pub pressure: Arc<AtomicU8>,
    /// Drain mode, kept across reloads.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub auth_limiter: Arc<postern_listener::AuthLimiter>,
    pub data_budget: Arc<postern_listener::DataBudget>,
    pub smtp: watch::Sender<Arc<SessionConfig>>,
    pub submission: watch::Sender<Arc<SessionConfig>>,
    pub intake: Arc<Intake>,
    pub scheduler: Arc<Scheduler>,
    /// The MTA-STS store and TLS-RPT counter every new deliverer shares.
    pub tls: super::assemble::TlsWiring,
}

impl Reloader {
    /// Reloads; on success returns the changed settings that need a restart.
    pub async fn reload(&self) -> anyhow::Result<Vec<String>> {
        let result = self.try_reload().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .process
            .config_reloads
            .with_label_values(&[label])
            .inc();
        result
    }

    async fn try_reload(&self) -> anyhow::Result<Vec<String>> {
        let loaded = crate::config::load(self.path.as_deref())?;
        let cfg = loaded.config;
        let conversion = Arc::new(Conversion::from_config(&cfg)?);
        let (smtp, submission) = assemble::session_configs(
            &cfg,
            self.pressure.clone(),
            self.draining.clone(),
            self.auth_limiter.clone(),
            self.data_budget.clone(),
        )?;
        let deliverer = assemble::deliverer(&cfg, &conversion, &self.metrics, &self.tls)?;
        let content =
            assemble::content(&cfg, &conversion, loaded.path.as_deref(), &self.metrics).await?;
        // Everything is built: swap.
        let intake = assemble::intake_policy(&cfg, conversion, Arc::new(content));
        self.intake.policy.set(intake);
        self.scheduler.deliverer.set(deliverer);
        self.scheduler.policy.set(assemble::policy(&cfg));
        self.smtp.send_replace(smtp);
        self.submission.send_replace(submission);
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let restart = restart_only_changes(&running, &cfg);
        *running = cfg;
        Ok(restart)
    }
}

/// Settings that differ between `old` and `new` but only take effect after
/// a restart.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    type Show = fn(&Config) -> String;
    let fields: [(&str, Show); 15] = [
        ("server.listen", |c| format!("{:?}", c.server.listen)),
        ("server.submission_listen", |c| {
            format!("{:?}", c.server.submission_listen)
        }),
        ("tls.implicit_listen", |c| {
            format!("{:?}", c.tls.implicit_listen)
        }),
        ("admin", |c| format!("{:?}", c.admin)),
        ("queue.path", |c| format!("{:?}", c.queue.path)),
        ("queue.cache_size", |c| format!("{:?}", c.queue.cache_size)),
        ("queue back-pressure limits", |c| {
            let q = &c.queue;
            format!("{:?}", (q.max_messages, &q.min_free_disk, &q.max_memory))
        }),
        ("server.max_connections", |c| {
            c.server.max_connections.to_string()
        }),
        ("server.shutdown_timeout", |c| {
            format!("{:?}", c.server.shutdown_timeout)
        }),
        ("server.max_connections_per_ip", |c| {
            c.server.max_connections_per_ip.to_string()
        }),
        ("server.max_connection_rate_per_ip", |c| {
            c.server.max_connection_rate_per_ip.to_string()
        }),
        ("delivery.max_concurrency", |c| {
            c.delivery.max_concurrency.to_string()
        }),
        ("auth.max_failures", |c| c.auth.max_failures.to_string()),
        ("tracking", |c| format!("{:?}", c.tracking)),
        ("log", |c| format!("{:?}", c.log)),
    ];
    fields
        .into_iter()
        .filter(|(_, show)| show(old) != show(new))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.routes.clear();
        new.queue.max_age = postern_core::units::HumanDuration(std::time::Duration::from_secs(9));
        assert!(restart_only_changes(&old, &new).is_empty());
        new.server.listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.tracking.keep = 1;
        assert_eq!(
            restart_only_changes(&old, &new),
            ["server.listen", "tracking"]
        );
    }
}
