//! Helpers that act on a data dir from outside, as an attacker or an
//! operator with a shell would: copy it, and flip a stored byte in its sled
//! database (the one place tests write into sled directly: the point is
//! damage the store itself did not make).

use std::path::Path;

#[allow(unused_imports)]
pub use super::fs::copy_dir;

/// Flips one bit of entry `seq`'s stored record, inside its hashed JSON
/// (`offset` bytes into it), in the sled database of the (closed) data dir
/// `data_dir`. Layouts: `src/store/chunk.rs` and `src/store/record.rs`;
/// every commit of a closed ledger is in sled (its write-ahead log is empty).
pub fn flip_stored_byte(data_dir: &Path, seq: u64, offset: usize) {
    let db = sled::open(data_dir.join("ledger")).unwrap();
    let tree = db.open_tree("ledger").unwrap();
    let mut from = vec![b'c'];
    from.extend_from_slice(&0u64.to_be_bytes());
    let mut to = vec![b'c'];
    to.extend_from_slice(&seq.to_be_bytes());
    let (key, value) = tree.range(from..=to).next_back().unwrap().unwrap();
    let first = u64::from_be_bytes(key[1..9].try_into().unwrap());
    let mut value = value.to_vec();
    let mut at = 5; // chunk header: version, count
    for _ in first..seq {
        let len = u32::from_be_bytes(value[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    let len = u32::from_be_bytes(value[at..at + 4].try_into().unwrap()) as usize;
    const RECORD_HEADER: usize = 77; // version, seq, prev_hash, entry_hash, preimage length
    assert!(
        RECORD_HEADER + offset < len,
        "the offset is inside the record"
    );
    value[at + 4 + RECORD_HEADER + offset] ^= 0x01;
    tree.insert(key, value).unwrap();
    db.flush().unwrap();
}
