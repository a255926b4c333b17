//! The `cluster:` section: which cluster an instance belongs to, its number
//! in it, where the shared control plane lives in S3, and how the instance
//! is reached — validated into a [`ClusterConfig`].
//!
//! Without an id (`cluster.id` or `KERNELS_CLUSTER_ID`) there is no cluster
//! and nothing else changes. The S3 settings default to `rotation`'s (every
//! deployment already has that bucket for its archives). With an instance
//! number the kernel id is `<id>-<instance as 3 digits>`; an explicit kernel
//! id that says otherwise is refused rather than silently overridden.

use std::time::Duration;

use serde::Deserialize;

use super::duration::duration_setting;
use super::error::{ConfigError, err};
use super::raw::RawRotation;

/// The highest instance number (the kernel id has three digits for it).
pub const MAX_INSTANCE: u32 = 999;

/// `cluster:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster id (`prod`).
    pub id: Option<String>,
    /// This instance's number (0-999).
    pub instance: Option<u32>,
    /// Bucket of the control plane (default: `rotation.bucket`).
    pub bucket: Option<String>,
    /// Key prefix (default: `rotation.prefix`).
    pub prefix: Option<String>,
    /// Region (default: `rotation.region`).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (default: `rotation.endpoint`).
    pub endpoint: Option<String>,
    /// Path-style addressing (default: `rotation.force_path_style`).
    pub force_path_style: Option<bool>,
    /// How often the shared policy and the halt flag are read (default `10s`).
    pub poll_interval: Option<String>,
    /// The URL other members, the CLI and the load balancer reach this
    /// instance at (default: `http://` + the bound listen address).
    pub advertise_url: Option<String>,
    /// A token every member accepts (the auditor role is enough): with it
    /// this instance witnesses its peers' checkpoints (default: none, no
    /// witnessing).
    pub peer_token: Option<String>,
}

/// The validated cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster id.
    pub id: String,
    /// This instance's number; only `serve` needs it (the operator's
    /// commands do not).
    pub instance: Option<u32>,
    /// Bucket.
    pub bucket: String,
    /// Key prefix (no slashes at either end).
    pub prefix: String,
    /// Region.
    pub region: String,
    /// Custom endpoint.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// How often the control plane is read.
    pub poll_interval: Duration,
    /// The URL this instance is reached at, when configured.
    pub advertise_url: Option<String>,
    /// The token this instance presents to its peers to witness their
    /// checkpoints; `None`: it does not witness.
    pub peer_token: Option<PeerToken>,
}

/// `cluster.peer_token`: a secret, never printed (`Debug` shows no token).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerToken(pub String);

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

impl ClusterConfig {
    /// The kernel id of instance `instance` of cluster `id`.
    pub fn kernel_id_of(id: &str, instance: u32) -> String {
        format!("{id}-{instance:03}")
    }

    /// This instance's kernel id, when it has an instance number.
    pub fn kernel_id(&self) -> Option<String> {
        self.instance.map(|i| Self::kernel_id_of(&self.id, i))
    }
}

/// Whether `id` can name a cluster: 1-63 ASCII letters, digits, `-`, `_`
/// or `.` (it is part of object keys and of every member's kernel id).
fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

/// Validates `cluster:` with its `KERNELS_CLUSTER_*` overrides; `None` when
/// no cluster id is given. `rotation` is the rotation section with its
/// overrides, whose S3 settings (and `rotation_prefix`, already defaulted)
/// are the defaults.
pub(super) fn from_raw(
    raw: Option<RawCluster>,
    rotation: &RawRotation,
    rotation_prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let mut raw = raw.unwrap_or_default();
    for (var, slot) in [
        ("KERNELS_CLUSTER_ID", &mut raw.id),
        ("KERNELS_CLUSTER_BUCKET", &mut raw.bucket),
        ("KERNELS_CLUSTER_PREFIX", &mut raw.prefix),
        ("KERNELS_CLUSTER_REGION", &mut raw.region),
        ("KERNELS_CLUSTER_ENDPOINT", &mut raw.endpoint),
        ("KERNELS_CLUSTER_ADVERTISE_URL", &mut raw.advertise_url),
        ("KERNELS_CLUSTER_PEER_TOKEN", &mut raw.peer_token),
    ] {
        if let Some(v) = env(var) {
            *slot = Some(v);
        }
    }
    if let Some(v) = env("KERNELS_CLUSTER_INSTANCE") {
        let n = v.trim().parse::<u32>().map_err(|_| {
            err(format!(
                "KERNELS_CLUSTER_INSTANCE '{v}' is not a number from 0 to {MAX_INSTANCE}"
            ))
        })?;
        raw.instance = Some(n);
    }
    if let Some(v) = env("KERNELS_CLUSTER_FORCE_PATH_STYLE") {
        raw.force_path_style = Some(matches!(v.as_str(), "1" | "true" | "yes"));
    }
    let Some(id) = raw.id.filter(|id| !id.is_empty()) else {
        let given = raw.instance.is_some()
            || raw.bucket.is_some()
            || raw.advertise_url.is_some()
            || raw.poll_interval.is_some();
        if given {
            return Err(err(
                "cluster: settings are given but no cluster.id (KERNELS_CLUSTER_ID)",
            ));
        }
        return Ok(None);
    };
    if !valid_id(&id) {
        return Err(err(format!(
            "cluster.id '{id}' must be 1-63 ASCII letters, digits, '-', '_' or '.'"
        )));
    }
    if let Some(n) = raw.instance
        && n > MAX_INSTANCE
    {
        return Err(err(format!(
            "cluster.instance {n} is larger than {MAX_INSTANCE} (the kernel id has three digits for it)"
        )));
    }
    let bucket = raw
        .bucket
        .or_else(|| rotation.bucket.clone())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            err("cluster.bucket is required (or rotation.bucket, which it defaults to)")
        })?;
    let prefix = raw
        .prefix
        .unwrap_or_else(|| rotation_prefix.to_owned())
        .trim_matches('/')
        .to_owned();
    let poll_interval = duration_setting(
        "cluster.poll_interval",
        "KERNELS_CLUSTER_POLL_INTERVAL",
        raw.poll_interval.as_deref(),
        "10s",
        env,
    )?;
    if poll_interval < Duration::from_millis(100) {
        return Err(err("cluster.poll_interval must be at least 100ms"));
    }
    let advertise_url = match raw.advertise_url.filter(|u| !u.is_empty()) {
        Some(url) => {
            let parsed = reqwest::Url::parse(&url)
                .map_err(|e| err(format!("cluster.advertise_url '{url}': {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(err(format!(
                    "cluster.advertise_url '{url}' must be an http:// or https:// URL with a host"
                )));
            }
            Some(url.trim_end_matches('/').to_owned())
        }
        None => None,
    };
    Ok(Some(ClusterConfig {
        id,
        instance: raw.instance,
        bucket,
        prefix,
        region: raw
            .region
            .or_else(|| rotation.region.clone())
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint: raw
            .endpoint
            .or_else(|| rotation.endpoint.clone())
            .filter(|e| !e.is_empty()),
        force_path_style: raw
            .force_path_style
            .or(rotation.force_path_style)
            .unwrap_or(false),
        poll_interval,
        advertise_url,
        peer_token: raw.peer_token.filter(|t| !t.is_empty()).map(PeerToken),
    }))
}

/// The kernel id: the cluster's `<id>-<NNN>` when there is an instance
/// number (an explicit id must agree with it), else the explicit id, else
/// `kernel-001`.
pub(super) fn kernel_id(
    explicit: Option<String>,
    cluster: Option<&ClusterConfig>,
) -> Result<String, ConfigError> {
    match (explicit, cluster.and_then(ClusterConfig::kernel_id)) {
        (Some(given), Some(derived)) if given != derived => {
            let c = cluster.expect("derived from it");
            Err(err(format!(
                "kernel.id '{given}' conflicts with the cluster's kernel id '{derived}' (cluster.id {}, cluster.instance {}): a member's id is <cluster id>-<instance>; remove kernel.id (KERNELS_KERNEL_ID, --kernel-id) or make it match",
                c.id,
                c.instance.unwrap_or_default()
            )))
        }
        (_, Some(derived)) => Ok(derived),
        (Some(given), None) => Ok(given),
        (None, None) => Ok("kernel-001".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Config, Overrides, RawConfig};
    use super::*;

    fn load(yaml: &str, pairs: &[(&str, &str)], flags: &Overrides) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let raw: RawConfig = serde_norway::from_str(yaml).unwrap();
        Config::from_raw(raw, flags, &move |k| map.get(k).cloned())
    }

    #[test]
    fn without_a_cluster_id_nothing_changes() {
        let cfg = load("kernel: {id: solo}\n", &[], &Overrides::default()).unwrap();
        assert_eq!(cfg.cluster, None);
        assert_eq!(cfg.kernel_id, "solo");
    }

    #[test]
    fn the_kernel_id_is_the_cluster_id_and_three_digits() {
        let cfg = load(
            "cluster: {id: prod, instance: 2, bucket: control, poll_interval: 5s, advertise_url: 'http://10.0.0.2:8080/'}\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.kernel_id, "prod-002");
        let c = cfg.cluster.unwrap();
        assert_eq!(c.bucket, "control");
        assert_eq!(c.prefix, "kernels-archive");
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.advertise_url.as_deref(), Some("http://10.0.0.2:8080"));
    }

    #[test]
    fn the_peer_token_comes_from_the_file_or_env_and_is_never_printed() {
        let yaml = "cluster: {id: prod, instance: 1, bucket: b, peer_token: from-file}\n";
        let c = load(yaml, &[], &Overrides::default())
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.peer_token, Some(PeerToken("from-file".into())));
        let env = [("KERNELS_CLUSTER_PEER_TOKEN", "from-env")];
        let c = load(yaml, &env, &Overrides::default())
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(c.peer_token, Some(PeerToken("from-env".into())));
        assert!(!format!("{c:?}").contains("from-env"), "{c:?}");
        let none = load(
            "cluster: {id: prod, bucket: b}\n",
            &[],
            &Overrides::default(),
        );
        assert_eq!(none.unwrap().cluster.unwrap().peer_token, None);
    }

    #[test]
    fn s3_settings_default_to_rotation_and_env_overrides_the_file() {
        let yaml = "rotation: {bucket: arch, prefix: /p/, region: eu-west-1, endpoint: 'http://s3:9000', force_path_style: true}\ncluster: {id: prod, instance: 1}\n";
        let c = load(yaml, &[], &Overrides::default())
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("arch", "p", "eu-west-1")
        );
        assert_eq!(c.endpoint.as_deref(), Some("http://s3:9000"));
        assert!(c.force_path_style);
        assert_eq!(c.poll_interval, Duration::from_secs(10));

        let cfg = load(
            yaml,
            &[
                ("KERNELS_CLUSTER_INSTANCE", "17"),
                ("KERNELS_CLUSTER_BUCKET", "ctl"),
                ("KERNELS_CLUSTER_PREFIX", "q"),
                ("KERNELS_CLUSTER_POLL_INTERVAL", "250ms"),
                ("KERNELS_CLUSTER_ENDPOINT", "http://other:9000"),
                ("KERNELS_CLUSTER_FORCE_PATH_STYLE", "false"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.kernel_id, "prod-017");
        let c = cfg.cluster.unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("ctl", "q"));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.endpoint.as_deref(), Some("http://other:9000"));
        assert!(!c.force_path_style);

        // The cluster can come from the environment alone.
        let cfg = load(
            "",
            &[
                ("KERNELS_CLUSTER_ID", "edge"),
                ("KERNELS_CLUSTER_INSTANCE", "0"),
                ("KERNELS_ROTATION_BUCKET", "b"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.kernel_id, "edge-000");
        assert_eq!(cfg.cluster.unwrap().bucket, "b");
    }

    #[test]
    fn an_explicit_kernel_id_must_agree_with_the_cluster() {
        let yaml = "kernel: {id: prod-002}\ncluster: {id: prod, instance: 2, bucket: b}\n";
        assert_eq!(
            load(yaml, &[], &Overrides::default()).unwrap().kernel_id,
            "prod-002"
        );
        for (yaml, env, flag) in [
            (
                "kernel: {id: prod-001}\ncluster: {id: prod, instance: 2, bucket: b}\n",
                None,
                None,
            ),
            (
                "cluster: {id: prod, instance: 2, bucket: b}\n",
                Some("other"),
                None,
            ),
            (
                "cluster: {id: prod, instance: 2, bucket: b}\n",
                None,
                Some("prod-2"),
            ),
        ] {
            let env: Vec<(&str, &str)> = env
                .map(|v| vec![("KERNELS_KERNEL_ID", v)])
                .unwrap_or_default();
            let flags = Overrides {
                kernel_id: flag.map(str::to_owned),
                ..Overrides::default()
            };
            let e = load(yaml, &env, &flags).unwrap_err().to_string();
            assert!(
                e.contains("conflicts with the cluster's kernel id 'prod-002'"),
                "{e}"
            );
        }
        // Without an instance number (an operator's station) the id is free.
        let cfg = load(
            "kernel: {id: ops}\ncluster: {id: prod, bucket: b}\n",
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.kernel_id, "ops");
        assert_eq!(cfg.cluster.unwrap().instance, None);
    }

    #[test]
    fn bad_cluster_settings_are_refused_naming_them() {
        for (yaml, env, want) in [
            (
                "cluster: {id: prod, instance: 1}\n",
                vec![],
                "cluster.bucket is required",
            ),
            (
                "cluster: {id: 'a/b', bucket: b}\n",
                vec![],
                "cluster.id 'a/b'",
            ),
            (
                "cluster: {id: prod, instance: 1000, bucket: b}\n",
                vec![],
                "larger than 999",
            ),
            (
                "cluster: {id: prod, bucket: b, poll_interval: 0s}\n",
                vec![],
                "cluster.poll_interval",
            ),
            (
                "cluster: {id: prod, bucket: b, poll_interval: 50ms}\n",
                vec![],
                "at least 100ms",
            ),
            (
                "cluster: {id: prod, bucket: b, advertise_url: 'ftp://x'}\n",
                vec![],
                "advertise_url",
            ),
            (
                "cluster: {id: prod, bucket: b, advertise_url: 'not a url'}\n",
                vec![],
                "advertise_url",
            ),
            (
                "cluster: {instance: 1, bucket: b}\n",
                vec![],
                "no cluster.id",
            ),
            (
                "cluster: {id: prod, bucket: b}\n",
                vec![("KERNELS_CLUSTER_INSTANCE", "x")],
                "KERNELS_CLUSTER_INSTANCE 'x'",
            ),
            (
                "cluster: {id: prod, bucket: b}\n",
                vec![("KERNELS_CLUSTER_POLL_INTERVAL", "soon")],
                "KERNELS_CLUSTER_POLL_INTERVAL",
            ),
        ] {
            let e = load(yaml, &env, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let e = serde_norway::from_str::<RawConfig>("cluster: {id: p, instanse: 1}\n").unwrap_err();
        assert!(e.to_string().contains("instanse"), "{e}");
    }
}
