//! The stored form of an entry (storage format 1).
//!
//! An entry is stored as its hash preimage: a small binary header (seq, the
//! raw `prev_hash` and `entry_hash`) followed by the canonical JSON of its 19
//! hashed fields — exactly the bytes `entry_hash` is computed over — and the
//! canonical JSON of its payload, if any. Verifying a stored chain is then
//! one SHA-256 per entry with no JSON parsing, and any changed byte changes a
//! hash. The full [`Entry`] is rebuilt from the same bytes on read.
//!
//! ```text
//! [0]      record version (1)
//! [1..9]   ledger_seq, big-endian
//! [9..41]  prev_hash, raw 32 bytes
//! [41..73] entry_hash, raw 32 bytes
//! [73..77] preimage length n, big-endian
//! [77..77+n]  canonical JSON of the 19 hashed fields
//! [77+n..]    canonical JSON of the payload (absent when empty)
//! ```

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::entry::{Entry, Text};

const RECORD_VERSION: u8 = 1;
const HEADER: usize = 77;

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a record of a version we know.
    #[error("unreadable record: {0}")]
    Unreadable(String),
}

/// Encodes an entry for storage.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let preimage = entry.hashed_json();
    let payload = entry.payload.as_ref().map(|p| {
        crate::canonical::to_string(p).expect("payloads are hashed before they are sealed")
    });
    let mut out =
        Vec::with_capacity(HEADER + preimage.len() + payload.as_ref().map_or(0, String::len));
    out.push(RECORD_VERSION);
    out.extend_from_slice(&entry.ledger_seq.to_be_bytes());
    out.extend_from_slice(&raw_hash(&entry.prev_hash));
    out.extend_from_slice(&raw_hash(&entry.entry_hash));
    out.extend_from_slice(&(preimage.len() as u32).to_be_bytes());
    out.extend_from_slice(preimage.as_bytes());
    if let Some(p) = payload {
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn raw_hash(hex_hash: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).expect("entries we seal carry hex SHA-256 hashes");
    out
}

/// The parts of a stored entry, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct StoredParts<'a> {
    /// `ledger_seq`.
    pub seq: u64,
    /// Raw `prev_hash`.
    pub prev_hash: &'a [u8; 32],
    /// Raw `entry_hash`.
    pub entry_hash: &'a [u8; 32],
    /// Canonical JSON of the hashed fields.
    pub preimage: &'a [u8],
    /// Canonical JSON of the payload (empty when none).
    pub payload: &'a [u8],
}

impl StoredParts<'_> {
    /// The entry hash recomputed from the stored preimage.
    pub fn computed_hash(&self) -> [u8; 32] {
        let mut prev = [0u8; 64];
        hex::encode_to_slice(self.prev_hash, &mut prev).expect("64 bytes hold 32 in hex");
        let mut h = Sha256::new();
        h.update(prev);
        h.update(b":");
        h.update(self.preimage);
        h.finalize().into()
    }
}

/// Splits stored bytes into their parts (no JSON parsing).
pub fn split(bytes: &[u8]) -> Result<StoredParts<'_>, RecordError> {
    if bytes.len() < HEADER {
        return Err(RecordError::Unreadable(format!(
            "{} bytes is shorter than a record header",
            bytes.len()
        )));
    }
    if bytes[0] != RECORD_VERSION {
        return Err(RecordError::Unreadable(format!(
            "record version {}",
            bytes[0]
        )));
    }
    let seq = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let prev_hash: &[u8; 32] = bytes[9..41].try_into().expect("32 bytes");
    let entry_hash: &[u8; 32] = bytes[41..73].try_into().expect("32 bytes");
    let n = u32::from_be_bytes(bytes[73..77].try_into().expect("4 bytes")) as usize;
    if bytes.len() < HEADER + n {
        return Err(RecordError::Unreadable(
            "preimage runs past the end of the record".into(),
        ));
    }
    Ok(StoredParts {
        seq,
        prev_hash,
        entry_hash,
        preimage: &bytes[HEADER..HEADER + n],
        payload: &bytes[HEADER + n..],
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HashedFields {
    actor: Text,
    decision: String,
    error: Option<String>,
    evidence_hash: Option<String>,
    intent: Text,
    params_hash: Option<String>,
    permit_denial_reasons: Option<Vec<String>>,
    permit_digest: Option<String>,
    permit_issuer: Option<String>,
    permit_max_executions: Option<u64>,
    permit_nonce: Option<String>,
    permit_subject: Option<String>,
    permit_verification: Option<String>,
    proposal_hash: Option<String>,
    request_id: Text,
    state_from: String,
    state_to: String,
    tool_name: Option<String>,
    ts_ms: u64,
}

/// Decodes a stored entry into an [`Entry`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, RecordError> {
    let parts = split(bytes)?;
    let f: HashedFields = serde_json::from_slice(parts.preimage)
        .map_err(|e| RecordError::Unreadable(format!("hashed fields: {e}")))?;
    let payload = if parts.payload.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(parts.payload)
                .map_err(|e| RecordError::Unreadable(format!("payload: {e}")))?,
        )
    };
    Ok(Entry {
        ledger_seq: parts.seq,
        prev_hash: hex::encode(parts.prev_hash),
        entry_hash: hex::encode(parts.entry_hash),
        ts_ms: f.ts_ms,
        request_id: f.request_id,
        actor: f.actor,
        intent: f.intent,
        decision: f.decision,
        state_from: f.state_from,
        state_to: f.state_to,
        tool_name: f.tool_name,
        params_hash: f.params_hash,
        evidence_hash: f.evidence_hash,
        error: f.error,
        permit_digest: f.permit_digest,
        permit_verification: f.permit_verification,
        permit_denial_reasons: f.permit_denial_reasons,
        proposal_hash: f.proposal_hash,
        permit_nonce: f.permit_nonce,
        permit_issuer: f.permit_issuer,
        permit_subject: f.permit_subject,
        permit_max_executions: f.permit_max_executions,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryBody, GENESIS_HASH};

    fn entry() -> Entry {
        EntryBody {
            ts_ms: 5,
            request_id: Text(serde_json::json!(42)),
            actor: "ops".into(),
            intent: "ünï 🙂".into(),
            decision: "ALLOW".into(),
            state_from: "IDLE".into(),
            state_to: "IDLE".into(),
            tool_name: Some("kernel.policy_update".into()),
            params_hash: Some(crate::canonical::sha256_of(&serde_json::json!({"a": 1.5})).unwrap()),
            permit_denial_reasons: Some(vec!["X".into()]),
            payload: Some(serde_json::json!({"a": 1.5})),
            ..EntryBody::default()
        }
        .seal(7, GENESIS_HASH)
    }

    #[test]
    fn round_trips_and_verifies_without_parsing() {
        let e = entry();
        let bytes = encode_entry(&e);
        let parts = split(&bytes).unwrap();
        assert_eq!(hex::encode(parts.computed_hash()), e.entry_hash);
        assert_eq!(decode_entry(&bytes).unwrap(), e);
    }

    #[test]
    fn any_flipped_byte_is_noticed() {
        let e = entry();
        let bytes = encode_entry(&e);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let noticed = match split(&b) {
                Err(_) => true,
                Ok(p) => {
                    p.seq != e.ledger_seq
                        || hex::encode(p.prev_hash) != e.prev_hash
                        || p.computed_hash() != *p.entry_hash
                        || hex::encode(p.entry_hash) != e.entry_hash
                        || decode_entry(&b)
                            .map(|d| d.payload_matches() != Some(Ok(true)))
                            .unwrap_or(true)
                }
            };
            assert!(noticed, "flipping byte {i} went unnoticed");
        }
    }
}
