//! The stored form of request records and request-id fingerprints (storage
//! format 3, `migrations/0003-request-index.md`).
//!
//! A request record says which entry decided a submitted request id, for
//! idempotent retries. The records of one append are stored as side records
//! of [`Family::REQUESTS`](super::Family::REQUESTS) in blocks keyed by their
//! first seq: `[version 1][count: u32 BE]`, then per record `[len: u32 BE]`
//! and its JSON. Blocks hold at most [`VALUE_RECORDS`] records and
//! [`VALUE_BYTES`] (unless one record is bigger).
//!
//! A fingerprint is the first four bytes of SHA-256 of a request id (never
//! 0; 0 marks an entry that is not a submission). Fingerprints by seq are
//! stored as side records of
//! [`Family::REQUEST_FINGERPRINTS`](super::Family::REQUEST_FINGERPRINTS):
//! blocks of up to [`FINGERPRINT_BLOCK`] little-endian `u32`s keyed by the
//! first seq. The ledger's in-memory request index is built from them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{StoreError, VALUE_BYTES, VALUE_RECORDS};
use crate::kernel::Status;

const REQUESTS_VERSION: u8 = 1;

/// Entries per fingerprint block: 4 KiB of fingerprints, like a chunk.
pub const FINGERPRINT_BLOCK: u64 = 1024;

/// What is remembered of a submitted request, for idempotent retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The submitted `request_id`. (Format 2 kept it only in the record's
    /// key, hence the default when such a record is read for migration.)
    #[serde(default)]
    pub request_id: String,
    /// Seq of the entry that recorded the decision.
    pub seq: u64,
    /// Canonical hash of the submitted request object.
    pub content_hash: String,
    /// Receipt status.
    pub status: Status,
    /// The tool's result, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_result: Option<Value>,
}

fn record_json(r: &RequestRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("request records serialize")
}

fn encode_block(json: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + json.iter().map(|j| 4 + j.len()).sum::<usize>());
    out.push(REQUESTS_VERSION);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    for j in json {
        out.extend_from_slice(&(j.len() as u32).to_be_bytes());
        out.extend_from_slice(j);
    }
    out
}

/// The records (in seq order) as blocks, each keyed by its first seq.
pub fn encode_blocks(requests: &[RequestRecord]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut first = 0;
    let mut bytes = 5;
    for r in requests {
        let json = record_json(r);
        if !block.is_empty()
            && (block.len() >= VALUE_RECORDS || bytes + 4 + json.len() > VALUE_BYTES)
        {
            out.push((first, encode_block(&block)));
            block.clear();
            bytes = 5;
        }
        if block.is_empty() {
            first = r.seq;
        }
        bytes += 4 + json.len();
        block.push(json);
    }
    if !block.is_empty() {
        out.push((first, encode_block(&block)));
    }
    out
}

/// The records of the block stored under `first_seq`.
pub fn decode_block(first_seq: u64, bytes: &[u8]) -> Result<Vec<RequestRecord>, StoreError> {
    let bad = |what: String| {
        StoreError::Engine(format!(
            "request records stored at entry {first_seq} are unreadable: {what}"
        ))
    };
    if bytes.len() < 5 || bytes[0] != REQUESTS_VERSION {
        return Err(bad("bad header".into()));
    }
    let count = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len()));
    let mut at = 5;
    for _ in 0..count {
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| bad("truncated".into()))?;
        at += 4;
        let json = bytes
            .get(at..at + len)
            .ok_or_else(|| bad("truncated".into()))?;
        out.push(serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?);
        at += len;
    }
    if at != bytes.len() {
        return Err(bad("trailing bytes".into()));
    }
    Ok(out)
}

/// The 32-bit fingerprint of a request id; never 0 (0 marks "no request").
/// Stable across builds: it is persisted.
pub fn fingerprint(request_id: &str) -> u32 {
    let digest = Sha256::digest(request_id.as_bytes());
    let fp = u32::from_le_bytes(digest[..4].try_into().expect("4 bytes"));
    fp.max(1)
}

/// Fingerprints as stored: little-endian `u32`s.
pub fn encode_fingerprints(fps: &[u32]) -> Vec<u8> {
    fps.iter().flat_map(|fp| fp.to_le_bytes()).collect()
}

/// Stored fingerprints; None when the bytes are not a whole number of them.
pub fn decode_fingerprints(bytes: &[u8]) -> Option<impl Iterator<Item = u32> + '_> {
    bytes.len().is_multiple_of(4).then(|| {
        bytes
            .chunks_exact(4)
            .map(|fp| u32::from_le_bytes(fp.try_into().expect("4 bytes")))
    })
}

/// An ACCEPTED request record of `request_id` decided at `seq` (tests).
#[cfg(test)]
pub(crate) fn test_record(request_id: &str, seq: u64) -> RequestRecord {
    RequestRecord {
        request_id: request_id.into(),
        seq,
        content_hash: format!("h{seq}"),
        status: Status::Accepted,
        tool_result: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_record as record;

    #[test]
    fn request_blocks_are_bounded_and_keep_every_record_in_order() {
        let mut records: Vec<RequestRecord> = (0..300)
            .map(|seq| record(&format!("req-{seq}"), seq))
            .collect();
        // One record bigger than a block on its own.
        records[150].tool_result = Some(serde_json::json!("x".repeat(2 * VALUE_BYTES)));
        let blocks = encode_blocks(&records);
        let mut back = Vec::new();
        for (first, block) in &blocks {
            let decoded = decode_block(*first, block).unwrap();
            assert_eq!(decoded[0].seq, *first);
            assert!(block.len() <= VALUE_BYTES || decoded.len() == 1);
            assert!(decoded.len() <= VALUE_RECORDS);
            back.extend(decoded);
        }
        assert_eq!(back, records);
        assert!(blocks.len() > 300 / VALUE_RECORDS);
    }

    #[test]
    fn fingerprints_are_stable_and_never_zero() {
        // Persisted fingerprints must not change between builds.
        assert_eq!(fingerprint("a"), 0x1281_97ca);
        assert_ne!(fingerprint(""), 0);
        let fps = [1, 0x1281_97ca, u32::MAX];
        let bytes = encode_fingerprints(&fps);
        assert_eq!(
            decode_fingerprints(&bytes).unwrap().collect::<Vec<_>>(),
            fps
        );
        assert!(decode_fingerprints(&bytes[1..]).is_none());
    }
}
