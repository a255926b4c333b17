//! Prometheus metrics of the service, in one registry.
//!
//! The ledger records decisions and commits, the rotator its runs, the alert
//! worker its deliveries, the cluster worker its control-plane reads, the
//! HTTP layer its requests; `GET /metrics` renders them all as Prometheus text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a decision counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// ALLOW / DENY / HALT.
    pub decision: String,
    /// ACCEPTED / REJECTED / FAILED.
    pub status: String,
}

/// Labels of an HTTP request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route template (`/v1/requests`, …).
    pub route: &'static str,
    /// Status code.
    pub code: u16,
}

/// Labels of a read of the cluster's control plane.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReadLabels {
    /// `policy` or `halt_flag`.
    pub object: String,
    /// `changed`, `not_modified` (304), `unchanged` (same ETag sent again),
    /// `missing` or `error`.
    pub result: String,
}

/// A function that refreshes derived gauges just before a render.
type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    refresh: std::sync::Mutex<Vec<Refresh>>,
    /// Decisions recorded, by decision and status.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Operational events recorded.
    pub events: Counter,
    /// Commits (durability points) made.
    pub commits: Counter,
    /// Commits that failed.
    pub commit_failures: Counter,
    /// Time of each commit, in seconds.
    pub commit_seconds: Histogram,
    /// Entries made durable per commit.
    pub batch_size: Histogram,
    /// Number of entries in the ledger.
    pub ledger_length: Gauge,
    /// 1 when the kernel is halted.
    pub halted: Gauge,
    /// HTTP requests by route and status code.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Rotator: runs that succeeded.
    pub rotation_success: Counter,
    /// Rotator: runs that failed.
    pub rotation_failures: Counter,
    /// Rotator: unix time (s) of the last successful rotation.
    pub rotation_last_success: Gauge,
    /// Rotator: entries not yet archived.
    pub rotation_pending_entries: Gauge,
    /// Rotator: 1 while the last run failed.
    pub rotation_failing: Gauge,
    /// Alerts delivered to the webhook.
    pub alerts_sent: Counter,
    /// Alerts given up after every delivery attempt failed.
    pub alerts_failed: Counter,
    /// Alerts dropped because the alert queue was full.
    pub alerts_dropped: Counter,
    /// Cluster: 1 while the control plane answered the last poll, 0 while not.
    pub cluster_control_plane_up: Gauge,
    /// Cluster: control-plane reads by object and result.
    pub cluster_reads: Family<ClusterReadLabels, Counter>,
    /// Cluster: 1 while the shared policy object is refused (invalid).
    pub cluster_policy_rejected: Gauge,
    /// Cluster: shared policy objects applied (recorded updates).
    pub cluster_policy_updates: Counter,
    /// Cluster: peers' checkpoints cosigned and delivered.
    pub cluster_witness_cosigned: Counter,
    /// Cluster: peers whose latest checkpoint this instance refuses to cosign.
    pub cluster_witness_refused: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kernels");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions recorded, by decision and receipt status",
            decisions.clone(),
        );
        let events = Counter::default();
        registry.register(
            "operational_events",
            "Operational events recorded",
            events.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Durable commits (group commits) made",
            commits.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "commit_failures",
            "Commits that failed (the ledger then fails closed)",
            commit_failures.clone(),
        );
        let commit_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
        ]);
        registry.register(
            "commit_seconds",
            "Latency of each commit (flush + fdatasync)",
            commit_seconds.clone(),
        );
        let batch_size = Histogram::new([
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ]);
        registry.register(
            "commit_batch_entries",
            "Entries made durable per commit",
            batch_size.clone(),
        );
        let ledger_length = Gauge::default();
        registry.register(
            "ledger_length",
            "Entries in the ledger",
            ledger_length.clone(),
        );
        let halted = Gauge::default();
        registry.register("halted", "1 when the kernel is halted", halted.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status code",
            http_requests.clone(),
        );
        let rotation_success = Counter::default();
        registry.register(
            "rotation_success",
            "Rotations archived and recorded",
            rotation_success.clone(),
        );
        let rotation_failures = Counter::default();
        registry.register(
            "rotation_failures",
            "Rotation attempts that failed",
            rotation_failures.clone(),
        );
        let rotation_last_success = Gauge::default();
        registry.register(
            "rotation_last_success_timestamp_seconds",
            "Time of the last successful rotation",
            rotation_last_success.clone(),
        );
        let rotation_pending_entries = Gauge::default();
        registry.register(
            "rotation_pending_entries",
            "Entries not yet archived",
            rotation_pending_entries.clone(),
        );
        let rotation_failing = Gauge::default();
        registry.register(
            "rotation_failing",
            "1 while the rotator's last attempt failed",
            rotation_failing.clone(),
        );
        let alerts_sent = Counter::default();
        registry.register(
            "alerts_sent",
            "Alerts delivered to the webhook",
            alerts_sent.clone(),
        );
        let alerts_failed = Counter::default();
        registry.register(
            "alerts_failed",
            "Alerts given up after every delivery attempt failed",
            alerts_failed.clone(),
        );
        let alerts_dropped = Counter::default();
        registry.register(
            "alerts_dropped",
            "Alerts dropped because the alert queue was full",
            alerts_dropped.clone(),
        );
        let cluster_control_plane_up = Gauge::default();
        registry.register(
            "cluster_control_plane_up",
            "1 while the cluster's control plane (S3) answered the last poll",
            cluster_control_plane_up.clone(),
        );
        let cluster_reads = Family::<ClusterReadLabels, Counter>::default();
        registry.register(
            "cluster_reads",
            "Reads of the cluster's control plane, by object and result",
            cluster_reads.clone(),
        );
        let cluster_policy_rejected = Gauge::default();
        registry.register(
            "cluster_policy_rejected",
            "1 while the cluster's shared policy object is invalid (the running policy is kept)",
            cluster_policy_rejected.clone(),
        );
        let cluster_policy_updates = Counter::default();
        registry.register(
            "cluster_policy_updates",
            "Shared policy objects applied and recorded",
            cluster_policy_updates.clone(),
        );
        let cluster_witness_cosigned = Counter::default();
        registry.register(
            "cluster_witness_cosigned",
            "Peers' checkpoints this instance cosigned and delivered",
            cluster_witness_cosigned.clone(),
        );
        let cluster_witness_refused = Gauge::default();
        registry.register(
            "cluster_witness_refused",
            "Peers whose latest checkpoint this instance refuses to cosign (it does not verify or does not extend what it cosigned)",
            cluster_witness_refused.clone(),
        );
        Metrics {
            registry,
            refresh: std::sync::Mutex::new(Vec::new()),
            decisions,
            events,
            commits,
            commit_failures,
            commit_seconds,
            batch_size,
            ledger_length,
            halted,
            http_requests,
            rotation_success,
            rotation_failures,
            rotation_last_success,
            rotation_pending_entries,
            rotation_failing,
            alerts_sent,
            alerts_failed,
            alerts_dropped,
            cluster_control_plane_up,
            cluster_reads,
            cluster_policy_rejected,
            cluster_policy_updates,
            cluster_witness_cosigned,
            cluster_witness_refused,
        }
    }

    /// Registers `f` to refresh gauges that are derived from state (e.g. the
    /// rotator's pending entries) just before every render, so that what is
    /// rendered agrees with the status.
    pub fn on_render(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        for f in self
            .refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(self);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
