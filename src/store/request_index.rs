//! The in-memory index from request ids to the entries that decided them.
//!
//! Idempotent retries need, for every submitted `request_id`, the entry that
//! recorded its decision. Keeping one sled key per request id cost about
//! 30 MiB per million entries (sled keeps a record of every page in memory,
//! and random keys fill many half-empty pages) and a random-leaf insert per
//! decision. Instead, each entry gets a 32-bit *fingerprint* of its request
//! id (0 for entries that are not submissions), and a hash table maps
//! fingerprints to seqs: about 14 bytes per entry, no I/O to look up.
//!
//! A fingerprint match is only a candidate: the store confirms it by reading
//! the request's stored record and comparing the full id. Fingerprints are
//! the first four bytes of SHA-256 of the id, so they are stable across
//! builds and can be persisted ([`RequestIndex::encode_range`]).

use hashbrown::HashTable;
use sha2::{Digest, Sha256};

/// Seqs per table: seqs are stored as `u32` offsets within their table.
const TABLE_SPAN: u64 = 1 << 32;

/// The 32-bit fingerprint of a request id; never 0 (0 marks "no request").
pub fn fingerprint(request_id: &str) -> u32 {
    let digest = Sha256::digest(request_id.as_bytes());
    let fp = u32::from_le_bytes(digest[..4].try_into().expect("4 bytes"));
    fp.max(1)
}

/// Where a fingerprint goes in the hash table (a full-width mix of its bits).
fn table_hash(fp: u32) -> u64 {
    u64::from(fp)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

/// Fingerprints by seq, and fingerprint → seq tables.
#[derive(Debug, Default)]
pub struct RequestIndex {
    /// The fingerprint of every entry's request id, by seq (0: none).
    fps: Vec<u32>,
    /// Table `i` holds the seqs `i * 2^32 ..` of submissions, as offsets.
    tables: Vec<HashTable<u32>>,
}

impl RequestIndex {
    /// An empty index with room for `entries` entries.
    pub fn with_capacity(entries: usize) -> RequestIndex {
        RequestIndex {
            fps: Vec::with_capacity(entries),
            tables: Vec::new(),
        }
    }

    /// Number of entries covered (the next seq the index expects).
    pub fn len(&self) -> u64 {
        self.fps.len() as u64
    }

    /// Whether no entry is covered.
    pub fn is_empty(&self) -> bool {
        self.fps.is_empty()
    }

    /// Covers entries up to `len` (those not recorded are not submissions).
    pub fn extend_to(&mut self, len: u64) {
        if len > self.len() {
            self.fps.resize(len as usize, 0);
        }
    }

    /// Records that entry `seq` decided a request with fingerprint `fp`
    /// (0: the entry is not a submission). Seqs come in increasing order.
    pub fn insert(&mut self, seq: u64, fp: u32) {
        self.extend_to(seq);
        if seq < self.len() {
            // Already covered (a replayed write): keep the first record.
            return;
        }
        self.fps.push(fp);
        if fp == 0 {
            return;
        }
        let table = (seq / TABLE_SPAN) as usize;
        if self.tables.len() <= table {
            self.tables.resize_with(table + 1, HashTable::new);
        }
        let base = table as u64 * TABLE_SPAN;
        let fps = &self.fps;
        self.tables[table].insert_unique(table_hash(fp), (seq - base) as u32, |&off| {
            table_hash(fps[(base + u64::from(off)) as usize])
        });
    }

    /// Reserves room for `additional` more submissions in the newest table,
    /// so that loading a large ledger grows the table once.
    pub fn reserve(&mut self, additional: usize) {
        if self.tables.is_empty() {
            self.tables.push(HashTable::new());
        }
        let table = self.tables.len() - 1;
        let base = table as u64 * TABLE_SPAN;
        let fps = &self.fps;
        self.tables[table].reserve(additional, |&off| {
            table_hash(fps[(base + u64::from(off)) as usize])
        });
    }

    /// The seqs whose request id has the fingerprint of `request_id`, in
    /// increasing order: candidates, to be confirmed by the caller.
    pub fn candidates(&self, request_id: &str) -> Vec<u64> {
        let fp = fingerprint(request_id);
        let mut out = Vec::new();
        for (i, table) in self.tables.iter().enumerate() {
            let base = i as u64 * TABLE_SPAN;
            out.extend(
                table
                    .iter_hash(table_hash(fp))
                    .map(|&off| base + u64::from(off))
                    .filter(|&seq| self.fps[seq as usize] == fp),
            );
        }
        out.sort_unstable();
        out
    }

    /// The fingerprints of entries `from..to` (clamped to what is covered),
    /// as little-endian `u32`s: the persisted form.
    pub fn encode_range(&self, from: u64, to: u64) -> Vec<u8> {
        let to = to.min(self.len()) as usize;
        let from = (from as usize).min(to);
        self.fps[from..to]
            .iter()
            .flat_map(|fp| fp.to_le_bytes())
            .collect()
    }

    /// Loads persisted fingerprints for the entries starting at `from`, which
    /// must be the next seq the index expects. Returns how many were read.
    pub fn load_range(&mut self, from: u64, bytes: &[u8]) -> Option<u64> {
        if from != self.len() || !bytes.len().is_multiple_of(4) {
            return None;
        }
        for (i, fp) in bytes.chunks_exact(4).enumerate() {
            let fp = u32::from_le_bytes(fp.try_into().expect("4 bytes"));
            self.insert(from + i as u64, fp);
        }
        Some(bytes.len() as u64 / 4)
    }

    /// Drops what is covered beyond `len` (an index persisted ahead of a
    /// store that came back shorter).
    pub fn truncate(&mut self, len: u64) {
        if len >= self.len() {
            return;
        }
        let fps = std::mem::take(&mut self.fps);
        *self = RequestIndex::with_capacity(fps.len());
        for (seq, fp) in fps.into_iter().take(len as usize).enumerate() {
            self.insert(seq as u64, fp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_request_and_nothing_else() {
        let mut index = RequestIndex::default();
        for seq in 0..10_000u64 {
            // Every 7th entry is an operational event (no request id).
            let fp = if seq % 7 == 0 {
                0
            } else {
                fingerprint(&format!("req-{seq}"))
            };
            index.insert(seq, fp);
        }
        assert_eq!(index.len(), 10_000);
        for seq in 0..10_000u64 {
            let found = index.candidates(&format!("req-{seq}"));
            if seq % 7 == 0 {
                assert!(!found.contains(&seq));
            } else {
                assert!(found.contains(&seq), "req-{seq} not found");
            }
        }
        assert!(index.candidates("never-submitted").len() <= 1);
    }

    #[test]
    fn the_same_id_twice_gives_both_seqs_in_order() {
        let mut index = RequestIndex::default();
        index.insert(3, fingerprint("a"));
        index.insert(9, fingerprint("a"));
        assert_eq!(index.candidates("a"), vec![3, 9]);
        // Seqs 0..3 and 4..9 were filled as non-submissions.
        assert_eq!(index.len(), 10);
        // A replayed insert of a covered seq changes nothing.
        index.insert(9, fingerprint("b"));
        assert!(index.candidates("b").is_empty());
    }

    #[test]
    fn persisted_ranges_round_trip_and_truncate() {
        let mut index = RequestIndex::default();
        for seq in 0..100u64 {
            index.insert(seq, fingerprint(&seq.to_string()));
        }
        let mut back = RequestIndex::default();
        assert_eq!(back.load_range(0, &index.encode_range(0, 60)), Some(60));
        assert_eq!(back.load_range(10, &index.encode_range(60, 100)), None);
        assert_eq!(back.load_range(60, &index.encode_range(60, 500)), Some(40));
        assert_eq!(back.fps, index.fps);
        back.truncate(50);
        assert_eq!(back.len(), 50);
        assert_eq!(back.candidates("49"), vec![49]);
        assert!(back.candidates("50").is_empty());
    }

    #[test]
    fn fingerprints_are_stable_and_never_zero() {
        // Persisted fingerprints must not change between builds.
        assert_eq!(fingerprint("a"), 0x1281_97ca);
        assert_ne!(fingerprint(""), 0);
    }
}
