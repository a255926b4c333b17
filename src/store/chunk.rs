//! Entries packed into sled values: a chunk of up to [`VALUE_RECORDS`]
//! consecutive entries, closed once it reaches [`VALUE_BYTES`].
//!
//! A sled insert costs several microseconds whatever its size: one insert
//! per chunk instead of per entry is what lets a busy kernel commit tens of
//! thousands of decisions a second. A chunk is `[version 1][count: u32 BE]`
//! then, per entry, `[len: u32 BE]` and the entry's stored record (see
//! [`super::record`]).

use super::{StoreError, VALUE_BYTES, VALUE_RECORDS, record};
use crate::entry::Entry;

const CHUNK_VERSION: u8 = 1;

/// Splits a chunk into its entries' stored records.
pub(super) fn records(first_seq: u64, chunk: &[u8]) -> Result<Vec<(u64, &[u8])>, StoreError> {
    let bad = |what: &str| StoreError::Corrupt {
        seq: first_seq,
        message: format!("chunk starting at entry {first_seq} is unreadable: {what}"),
    };
    if chunk.len() < 5 || chunk[0] != CHUNK_VERSION {
        return Err(bad("bad header"));
    }
    let count = u32::from_be_bytes(chunk[1..5].try_into().expect("4 bytes")) as usize;
    let mut out = Vec::with_capacity(count.min(chunk.len() / 4));
    let mut at = 5;
    for i in 0..count {
        if chunk.len() < at + 4 {
            return Err(bad("truncated"));
        }
        let len = u32::from_be_bytes(chunk[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if chunk.len() < at + len {
            return Err(bad("truncated"));
        }
        out.push((first_seq + i as u64, &chunk[at..at + len]));
        at += len;
    }
    if at != chunk.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

/// How many entries a chunk claims to hold.
pub(super) fn count(chunk: &[u8]) -> u64 {
    if chunk.len() < 5 {
        return 0;
    }
    u64::from(u32::from_be_bytes(chunk[1..5].try_into().expect("4 bytes")))
}

/// The chunks of consecutive entries, each keyed by its first seq.
pub(super) fn encode(entries: &[Entry]) -> Vec<(u64, Vec<u8>)> {
    group(
        entries
            .iter()
            .map(|e| (e.ledger_seq, record::encode_entry(e))),
    )
}

/// Groups consecutive stored records `(seq, bytes)` into chunks of at most
/// [`VALUE_RECORDS`] records and [`VALUE_BYTES`] (unless one is bigger).
pub(super) fn group<R: AsRef<[u8]>>(
    records: impl Iterator<Item = (u64, R)>,
) -> Vec<(u64, Vec<u8>)> {
    let mut chunks = Vec::new();
    let mut current: Option<(u64, Vec<u8>, u32)> = None;
    for (seq, record) in records {
        let record = record.as_ref();
        let full = current.as_ref().is_some_and(|(_, bytes, n)| {
            *n as usize >= VALUE_RECORDS || bytes.len() + record.len() > VALUE_BYTES
        });
        if full {
            chunks.push(finish(current.take().expect("checked")));
        }
        let (_, bytes, n) =
            current.get_or_insert_with(|| (seq, vec![CHUNK_VERSION, 0, 0, 0, 0], 0));
        bytes.extend_from_slice(&(record.len() as u32).to_be_bytes());
        bytes.extend_from_slice(record);
        *n += 1;
    }
    chunks.extend(current.map(finish));
    chunks
}

fn finish((first, mut bytes, n): (u64, Vec<u8>, u32)) -> (u64, Vec<u8>) {
    bytes[1..5].copy_from_slice(&n.to_be_bytes());
    (first, bytes)
}

/// The `(seq, record)` items of one chunk within `from..to`.
pub(super) fn items_within(
    first: u64,
    chunk: &[u8],
    from: u64,
    to: u64,
) -> Vec<Result<(u64, Vec<u8>), StoreError>> {
    match records(first, chunk) {
        Err(e) => vec![Err(e)],
        Ok(records) => records
            .into_iter()
            .filter(|(seq, _)| *seq >= from && *seq < to)
            .map(|(seq, bytes)| Ok((seq, bytes.to_vec())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;

    #[test]
    fn chunks_are_bounded_and_cover_every_entry() {
        let entries = crate::entry::test_chain(200, 0, GENESIS_HASH);
        let chunks = encode(&entries);
        let total: usize = chunks.iter().map(|(_, b)| b.len()).sum();
        // Chunks close at VALUE_BYTES or VALUE_RECORDS, so they are few and full.
        assert!(
            chunks.len() >= 200 / VALUE_RECORDS && chunks.len() <= total / (VALUE_BYTES / 2) + 4
        );
        let mut seqs = Vec::new();
        for (first, bytes) in &chunks {
            // A chunk exceeds VALUE_BYTES only when a single entry does.
            let recs = records(*first, bytes).unwrap();
            assert!(bytes.len() <= VALUE_BYTES || recs.len() == 1);
            for (seq, rec) in recs {
                assert_eq!(record::decode_entry(rec).unwrap(), entries[seq as usize]);
                seqs.push(seq);
            }
        }
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    }
}
