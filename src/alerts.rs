//! Alerts: the events on-call must hear about, POSTed as JSON to a webhook.
//!
//! `alerts: {webhook_url, events: [...]}` in the configuration turns them on.
//! Each alert is one `POST` of `{"event", "kernel_id", "ts_ms", "detail"}`
//! (`application/json`), retried with backoff, from a bounded queue served by
//! one worker. Raising an alert never waits: when the queue is full the alert
//! is dropped and counted, and a dead or slow webhook only delays other
//! alerts. Deliveries, failures (after every retry) and drops are counted in
//! the metrics (`kernels_alerts_*_total`).
//!
//! The events, and where they come from:
//! * `halt`, `recover`, `policy_update` — followed from the durable ledger
//!   itself (a watcher reads the new entries whenever an operational event
//!   was recorded), so every halt alerts, whoever caused it;
//! * `integrity_failure` — a commit failed (the ledger fails closed), or the
//!   newest archived objects are missing or changed (the rotator's head check);
//! * `rotation_failing` — the rotator's runs started failing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::entry::Entry;
use crate::kernel::state::event;
use crate::ledger::{Clock, Ledger, SystemClock};

/// The alert events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertEvent {
    /// The kernel was halted.
    Halt,
    /// A halted kernel was recovered into a new session.
    Recover,
    /// The rotator's runs fail (sent when they start failing).
    RotationFailing,
    /// A commit failed, or the newest archived objects are missing or changed.
    IntegrityFailure,
    /// The policy was replaced.
    PolicyUpdate,
}

impl AlertEvent {
    /// Every event, in the configuration's order.
    pub const ALL: [AlertEvent; 5] = [
        AlertEvent::Halt,
        AlertEvent::Recover,
        AlertEvent::RotationFailing,
        AlertEvent::IntegrityFailure,
        AlertEvent::PolicyUpdate,
    ];

    /// The event's name (in the configuration and the alert's `event`).
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Halt => "halt",
            AlertEvent::Recover => "recover",
            AlertEvent::RotationFailing => "rotation_failing",
            AlertEvent::IntegrityFailure => "integrity_failure",
            AlertEvent::PolicyUpdate => "policy_update",
        }
    }

    fn parse(name: &str) -> Option<AlertEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == name.trim())
    }
}

/// `alerts:` as written in the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Where alerts are POSTed (http or https); alerts are off without one.
    pub webhook_url: Option<String>,
    /// Which events alert (default: all).
    pub events: Option<Vec<String>>,
    /// Alerts waiting for delivery at most (default 1000; more are dropped).
    pub queue: Option<usize>,
    /// Time limit of one delivery attempt (default `5s`).
    pub timeout: Option<String>,
    /// Delivery attempts per alert (default 5).
    pub max_attempts: Option<u32>,
}

/// Validated alert settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// The webhook.
    pub webhook_url: reqwest::Url,
    /// Events that alert.
    pub events: BTreeSet<AlertEvent>,
    /// Queue bound.
    pub queue: usize,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Attempts per alert.
    pub max_attempts: u32,
}

impl std::fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A webhook URL often carries a secret: show only where it goes.
        f.debug_struct("AlertsConfig")
            .field("webhook", &redacted(&self.webhook_url))
            .field("events", &self.events)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// The webhook's scheme and host only (its path and query may be secret).
fn redacted(url: &reqwest::Url) -> String {
    format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or("?"))
}

impl AlertsConfig {
    /// Validates `raw`, with `KERNELS_ALERTS_WEBHOOK_URL` and
    /// `KERNELS_ALERTS_EVENTS` (comma-separated) from `env` overriding it;
    /// `None` when no webhook is set. Errors name the key.
    pub fn from_raw(
        raw: Option<RawAlerts>,
        env: &dyn Fn(&str) -> Option<String>,
        parse_duration: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<Option<AlertsConfig>, String> {
        let raw = raw.unwrap_or_default();
        let Some(url) = env("KERNELS_ALERTS_WEBHOOK_URL")
            .or(raw.webhook_url)
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let webhook_url = reqwest::Url::parse(url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or("alerts.webhook_url is not an http:// or https:// URL")?;
        let names = match env("KERNELS_ALERTS_EVENTS") {
            Some(list) => Some(list.split(',').map(str::to_owned).collect::<Vec<_>>()),
            None => raw.events,
        };
        let events = match names {
            None => AlertEvent::ALL.into_iter().collect(),
            Some(names) => names
                .iter()
                .filter(|n| !n.trim().is_empty())
                .map(|n| {
                    AlertEvent::parse(n).ok_or_else(|| {
                        format!(
                            "alerts.events: '{n}' is not one of halt, recover, rotation_failing, integrity_failure, policy_update"
                        )
                    })
                })
                .collect::<Result<BTreeSet<_>, _>>()?,
        };
        let queue = raw.queue.unwrap_or(1000);
        if queue == 0 {
            return Err("alerts.queue must be at least 1".into());
        }
        let timeout = parse_duration(raw.timeout.as_deref().unwrap_or("5s"))
            .map_err(|e| format!("alerts.timeout: {e}"))?;
        let max_attempts = raw.max_attempts.unwrap_or(5);
        if max_attempts == 0 {
            return Err("alerts.max_attempts must be at least 1".into());
        }
        Ok(Some(AlertsConfig {
            webhook_url,
            events,
            queue,
            timeout,
            max_attempts,
        }))
    }
}

/// One alert, as POSTed.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// What happened.
    pub event: AlertEvent,
    /// When (ms).
    pub ts_ms: u64,
    /// Details (the entry, the error, …).
    pub detail: Value,
}

struct Inner {
    config: AlertsConfig,
    kernel_id: String,
    ledger: Ledger,
    queue: tokio::sync::mpsc::Sender<Alert>,
    /// Set when the delivery worker has finished.
    done: tokio::sync::watch::Sender<bool>,
}

/// Handle on the alert worker: a cheap clone.
#[derive(Clone)]
pub struct Alerts {
    inner: Arc<Inner>,
}

/// Longest wait between two attempts of one delivery.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// How long queued alerts may still be delivered after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the ledger watcher looks for new operational events.
const WATCH_EVERY: Duration = Duration::from_millis(200);

impl Alerts {
    /// Starts the delivery worker and the ledger watcher of `ledger`.
    pub fn start(
        config: AlertsConfig,
        ledger: Ledger,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Alerts {
        let (tx, rx) = tokio::sync::mpsc::channel(config.queue);
        let kernel_id = ledger.state().kernel_id.unwrap_or_default();
        tracing::info!(webhook = %redacted(&config.webhook_url), events = ?config.events, "alerts enabled");
        let alerts = Alerts {
            inner: Arc::new(Inner {
                config,
                kernel_id,
                ledger,
                queue: tx,
                done: tokio::sync::watch::Sender::new(false),
            }),
        };
        let worker = alerts.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            worker.clone().deliver(rx, stop).await;
            worker.inner.done.send_replace(true);
        });
        tokio::spawn(alerts.clone().watch(shutdown));
        alerts
    }

    /// Waits until the delivery worker has finished (after shutdown: what
    /// was queued had a few seconds to go out).
    pub async fn stopped(&self) {
        let mut done = self.inner.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Raises an alert, if `event` is configured; never waits (a full queue
    /// drops the alert and counts it).
    pub fn raise(&self, event: AlertEvent, detail: Value) {
        self.raise_at(event, SystemClock.now_ms(), detail);
    }

    /// [`Alerts::raise`] for something that happened at `ts_ms`.
    fn raise_at(&self, event: AlertEvent, ts_ms: u64, detail: Value) {
        if !self.inner.config.events.contains(&event) {
            return;
        }
        let alert = Alert {
            event,
            ts_ms,
            detail,
        };
        if self.inner.queue.try_send(alert).is_err() {
            self.inner.ledger.metrics().alerts_dropped.inc();
            tracing::error!(
                event = event.as_str(),
                "alert dropped: the alert queue is full (is the webhook down?)"
            );
        }
    }

    /// The delivery worker: one alert at a time, each retried with backoff.
    async fn deliver(
        self,
        mut rx: tokio::sync::mpsc::Receiver<Alert>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest::Client::builder()
            .timeout(self.inner.config.timeout)
            .connect_timeout(self.inner.config.timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "alerts disabled: cannot build an HTTP client");
                return;
            }
        };
        loop {
            let alert = tokio::select! {
                a = rx.recv() => a,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let Some(alert) = alert else { return };
            self.send(&client, &alert, &mut shutdown).await;
        }
        // Shutting down: the watcher takes a last look; what is queued gets
        // one short chance, within the grace period.
        let drain = async {
            let idle = WATCH_EVERY * 3;
            // Stopping: retries go without waiting.
            let mut stopping = tokio::sync::watch::channel(true).1;
            while let Ok(Some(alert)) = tokio::time::timeout(idle, rx.recv()).await {
                self.send(&client, &alert, &mut stopping).await;
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain).await;
    }

    /// Delivers one alert: up to `max_attempts` POSTs, 1 s, 2 s, 4 s … apart.
    async fn send(
        &self,
        client: &reqwest::Client,
        alert: &Alert,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let body = json!({
            "event": alert.event.as_str(),
            "kernel_id": self.inner.kernel_id,
            "ts_ms": alert.ts_ms,
            "detail": alert.detail,
        });
        let metrics = self.inner.ledger.metrics();
        let attempts = self.inner.config.max_attempts;
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=attempts {
            let outcome = client
                .post(self.inner.config.webhook_url.clone())
                .json(&body)
                .send()
                .await;
            let problem = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    metrics.alerts_sent.inc();
                    return;
                }
                Ok(resp) => format!("the webhook answered {}", resp.status()),
                Err(e) => format!("the webhook cannot be reached: {}", e.without_url()),
            };
            tracing::warn!(event = alert.event.as_str(), attempt, attempts, %problem, "alert not delivered");
            if attempt < attempts {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {},
                    _ = shutdown.wait_for(|stop| *stop) => {},
                }
                wait = (wait * 2).min(MAX_RETRY_WAIT);
            }
        }
        metrics.alerts_failed.inc();
        tracing::error!(
            event = alert.event.as_str(),
            "alert given up after {attempts} attempts"
        );
    }

    /// Follows the durable ledger: halts, recoveries and policy updates,
    /// whoever made them, and failed commits.
    async fn watch(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let ledger = self.inner.ledger.clone();
        let metrics = ledger.metrics().clone();
        let mut events_seen = metrics.events.get();
        let mut commit_failures = metrics.commit_failures.get();
        // Entries below `scanned` were examined (or predate the watcher);
        // `quiet` is the durable length one look ago: an event counted now
        // was appended after it, so skipping up to it never skips an event.
        let mut scanned = ledger.durable_len();
        let mut quiet = scanned;
        let mut target = scanned;
        loop {
            // On shutdown: one last look, then stop.
            let stopping = tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => false,
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            let durable = ledger.durable_len();
            let events = metrics.events.get();
            if events != events_seen {
                events_seen = events;
                target = target.max(ledger.state().head.len);
            }
            if target > scanned {
                if durable >= target {
                    let (from, to) = (scanned, target);
                    let watched = ledger.clone();
                    let found = tokio::task::spawn_blocking(move || {
                        watched
                            .entries(from, to)
                            .filter_map(Result::ok)
                            .filter_map(|e| alert_of(&e))
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    for (event, ts_ms, detail) in found {
                        self.raise_at(event, ts_ms, detail);
                    }
                    scanned = to;
                }
            } else {
                scanned = scanned.max(quiet);
            }
            quiet = durable;
            let failures = metrics.commit_failures.get();
            if failures != commit_failures {
                commit_failures = failures;
                self.raise(
                    AlertEvent::IntegrityFailure,
                    json!({
                        "source": "ledger",
                        "problem": "a commit failed: the ledger refuses new entries (fails closed) until it is restarted",
                        "commit_failures": failures,
                    }),
                );
            }
            if stopping {
                return;
            }
        }
    }
}

/// The alert an entry raises, if any.
fn alert_of(entry: &Entry) -> Option<(AlertEvent, u64, Value)> {
    let event = if entry.decision == "HALT" {
        AlertEvent::Halt
    } else {
        // An event by its id (a denied request may name any tool, even these).
        match event::of(entry)? {
            event::RECOVER => AlertEvent::Recover,
            event::POLICY_UPDATE => AlertEvent::PolicyUpdate,
            _ => return None,
        }
    };
    Some((
        event,
        entry.ts_ms,
        json!({
            "seq": entry.ledger_seq,
            "entry_ts_ms": entry.ts_ms,
            "actor": entry.actor.to_string(),
            "intent": entry.intent.to_string(),
            "entry_hash": entry.entry_hash,
            "payload": entry.payload,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, env: &[(&str, &str)]) -> Result<Option<AlertsConfig>, String> {
        let raw: RawAlerts = serde_norway::from_str(raw).map_err(|e| e.to_string())?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AlertsConfig::from_raw(
            Some(raw),
            &|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            crate::config::parse_duration,
        )
    }

    #[test]
    fn alerts_are_off_without_a_webhook_and_all_events_by_default() {
        assert_eq!(parse("events: [halt]", &[]).unwrap(), None);
        let c = parse("webhook_url: https://hooks.example/k?token=s3cret", &[])
            .unwrap()
            .unwrap();
        assert_eq!(c.events.len(), 5);
        assert_eq!((c.queue, c.max_attempts), (1000, 5));
        assert_eq!(c.timeout, Duration::from_secs(5));
        // The URL's secret never shows in logs or debug output.
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
    }

    #[test]
    fn the_environment_overrides_and_bad_values_are_named() {
        let c = parse(
            "webhook_url: http://a.example/x\nevents: [halt]",
            &[
                ("KERNELS_ALERTS_WEBHOOK_URL", "http://b.example/y"),
                ("KERNELS_ALERTS_EVENTS", "recover, integrity_failure"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.webhook_url.host_str(), Some("b.example"));
        assert_eq!(
            c.events.into_iter().collect::<Vec<_>>(),
            [AlertEvent::Recover, AlertEvent::IntegrityFailure]
        );
        let e = parse("webhook_url: ftp://x/y", &[]).unwrap_err();
        assert!(e.contains("alerts.webhook_url"), "{e}");
        let e = parse("webhook_url: http://x/y\nevents: [halt, fire]", &[]).unwrap_err();
        assert!(e.contains("alerts.events") && e.contains("fire"), "{e}");
        let e = parse("webhook_url: http://x/y\ntimeout: 0s", &[]).unwrap_err();
        assert!(e.contains("alerts.timeout"), "{e}");
        assert!(parse("webhook_url: http://x/y\nqueue: 0", &[]).is_err());
        assert!(parse("webhook_url: http://x/y\nmax_attempts: 0", &[]).is_err());
        assert!(parse("webhook_url: http://x/y\nretries: 3", &[]).is_err());
    }

    #[test]
    fn the_example_configuration_loads_with_alerts_off() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let overrides = crate::config::Overrides {
            config: Some(root.join("config/kernels.yaml")),
            policy: Some(root.join("config/policy.yaml")),
            ..Default::default()
        };
        let cfg = crate::config::Config::load_with(&overrides, &|_| None).unwrap();
        assert!(cfg.alerts.is_none(), "the example has no webhook");
        let with_hook = |k: &str| {
            (k == "KERNELS_ALERTS_WEBHOOK_URL").then(|| "http://127.0.0.1:9/h".to_owned())
        };
        let cfg = crate::config::Config::load_with(&overrides, &with_hook).unwrap();
        assert_eq!(cfg.alerts.unwrap().events.len(), 5);
    }

    #[test]
    fn only_halts_recoveries_and_policy_updates_alert_from_the_ledger() {
        let entry = |decision: &str, tool: Option<&str>| {
            // Operational events carry their name as request id too.
            let id = tool.filter(|t| t.starts_with("kernel.")).unwrap_or("r");
            serde_json::from_value::<Entry>(json!({
                "ledger_seq": 7, "ts_ms": 1000, "request_id": id, "actor": "ops",
                "intent": "why", "decision": decision, "tool_name": tool,
                "state_from": "IDLE", "state_to": "IDLE", "prev_hash": "0", "entry_hash": "1"
            }))
            .expect("an entry")
        };
        assert_eq!(
            alert_of(&entry("HALT", None)).map(|a| (a.0, a.1)),
            Some((AlertEvent::Halt, 1000))
        );
        assert_eq!(
            alert_of(&entry("ALLOW", Some(event::RECOVER))).map(|a| a.0),
            Some(AlertEvent::Recover)
        );
        assert_eq!(
            alert_of(&entry("ALLOW", Some(event::POLICY_UPDATE))).map(|a| a.0),
            Some(AlertEvent::PolicyUpdate)
        );
        assert_eq!(alert_of(&entry("ALLOW", Some(event::ROTATE))), None);
        assert_eq!(alert_of(&entry("DENY", Some("echo"))), None);
        // A denied agent request that names an event as its tool raises nothing.
        let mut sneaky = entry("DENY", Some(event::RECOVER));
        sneaky.request_id = crate::entry::Text(json!("agent-req-1"));
        assert_eq!(alert_of(&sneaky), None);
    }
}
