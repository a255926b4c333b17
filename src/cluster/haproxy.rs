//! A working HAProxy (2.6) configuration for a cluster's members, from
//! their member objects: one agent token stays on one member, and only
//! members whose `/ready` answers 200 get traffic.
//!
//! `balance hdr(Authorization)` with `hash-type consistent` hashes the
//! bearer token, so every request of one token lands on one member while it
//! is up (its request ids and permit nonces stay exact there), and only the
//! tokens of a member that goes down move. `option httpchk GET /ready` with
//! `http-check expect status 200` takes a member out of rotation when its
//! ledger cannot accept entries; `retries` with `option redispatch` sends a
//! request whose connection was refused (a member just died, before its
//! checks failed) to another member at once — a refused connection carried
//! no request, so nothing is decided twice. Pure text: no I/O here.

use std::time::Duration;

use super::member::MemberRecord;

/// The backend's name (`add server kernels/<kernel id> …` on the runtime API).
pub const BACKEND: &str = "kernels";

/// Settings of the generated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// Where HAProxy listens for agents (`*:8080`).
    pub bind: String,
    /// Interval between health checks of each member.
    pub check_interval: Duration,
    /// The runtime API socket (`stats socket … level admin`), if wanted.
    pub stats_socket: Option<String>,
}

/// One `server` line's target, from a member's advertised URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The member's kernel id (the server's name).
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Whether the member speaks TLS.
    pub tls: bool,
}

impl Target {
    /// The target of `member`, or why its advertised URL cannot be one.
    pub fn of(member: &MemberRecord) -> Result<Target, String> {
        let url = reqwest::Url::parse(&member.advertise_url).map_err(|e| {
            format!(
                "{}: advertise_url {}: {e}",
                member.kernel_id, member.advertise_url
            )
        })?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("{}: advertise_url has no host", member.kernel_id))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{}: advertise_url has no port", member.kernel_id))?;
        if url.path() != "/" && !url.path().is_empty() {
            return Err(format!(
                "{}: advertise_url {} has a path; HAProxy forwards to host:port",
                member.kernel_id, member.advertise_url
            ));
        }
        Ok(Target {
            name: member.kernel_id.clone(),
            address: format!("{host}:{port}"),
            tls: url.scheme() == "https",
        })
    }

    /// The address and options of its `server` line.
    fn params(&self, check_interval: Duration) -> String {
        let tls = if self.tls {
            " ssl verify required ca-file /etc/ssl/certs/ca-certificates.crt"
        } else {
            ""
        };
        format!(
            "{}{tls} check inter {} fall 2 rise 2",
            self.address,
            haproxy_duration(check_interval)
        )
    }

    /// The `server` line of the backend.
    pub fn server_line(&self, check_interval: Duration) -> String {
        format!("server {} {}", self.name, self.params(check_interval))
    }

    /// The runtime API commands that add this member to a running HAProxy
    /// without a reload: one line, the commands separated by `;` (the
    /// admin socket runs one line per connection). A server added at run
    /// time starts in maintenance with its checks off: both are enabled.
    pub fn runtime_add(&self, check_interval: Duration) -> String {
        let server = format!("{BACKEND}/{}", self.name);
        format!(
            "add server {server} {}; enable health {server}; enable server {server}",
            self.params(check_interval)
        )
    }
}

/// The runtime API commands that take member `kernel_id` out of a running
/// HAProxy: into maintenance (no new requests), then removed (HAProxy
/// refuses the removal while the server still has connections: send the
/// line again once they are done).
pub fn runtime_del(kernel_id: &str) -> String {
    let server = format!("{BACKEND}/{kernel_id}");
    format!("disable server {server}; del server {server}")
}

/// A duration in HAProxy's syntax (`500ms`, `2s`).
fn haproxy_duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The configuration for cluster `cluster_id` with `targets`, read from
/// `source` (said in the header comment).
pub fn config(
    cluster_id: &str,
    source: &str,
    targets: &[Target],
    options: &HaproxyOptions,
) -> String {
    let mut out = String::new();
    let mut line = |l: &str| {
        out.push_str(l);
        out.push('\n');
    };
    line(&format!(
        "# HAProxy 2.6 configuration for the kernels cluster {cluster_id}"
    ));
    line(&format!(
        "# generated by `kernels cluster haproxy-config` from the member objects at {source}"
    ));
    line("# Regenerate and reload when members join or leave (or use the runtime API:");
    line(&format!(
        "# `add server {BACKEND}/<kernel id> <host:port> check …`; see deploy/README.md)."
    ));
    line("global");
    line("    log stdout format raw local0 info");
    line(
        "    # maxconn: derived from the open-file limit (a fixed value above it refuses to start)",
    );
    if let Some(socket) = &options.stats_socket {
        line(&format!("    stats socket {socket} mode 600 level admin"));
    }
    line("");
    line("defaults");
    line("    mode http");
    line("    log global");
    line("    option httplog");
    line("    timeout connect 5s");
    line("    timeout client 60s");
    line("    timeout server 60s");
    line("    timeout http-request 10s");
    line("    # A refused connection carried no request: try another member at once.");
    line("    retries 3");
    line("    option redispatch 1");
    line("");
    line("frontend kernels_in");
    line(&format!("    bind {}", options.bind));
    line(&format!("    default_backend {BACKEND}"));
    line("");
    line(&format!("backend {BACKEND}"));
    line("    # One agent token stays on one member while it is up.");
    line("    balance hdr(Authorization)");
    line("    hash-type consistent");
    line("    option httpchk GET /ready");
    line("    http-check expect status 200");
    for target in targets {
        line(&format!(
            "    {}",
            target.server_line(options.check_interval)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, url: &str) -> MemberRecord {
        MemberRecord {
            cluster_id: "prod".into(),
            kernel_id: id.into(),
            instance: 1,
            advertise_url: url.into(),
            verifier_key: None,
            witness_key: None,
            started_at: 0,
            ledger_genesis: String::new(),
            software_version: String::new(),
        }
    }

    #[test]
    fn targets_come_from_advertised_urls() {
        let t = Target::of(&member("prod-001", "http://10.0.0.1:8080")).unwrap();
        assert_eq!((t.address.as_str(), t.tls), ("10.0.0.1:8080", false));
        let t = Target::of(&member("prod-002", "https://k2.example")).unwrap();
        assert_eq!((t.address.as_str(), t.tls), ("k2.example:443", true));
        let t = Target::of(&member("prod-003", "http://[::1]:9000/")).unwrap();
        assert_eq!(t.address, "[::1]:9000");
        assert!(
            Target::of(&member("prod-004", "http://h:1/sub"))
                .unwrap_err()
                .contains("path")
        );
        assert!(Target::of(&member("prod-005", "nonsense")).is_err());
    }

    #[test]
    fn the_config_hashes_the_token_and_checks_ready() {
        let targets = vec![
            Target::of(&member("prod-001", "http://10.0.0.1:8080")).unwrap(),
            Target::of(&member("prod-002", "https://k2.example:8443")).unwrap(),
        ];
        let text = config(
            "prod",
            "s3://b/p/clusters/prod/",
            &targets,
            &HaproxyOptions {
                bind: "*:8080".into(),
                check_interval: Duration::from_millis(500),
                stats_socket: Some("/run/haproxy/admin.sock".into()),
            },
        );
        for want in [
            "    balance hdr(Authorization)\n    hash-type consistent\n",
            "    option httpchk GET /ready\n    http-check expect status 200\n",
            "    server prod-001 10.0.0.1:8080 check inter 500ms fall 2 rise 2\n",
            "    server prod-002 k2.example:8443 ssl verify required ca-file /etc/ssl/certs/ca-certificates.crt check inter 500ms fall 2 rise 2\n",
            "    stats socket /run/haproxy/admin.sock mode 600 level admin\n",
            "    bind *:8080\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(haproxy_duration(Duration::from_secs(2)), "2s");
        assert_eq!(
            targets[0].runtime_add(Duration::from_secs(2)),
            "add server kernels/prod-001 10.0.0.1:8080 check inter 2s fall 2 rise 2; enable health kernels/prod-001; enable server kernels/prod-001"
        );
        assert_eq!(
            runtime_del("prod-001"),
            "disable server kernels/prod-001; del server kernels/prod-001"
        );
    }
}
