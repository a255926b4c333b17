//! The configuration's one error: what is wrong, naming the key, variable
//! or file it concerns.

/// A configuration problem, with the key or file it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

pub(super) fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}
