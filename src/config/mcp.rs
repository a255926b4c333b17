//! The typed `mcp:` section: the MCP servers `kernels serve` fronts at
//! `/mcp/{name}`, checked (names usable in a path, http(s) URLs), and the
//! front's limits, with `KERNELS_MCP_TIMEOUT` and
//! `KERNELS_MCP_ALLOWED_ORIGINS` over the file.
//!
//! ```yaml
//! mcp:
//!   servers:
//!     - {name: github, url: "http://127.0.0.1:9100/mcp", tool_prefix: "github."}
//!   timeout: 5m            # how long an upstream may take to start answering
//!   allowed_origins: []    # browser origins allowed to call the front (none)
//! ```

use std::time::Duration;

use super::duration::duration_setting;
use super::error::{ConfigError, err};
use super::raw::RawMcp;

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
    /// Validates the section (the environment over the file); the error
    /// names the key or variable.
    pub fn from_raw(
        raw: RawMcp,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<McpConfig, ConfigError> {
        let timeout = duration_setting(
            "mcp.timeout",
            "KERNELS_MCP_TIMEOUT",
            raw.timeout.as_deref(),
            "5m",
            env,
        )?;
        let allowed_origins = match env("KERNELS_MCP_ALLOWED_ORIGINS") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            None => raw.allowed_origins,
        };
        let mut servers: Vec<McpServer> = Vec::new();
        for (i, s) in raw.servers.into_iter().enumerate() {
            let ok_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return Err(err(format!(
                    "mcp.servers[{i}].name '{}' must be 1-64 characters of A-Z a-z 0-9 - _",
                    s.name
                )));
            }
            if servers.iter().any(|o| o.name == s.name) {
                return Err(err(format!(
                    "mcp.servers[{i}].name '{}' is used twice",
                    s.name
                )));
            }
            let url = reqwest::Url::parse(&s.url)
                .map_err(|e| err(format!("mcp.servers[{i}].url '{}': {e}", s.url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(err(format!(
                    "mcp.servers[{i}].url '{}' must be an http or https URL",
                    s.url
                )));
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
            allowed_origins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(
        yaml: &str,
        env: &[(&str, &str)],
    ) -> Result<McpConfig, Box<dyn std::error::Error>> {
        let raw: RawMcp = serde_norway::from_str(yaml)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(McpConfig::from_raw(raw, &lookup)?)
    }

    fn parse(yaml: &str) -> Result<McpConfig, Box<dyn std::error::Error>> {
        parse_with(yaml, &[])
    }

    #[test]
    fn the_example_configuration_loads_with_its_mcp_section() {
        let raw: super::super::RawConfig =
            serde_norway::from_str(include_str!("../../config/kernels.yaml")).unwrap();
        assert!(raw.mcp.is_some());
        let config =
            super::super::Config::from_raw(raw, &super::super::Overrides::default(), &|_| None)
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

    #[test]
    fn the_environment_overrides_the_timeout_and_origins_naming_the_variable() {
        let c = parse_with(
            "timeout: 30s\nallowed_origins: ['https://a.example']\n",
            &[
                ("KERNELS_MCP_TIMEOUT", "2m"),
                (
                    "KERNELS_MCP_ALLOWED_ORIGINS",
                    "https://b.example, https://c.example",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(120));
        assert_eq!(
            c.allowed_origins,
            vec!["https://b.example", "https://c.example"]
        );
        let e = parse_with("{}", &[("KERNELS_MCP_TIMEOUT", "0s")]).unwrap_err();
        assert!(e.to_string().contains("KERNELS_MCP_TIMEOUT"), "{e}");
    }
}
