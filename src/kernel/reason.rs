//! Why a request was denied, and the receipt status that follows from it.
//!
//! A DENY entry records its reason only as error text (the Python library's
//! format, part of the hash). [`DenyReason`] is the one table of those texts:
//! the decision writes the error through it, and folding an entry back into
//! the state reads the reason (hence the status) through it, so the two can
//! never disagree about which denials are `FAILED`.

use serde::{Deserialize, Serialize};

/// Receipt status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Allowed (and executed, when a tool was called).
    Accepted,
    /// Denied by a check.
    Rejected,
    /// Allowed, but the tool failed; recorded as DENY.
    Failed,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "ACCEPTED",
            Status::Rejected => "REJECTED",
            Status::Failed => "FAILED",
        }
    }
}

/// Why a request was denied, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The request failed structural validation.
    Invalid,
    /// A fail-closed variant found the request ambiguous.
    Ambiguous,
    /// A tool call without a permit while permits are required.
    MissingPermit,
    /// The permit did not verify.
    Permit,
    /// The jurisdiction policy forbids it.
    Jurisdiction,
    /// The variant's own requirements are not met.
    Variant,
    /// The allowed tool failed when run.
    ToolFailed,
}

impl DenyReason {
    /// Every reason.
    pub const ALL: [DenyReason; 7] = [
        DenyReason::Invalid,
        DenyReason::Ambiguous,
        DenyReason::MissingPermit,
        DenyReason::Permit,
        DenyReason::Jurisdiction,
        DenyReason::Variant,
        DenyReason::ToolFailed,
    ];

    /// How the entry's error text starts (the library's wording).
    pub fn prefix(self) -> &'static str {
        match self {
            DenyReason::Invalid => "Validation failed: ",
            DenyReason::Ambiguous => "Ambiguity detected: ",
            DenyReason::MissingPermit => "MISSING_PERMIT",
            DenyReason::Permit => "Permit verification failed: ",
            DenyReason::Jurisdiction => "Jurisdiction denied: ",
            DenyReason::Variant => "Variant requirements not met: ",
            DenyReason::ToolFailed => "Tool execution failed: ",
        }
    }

    /// The entry's error text for this reason and `detail`.
    pub fn error(self, detail: &str) -> String {
        format!("{}{detail}", self.prefix())
    }

    /// The receipt status of a denial for this reason.
    pub fn status(self) -> Status {
        match self {
            DenyReason::ToolFailed => Status::Failed,
            _ => Status::Rejected,
        }
    }

    /// The reason a recorded error text was written for, if it is one of ours.
    pub fn of_error(text: &str) -> Option<DenyReason> {
        DenyReason::ALL
            .into_iter()
            .find(|r| text.starts_with(r.prefix()))
    }

    /// The status of a recorded DENY with `error` (REJECTED when the text
    /// is not one of ours, as the library's receipts say).
    pub fn status_of_denial(error: Option<&str>) -> Status {
        error
            .and_then(DenyReason::of_error)
            .map_or(Status::Rejected, DenyReason::status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_from_its_own_text() {
        for reason in DenyReason::ALL {
            assert_eq!(DenyReason::of_error(&reason.error("x; y")), Some(reason));
        }
        assert_eq!(
            DenyReason::status_of_denial(Some("Tool execution failed: boom")),
            Status::Failed
        );
        assert_eq!(
            DenyReason::status_of_denial(Some("Jurisdiction denied: no")),
            Status::Rejected
        );
        assert_eq!(DenyReason::status_of_denial(None), Status::Rejected);
        assert_eq!(
            DenyReason::status_of_denial(Some("TOCTOU check failed")),
            Status::Rejected,
            "no decision writes it, so it is not a tool failure"
        );
    }
}
