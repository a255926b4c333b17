//! The in-memory index from request ids to the entries that decided them.
//!
//! Idempotent retries need, for every submitted `request_id`, the entry that
//! recorded its decision. Keeping one sled key per request id cost about
//! 30 MiB per million entries (sled keeps a record of every page in memory,
//! and random keys fill many half-empty pages) and a random-leaf insert per
//! decision. Instead, each entry gets a 32-bit *fingerprint* of its request
//! id (0 for entries that are not submissions), kept in an array by seq, and
//! the seqs are indexed by fingerprint:
//!
//! * the bulk is *packed*: every seq, grouped by the top bits of its
//!   fingerprint (a counting sort), with a directory of where each group
//!   starts — 4 bytes per entry plus a directory of about one `u32` per four
//!   entries, about 9 bytes per entry in all with the fingerprints;
//! * the seqs appended since the last packing are in a small hash table,
//!   packed again once it holds an eighth as many as the bulk (a linear pass:
//!   about 10 ms per million entries).
//!
//! A hash table of all seqs (hashbrown) took 15 MiB at a million entries,
//! twice this. A fingerprint match is only a candidate: the ledger confirms
//! it by reading the request's stored record and comparing the full id.
//! Fingerprints ([`fingerprint`]) are stable across builds and persisted
//! ([`RequestIndex::encode_range`], in the layout of
//! [`crate::store::request_records`]).

use hashbrown::HashTable;

pub(crate) use crate::store::request_records::fingerprint;
use crate::store::request_records::{decode_fingerprints, encode_fingerprints};

/// The recent table is packed once it holds this many seqs, or an eighth of
/// the packed ones if more.
const RECENT_MIN: usize = 64 * 1024;
/// Packed seqs are `u32`s: seqs from here on stay in the recent table (at
/// 9 bytes per entry, a ledger that long needs 36 GiB for this index anyway).
const PACKED_LIMIT: u64 = 1 << 32;

/// Where a fingerprint goes in the recent table (a full-width mix of its bits).
fn table_hash(fp: u32) -> u64 {
    u64::from(fp)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

/// Fingerprints by seq, and the seqs by fingerprint.
#[derive(Debug, Default)]
pub(crate) struct RequestIndex {
    /// The fingerprint of every entry's request id, by seq (0: none).
    fps: Vec<u32>,
    /// Seqs below this are in `packed`, the rest in `recent`.
    packed_len: u64,
    /// Bits of the fingerprint that choose a group of `packed`.
    group_bits: u32,
    /// Group `g` of `packed` is `packed[groups[g]..groups[g + 1]]`.
    groups: Vec<u32>,
    /// Seqs below `packed_len` that are submissions, grouped by fingerprint
    /// (and in seq order within a group).
    packed: Vec<u32>,
    /// Seqs from `packed_len` on that are submissions.
    recent: HashTable<u64>,
}

impl RequestIndex {
    /// Number of entries covered (the next seq the index expects).
    pub(crate) fn len(&self) -> u64 {
        self.fps.len() as u64
    }

    /// Covers entries up to `len` (those not recorded are not submissions).
    pub(crate) fn extend_to(&mut self, len: u64) {
        if len > self.len() {
            self.fps.resize(len as usize, 0);
        }
    }

    /// Records that entry `seq` decided a request with fingerprint `fp`
    /// (0: the entry is not a submission). Seqs increase: an entry is
    /// decided once, and the index is told in seq order (a seq already
    /// covered is a bug; in a release build it is ignored, keeping the first).
    pub(crate) fn insert(&mut self, seq: u64, fp: u32) {
        debug_assert!(
            seq >= self.len(),
            "request-index seqs increase: {seq} after {}",
            self.len()
        );
        self.extend_to(seq);
        if seq < self.len() {
            return;
        }
        self.fps.push(fp);
        if fp == 0 {
            return;
        }
        self.insert_recent(seq, fp);
        if self.recent.len() >= RECENT_MIN.max(self.packed.len() / 8)
            && self.packed_len < PACKED_LIMIT
        {
            self.pack();
        }
    }

    fn insert_recent(&mut self, seq: u64, fp: u32) {
        let fps = &self.fps;
        self.recent
            .insert_unique(table_hash(fp), seq, |&seq| table_hash(fps[seq as usize]));
    }

    /// Packs every seq covered (below [`PACKED_LIMIT`]; the recent table
    /// keeps the rest).
    pub(crate) fn pack(&mut self) {
        let n = self.fps.len().min(PACKED_LIMIT as usize);
        // About four seqs per group, between 2^8 and 2^24 groups.
        let bits = (usize::BITS - (n / 4).max(1).leading_zeros()).clamp(8, 24);
        let group = |fp: u32| (fp >> (32 - bits)) as usize;
        let mut groups = vec![0u32; (1 << bits) + 1];
        for &fp in &self.fps[..n] {
            if fp != 0 {
                groups[group(fp) + 1] += 1;
            }
        }
        for g in 1..groups.len() {
            groups[g] += groups[g - 1];
        }
        // Free the old arrays before the new one is filled: the peak is
        // one `packed`, not two.
        self.packed = Vec::new();
        self.recent = HashTable::new();
        let mut packed = vec![0u32; groups[1 << bits] as usize];
        let mut next = groups.clone();
        for (seq, &fp) in self.fps[..n].iter().enumerate() {
            if fp != 0 {
                let slot = &mut next[group(fp)];
                packed[*slot as usize] = seq as u32;
                *slot += 1;
            }
        }
        self.packed = packed;
        self.groups = groups;
        self.group_bits = bits;
        self.packed_len = n as u64;
        for seq in n..self.fps.len() {
            let fp = self.fps[seq];
            if fp != 0 {
                self.insert_recent(seq as u64, fp);
            }
        }
    }

    /// The seqs whose request id has the fingerprint of `request_id`, in
    /// increasing order: candidates, to be confirmed by the caller.
    pub(crate) fn candidates(&self, request_id: &str) -> Vec<u64> {
        let fp = fingerprint(request_id);
        let mut out = Vec::new();
        if !self.groups.is_empty() {
            let g = (fp >> (32 - self.group_bits)) as usize;
            let (from, to) = (self.groups[g] as usize, self.groups[g + 1] as usize);
            out.extend(
                self.packed[from..to]
                    .iter()
                    .map(|&seq| u64::from(seq))
                    .filter(|&seq| self.fps[seq as usize] == fp),
            );
        }
        out.extend(
            self.recent
                .iter_hash(table_hash(fp))
                .copied()
                .filter(|&seq| self.fps[seq as usize] == fp),
        );
        out.sort_unstable();
        out
    }

    /// The fingerprints of entries `from..to` (clamped to what is covered),
    /// as little-endian `u32`s: the persisted form.
    pub(crate) fn encode_range(&self, from: u64, to: u64) -> Vec<u8> {
        let to = to.min(self.len()) as usize;
        let from = (from as usize).min(to);
        encode_fingerprints(&self.fps[from..to])
    }

    /// Loads persisted fingerprints for the entries starting at `from`, which
    /// must be the next seq the index expects. Returns how many were read.
    /// (They are indexed at the next [`RequestIndex::pack`] or once the
    /// recent table fills.)
    pub(crate) fn load_range(&mut self, from: u64, bytes: &[u8]) -> Option<u64> {
        if from != self.len() {
            return None;
        }
        self.fps.extend(decode_fingerprints(bytes)?);
        Some(bytes.len() as u64 / 4)
    }

    /// Drops what is covered beyond `len` (an index persisted ahead of a
    /// store that came back shorter), and packs.
    pub(crate) fn truncate(&mut self, len: u64) {
        self.fps.truncate(len as usize);
        self.pack();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(n: u64, mut fp: impl FnMut(u64) -> u32) -> RequestIndex {
        let mut index = RequestIndex::default();
        for seq in 0..n {
            index.insert(seq, fp(seq));
        }
        index
    }

    #[test]
    fn finds_every_request_and_nothing_else_across_packings() {
        // Every 7th entry is an operational event (no request id). 200k
        // entries pack several times (at 64k, 128k… recent seqs).
        let n = 200_000u64;
        let index = build(n, |seq| {
            if seq % 7 == 0 {
                0
            } else {
                fingerprint(&format!("req-{seq}"))
            }
        });
        assert_eq!(index.len(), n);
        assert!(index.packed_len > 0 && !index.recent.is_empty());
        for seq in (0..n).step_by(13) {
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
    fn the_same_id_twice_gives_both_seqs_in_order_packed_or_not() {
        let mut index = RequestIndex::default();
        index.insert(3, fingerprint("a"));
        index.insert(9, fingerprint("a"));
        assert_eq!(index.candidates("a"), vec![3, 9]);
        index.pack();
        index.insert(12, fingerprint("a"));
        assert_eq!(index.candidates("a"), vec![3, 9, 12]);
        // Seqs 0..3, 4..9 and 10..12 were filled as non-submissions.
        assert_eq!(index.len(), 13);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "request-index seqs increase")]
    fn an_insert_of_a_covered_seq_is_a_bug() {
        let mut index = RequestIndex::default();
        index.insert(9, fingerprint("a"));
        index.insert(9, fingerprint("b"));
    }

    #[test]
    fn persisted_ranges_round_trip_and_truncate() {
        let index = build(100, |seq| fingerprint(&seq.to_string()));
        let mut back = RequestIndex::default();
        assert_eq!(back.load_range(0, &index.encode_range(0, 60)), Some(60));
        assert_eq!(back.load_range(10, &index.encode_range(60, 100)), None);
        assert_eq!(back.load_range(60, &index.encode_range(60, 500)), Some(40));
        back.pack();
        assert_eq!(back.fps, index.fps);
        assert_eq!(back.candidates("77"), vec![77]);
        back.truncate(50);
        assert_eq!(back.len(), 50);
        assert_eq!(back.candidates("49"), vec![49]);
        assert!(back.candidates("50").is_empty());
    }

    #[test]
    fn a_fingerprint_collision_gives_every_colliding_seq() {
        // Force collisions: every seq gets one of four fingerprints.
        let fps = [
            fingerprint("w"),
            fingerprint("x"),
            fingerprint("y"),
            fingerprint("z"),
        ];
        let index = build(1000, |seq| fps[(seq % 4) as usize]);
        let found = index.candidates("x");
        assert_eq!(found, (1..1000).step_by(4).collect::<Vec<_>>());
    }
}
