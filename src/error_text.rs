//! An error as one line of text with all its causes: what the logs, the
//! CLI and the API's `upstream` and `unavailable` answers show.
//!
//! The SDKs' errors (S3's `SdkError`, reqwest's) say little in their own
//! `Display` ("dispatch failure", "error sending request"); the reason
//! (connection refused, a TLS failure, a timeout) is in their sources.

use std::error::Error;

/// `e`, then each of its sources, joined by `": "`.
pub fn chain(e: &(dyn Error + '_)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_on_the_line() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(chain(&e), "dispatch failure: connection refused");
        assert_eq!(chain(&std::io::Error::other("plain")), "plain");
    }
}
