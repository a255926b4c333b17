//! The sled key layout. One sled tree holds everything, with one-byte key
//! prefixes, so that an append (entries, side records, metadata) is a
//! single atomic sled batch:
//!
//! ```text
//! c <first seq: 8 bytes BE>   a chunk of consecutive entries (see `chunk`)
//! s <first seq: 8 bytes BE>   request records (Family::REQUESTS)
//! f <first seq: 8 bytes BE>   request-id fingerprints (Family::REQUEST_FINGERPRINTS)
//! t <level: 1 byte><half: 7 bytes BE>  Merkle tree tile halves (Family::TILES)
//! m <name>                    metadata (format version, kernel id, checkpoint)
//! r <request_id>              format 2's request records (read only by the migration)
//! ```
//!
//! Every key but `r` and `m` is written in seq order, so sled's pages fill
//! up and stay few.

use super::{Family, StoreError};

/// Prefix of entry chunks.
pub(super) const CHUNK: u8 = b'c';
/// Prefix of metadata keys.
pub(super) const META: u8 = b'm';
/// Prefix of format 2's per-request keys.
pub(super) const FORMAT2_REQUEST: u8 = b'r';

/// `prefix` + `seq` big-endian: keys that sort by seq.
pub(super) fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The key of the chunk starting at `first_seq`.
pub(super) fn chunk_key(first_seq: u64) -> [u8; 9] {
    seq_key(CHUNK, first_seq)
}

/// The key of a side record.
pub(super) fn side_key(family: Family, key: u64) -> [u8; 9] {
    seq_key(family.tag(), key)
}

/// The seq of a [`seq_key`].
pub(super) fn key_seq(key: &[u8]) -> Result<u64, StoreError> {
    if key.len() != 9 {
        return Err(StoreError::Engine("malformed sled key".into()));
    }
    Ok(u64::from_be_bytes(key[1..9].try_into().expect("8 bytes")))
}

/// `prefix` + `name`.
pub(super) fn prefixed(prefix: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name);
    k
}

/// The key of metadata value `name`.
pub(super) fn meta_key(name: &str) -> Vec<u8> {
    prefixed(META, name.as_bytes())
}
