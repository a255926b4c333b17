//! `mcp:` in the service configuration: the MCP servers `kernels serve`
//! fronts at `/mcp/{name}`, and the front's limits.
//!
//! ```yaml
//! mcp:
//!   servers:
//!     - {name: github, url: "http://127.0.0.1:9100/mcp", tool_prefix: "github."}
//!   timeout: 5m            # how long an upstream may take to start answering
//!   allowed_origins: []    # browser origins allowed to call the front (none)
//! ```

use std::time::Duration;

use serde::Deserialize;

/// `mcp:` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// The fronted servers.
    #[serde(default)]
    pub servers: Vec<RawMcpServer>,
    /// Time limit for an upstream to start answering (default `5m`).
    pub timeout: Option<String>,
    /// `Origin` values accepted (requests with any other `Origin` are 403).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// One entry of `mcp.servers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    /// The name in `/mcp/{name}`.
    pub name: String,
    /// The upstream's Streamable HTTP endpoint.
    pub url: String,
    /// Prefix of the kernel's tool names for this server (default none).
    #[serde(default)]
    pub tool_prefix: String,
}

/// A fronted MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// The name in `/mcp/{name}`.
    pub name: String,
    /// The upstream's endpoint URL.
    pub url: String,
    /// Prefix of the kernel's tool names.
    pub tool_prefix: String,
}

/// The validated `mcp:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    /// The fronted servers.
    pub servers: Vec<McpServer>,
    /// Time limit for an upstream to start answering.
    pub timeout: Duration,
    /// Accepted `Origin` values.
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(300),
            allowed_origins: Vec::new(),
        }
    }
}

impl McpConfig {
    /// Validates the section; the error names the key.
    pub fn from_raw(raw: RawMcp) -> Result<McpConfig, String> {
        let timeout = match &raw.timeout {
            Some(t) => crate::config::parse_duration(t).map_err(|e| format!("mcp.timeout: {e}"))?,
            None => McpConfig::default().timeout,
        };
        let mut servers: Vec<McpServer> = Vec::new();
        for (i, s) in raw.servers.into_iter().enumerate() {
            let ok_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return Err(format!(
                    "mcp.servers[{i}].name '{}' must be 1-64 characters of A-Z a-z 0-9 - _",
                    s.name
                ));
            }
            if servers.iter().any(|o| o.name == s.name) {
                return Err(format!("mcp.servers[{i}].name '{}' is used twice", s.name));
            }
            let url = reqwest::Url::parse(&s.url)
                .map_err(|e| format!("mcp.servers[{i}].url '{}': {e}", s.url))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!(
                    "mcp.servers[{i}].url '{}' must be an http or https URL",
                    s.url
                ));
            }
            servers.push(McpServer {
                name: s.name,
                url: s.url,
                tool_prefix: s.tool_prefix,
            });
        }
        Ok(McpConfig {
            servers,
            timeout,
            allowed_origins: raw.allowed_origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<McpConfig, String> {
        let raw: RawMcp = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        McpConfig::from_raw(raw)
    }

    #[test]
    fn the_example_configuration_loads_with_its_mcp_section() {
        let raw: crate::config::RawConfig =
            serde_norway::from_str(include_str!("../../config/kernels.yaml")).unwrap();
        assert!(raw.mcp.is_some());
        let config =
            crate::config::Config::from_raw(raw, &crate::config::Overrides::default(), &|_| None)
                .unwrap();
        assert_eq!(config.mcp, McpConfig::default());
    }

    #[test]
    fn servers_are_read_and_checked() {
        let c = parse("servers:\n  - {name: gh, url: 'http://127.0.0.1:9/mcp', tool_prefix: 'gh.'}\ntimeout: 30s\n").unwrap();
        assert_eq!(c.servers[0].tool_prefix, "gh.");
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(parse("{}").unwrap(), McpConfig::default());
        for bad in [
            "servers:\n  - {name: 'a/b', url: 'http://x/mcp'}\n",
            "servers:\n  - {name: a, url: 'http://x/mcp'}\n  - {name: a, url: 'http://y/mcp'}\n",
            "servers:\n  - {name: a, url: 'file:///etc/passwd'}\n",
            "servers:\n  - {name: a, url: 'not a url'}\n",
            "servers:\n  - {name: a, url: 'http://x/mcp', prefix: p}\n",
            "timeout: 0s\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
