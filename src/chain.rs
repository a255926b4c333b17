//! Hash-chain verification: recompute every hash, check every link and the root.
//!
//! [`ChainVerifier`] is fed entries one at a time (from a streamed bundle or an
//! archived segment; the stored chain of a data dir is checked from its
//! stored preimages by `ledger::open::verify_store`) and never stops at the
//! first problem: every bad entry is reported with its index. Hashing is the expensive part and each entry's
//! hash depends only on that entry, so callers may compute hashes in parallel
//! and feed [`ChainVerifier::push_checked`]; the link check itself is cheap and
//! sequential. Hashes are compared as their 32 bytes ([`ChainHash`]), not as
//! text, so the sequential part allocates nothing per entry.

use std::fmt;

use serde::Serialize;

use crate::entry::{Entry, GENESIS_HASH};

/// One problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainError {
    /// Index of the bad entry in the bundle (position, not `ledger_seq`);
    /// `None` for problems of the bundle as a whole (e.g. its root hash).
    pub index: Option<u64>,
    /// What is wrong, for a human.
    pub message: String,
}

/// The outcome of verifying a chain, in the shape `kernels verify --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when no error was found.
    pub valid: bool,
    /// How many entries were examined.
    pub entries_verified: u64,
    /// The last recomputed entry hash (the anchor for an empty chain).
    pub computed_root_hash: String,
    /// Every problem found, in order.
    pub errors: Vec<ChainError>,
}

/// What the verifier needs of one entry: where it claims to sit, what it
/// claims its hash is, and what its hash really is.
#[derive(Debug, Clone)]
pub struct Link {
    /// The entry's `ledger_seq`, if it has a readable one.
    pub seq: Option<u64>,
    /// The entry's `prev_hash`.
    pub prev_hash: Option<String>,
    /// The entry's stated `entry_hash`.
    pub entry_hash: Option<String>,
    /// The hash recomputed from its fields (None if it cannot be computed).
    pub computed_hash: Option<String>,
    /// Other problems found while reading it (payload mismatch, bad types, …).
    pub problems: Vec<String>,
}

/// A hash as the chain compares it: the 32 bytes of a 64-digit lowercase hex
/// text (every hash we or the Python library write), or, for any other text
/// (a damaged or foreign entry), the text itself. The mapping is one-to-one,
/// so two hashes are equal exactly when their texts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainHash {
    /// A well-formed hash.
    Digest([u8; 32]),
    /// Text that is not 64 lowercase hex digits.
    Other(String),
}

impl ChainHash {
    /// The hash written as `text`.
    pub fn from_text(text: &str) -> ChainHash {
        match decode_hex(text.as_bytes()) {
            Some(digest) => ChainHash::Digest(digest),
            None => ChainHash::Other(text.to_owned()),
        }
    }

    /// A shortened form for messages.
    fn short(&self) -> String {
        match self {
            ChainHash::Digest(d) => format!("{}…", hex::encode(&d[..8])),
            ChainHash::Other(text) => short(text),
        }
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainHash::Digest(d) => f.write_str(&hex::encode(d)),
            ChainHash::Other(text) => f.write_str(text),
        }
    }
}

/// The 32 bytes of exactly 64 lowercase hex digits (uppercase is another text).
pub fn decode_hex(text: &[u8]) -> Option<[u8; 32]> {
    // Digit values; 0x10 marks a byte that is not a lowercase hex digit.
    const NIBBLE: [u8; 256] = {
        let mut t = [0x10u8; 256];
        let mut c = 0;
        while c < 10 {
            t[b'0' as usize + c] = c as u8;
            c += 1;
        }
        let mut c = 0;
        while c < 6 {
            t[b'a' as usize + c] = 10 + c as u8;
            c += 1;
        }
        t
    };
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut out = [0u8; 32];
    let mut bad = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0x10 == 0).then_some(out)
}

/// A [`Link`] with its hashes in [`ChainHash`] form: what the verifier works
/// on, and what a fast producer (the bundle verifier) hands it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedLink {
    /// The entry's `ledger_seq`, if it has a readable one.
    pub seq: Option<u64>,
    /// The entry's `prev_hash`.
    pub prev_hash: Option<ChainHash>,
    /// The entry's stated `entry_hash`.
    pub entry_hash: Option<ChainHash>,
    /// The hash recomputed from its fields (None if it cannot be computed).
    pub computed_hash: Option<ChainHash>,
    /// Other problems found while reading it (payload mismatch, bad types, …).
    pub problems: Vec<String>,
}

impl From<Link> for HashedLink {
    fn from(link: Link) -> Self {
        let hash = |text: Option<String>| text.map(|t| ChainHash::from_text(&t));
        HashedLink {
            seq: link.seq,
            prev_hash: hash(link.prev_hash),
            entry_hash: hash(link.entry_hash),
            computed_hash: hash(link.computed_hash),
            problems: link.problems,
        }
    }
}

/// An entry together with its freshly recomputed hash and payload check.
#[derive(Debug)]
pub struct CheckedEntry {
    /// The entry as read.
    pub entry: Entry,
    /// `entry_hash` recomputed from `prev_hash` and the 19 hashed fields.
    pub computed_hash: String,
    /// Problem with the payload (hash mismatch or unhashable), if any.
    pub payload_problem: Option<String>,
}

impl CheckedEntry {
    /// Recomputes the hashes of `entry`.
    pub fn check(entry: Entry) -> Self {
        let computed_hash = entry.compute_hash();
        let payload_problem = match entry.payload_matches() {
            None | Some(Ok(true)) => None,
            Some(Ok(false)) => Some("payload does not match params_hash".to_owned()),
            Some(Err(e)) => Some(format!("payload cannot be hashed: {e}")),
        };
        CheckedEntry {
            entry,
            computed_hash,
            payload_problem,
        }
    }

    /// The verifier's view of this entry.
    pub fn into_link(self) -> Link {
        Link {
            seq: Some(self.entry.ledger_seq),
            prev_hash: Some(self.entry.prev_hash),
            entry_hash: Some(self.entry.entry_hash),
            computed_hash: Some(self.computed_hash),
            problems: self.payload_problem.into_iter().collect(),
        }
    }
}

/// Streaming verifier of one hash chain.
#[derive(Debug)]
pub struct ChainVerifier {
    /// Known anchor (prev_hash of the first entry); `None` = taken from the
    /// first entry and checked in [`ChainVerifier::finish_bundle`].
    anchor: Option<ChainHash>,
    first_seq: Option<u64>,
    seen_first_prev: Option<ChainHash>,
    seen_first_seq: Option<u64>,
    expected_prev: Option<ChainHash>,
    expected_seq: Option<u64>,
    index: u64,
    computed_root: Option<ChainHash>,
    errors: Vec<ChainError>,
}

impl ChainVerifier {
    /// A verifier for a chain that starts at genesis with seq 0.
    pub fn new() -> Self {
        Self::with_anchor(GENESIS_HASH.to_owned(), Some(0))
    }

    /// A verifier for a range of a longer chain: its first entry must link to
    /// `anchor_hash`, and (when given) carry `ledger_seq == from_seq`.
    pub fn with_anchor(anchor_hash: String, from_seq: Option<u64>) -> Self {
        let anchor_hash = ChainHash::from_text(&anchor_hash);
        ChainVerifier {
            expected_prev: Some(anchor_hash.clone()),
            anchor: Some(anchor_hash),
            first_seq: from_seq,
            seen_first_prev: None,
            seen_first_seq: None,
            expected_seq: from_seq,
            index: 0,
            computed_root: None,
            errors: Vec::new(),
        }
    }

    /// A verifier for a bundle whose anchor and first seq are only known once
    /// the whole bundle is read (its header may follow its entries).
    pub fn deferred() -> Self {
        ChainVerifier {
            anchor: None,
            first_seq: None,
            seen_first_prev: None,
            seen_first_seq: None,
            expected_prev: None,
            expected_seq: None,
            index: 0,
            computed_root: None,
            errors: Vec::new(),
        }
    }

    /// Verifies the next entry.
    pub fn push(&mut self, entry: Entry) {
        self.push_link(CheckedEntry::check(entry).into_link());
    }

    /// Verifies the next entry whose hashes were already recomputed.
    pub fn push_checked(&mut self, checked: CheckedEntry) {
        self.push_link(checked.into_link());
    }

    /// Verifies the next entry, given by its hashes as text.
    pub fn push_link(&mut self, link: Link) {
        self.push_hashed(link.into());
    }

    /// Verifies the next entry, in the verifier's own terms.
    pub fn push_hashed(&mut self, link: HashedLink) {
        for problem in link.problems {
            self.error(problem);
        }
        if self.index == 0 {
            self.seen_first_prev = link.prev_hash.clone();
            self.seen_first_seq = link.seq;
        }
        match (link.seq, self.expected_seq) {
            (Some(seq), Some(expected)) if seq != expected => {
                self.error(format!("ledger_seq is {seq}, expected {expected}"))
            }
            (None, _) => self.error("ledger_seq is missing or not an integer".to_owned()),
            _ => {}
        }
        match (&link.prev_hash, &self.expected_prev) {
            (Some(prev), Some(expected)) if prev != expected => self.error(format!(
                "prev_hash {} does not link to the previous entry's hash {}",
                prev.short(),
                expected.short()
            )),
            (None, _) => self.error("prev_hash is missing or not a string".to_owned()),
            _ => {}
        }
        match (&link.entry_hash, &link.computed_hash) {
            (Some(stated), Some(computed)) if stated != computed => self.error(format!(
                "entry_hash mismatch: stored {}, computed {}",
                stated.short(),
                computed.short()
            )),
            (None, _) => self.error("entry_hash is missing or not a string".to_owned()),
            _ => {}
        }
        // Link the next entry to the hash this entry claims: a single altered
        // entry then yields one error, not a cascade down the chain.
        self.expected_prev = link.entry_hash.or(link.computed_hash.clone());
        self.computed_root = link.computed_hash;
        self.expected_seq = link.seq.map(|s| s + 1);
        self.index += 1;
    }

    /// Number of entries seen so far.
    pub fn count(&self) -> u64 {
        self.index
    }

    fn error(&mut self, message: String) {
        self.errors.push(ChainError {
            index: Some(self.index),
            message,
        });
    }

    /// Adds a problem that concerns the whole bundle, not one entry.
    pub fn bundle_error(&mut self, message: String) {
        self.errors.push(ChainError {
            index: None,
            message,
        });
    }

    /// Finishes a chain whose anchor was known: checks the stated root hash
    /// (when given) and reports.
    pub fn finish(self, stated_root: Option<&str>) -> VerifyReport {
        self.finish_bundle(stated_root, None, None)
    }

    /// Finishes a bundle: checks its stated anchor (genesis when absent),
    /// first seq (0 when absent) and root hash, then reports.
    pub fn finish_bundle(
        mut self,
        stated_root: Option<&str>,
        stated_anchor: Option<&str>,
        stated_from_seq: Option<u64>,
    ) -> VerifyReport {
        let anchor = match (&self.anchor, stated_anchor) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) => ChainHash::from_text(a),
            (None, None) => ChainHash::from_text(GENESIS_HASH),
        };
        if self.anchor.is_none() && self.index > 0 {
            if let Some(first_prev) = self.seen_first_prev.clone()
                && first_prev != anchor
            {
                let what = if stated_anchor.is_some() {
                    "the bundle's anchor_hash"
                } else {
                    "the genesis hash"
                };
                self.errors.insert(
                    0,
                    ChainError {
                        index: Some(0),
                        message: format!(
                            "prev_hash {} of the first entry is not {what} {}",
                            first_prev.short(),
                            anchor.short()
                        ),
                    },
                );
            }
            let want_seq = self.first_seq.or(stated_from_seq).unwrap_or(0);
            if let Some(seq) = self.seen_first_seq
                && seq != want_seq
            {
                self.errors.insert(
                    0,
                    ChainError {
                        index: Some(0),
                        message: format!(
                            "ledger_seq of the first entry is {seq}, expected {want_seq}"
                        ),
                    },
                );
            }
        }
        let computed_root = self.computed_root.take().unwrap_or(anchor);
        if let Some(root) = stated_root
            && ChainHash::from_text(root) != computed_root
        {
            self.bundle_error(format!(
                "root_hash {} does not match the computed root {}",
                short(root),
                computed_root.short()
            ));
        }
        VerifyReport {
            valid: self.errors.is_empty(),
            entries_verified: self.index,
            computed_root_hash: computed_root.to_string(),
            errors: self.errors,
        }
    }
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

fn short(hash: &str) -> String {
    if hash.len() > 16 && hash.is_ascii() {
        format!("{}…", &hash[..16])
    } else {
        format!("{hash:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(entries: Vec<Entry>, root: Option<&str>) -> VerifyReport {
        let mut v = ChainVerifier::new();
        for e in entries {
            v.push(e);
        }
        v.finish(root)
    }

    fn chain(n: u64) -> Vec<Entry> {
        crate::entry::test_chain(n, 0, GENESIS_HASH)
    }

    #[test]
    fn a_good_chain_verifies() {
        let entries = chain(5);
        let root = entries[4].entry_hash.clone();
        let report = verify(entries, Some(&root));
        assert!(report.valid, "{report:?}");
        assert_eq!(report.entries_verified, 5);
        assert_eq!(report.computed_root_hash, root);
    }

    #[test]
    fn an_empty_chain_has_the_genesis_root() {
        let report = verify(vec![], Some(GENESIS_HASH));
        assert!(report.valid);
        assert_eq!(report.computed_root_hash, GENESIS_HASH);
    }

    #[test]
    fn a_changed_field_is_reported_at_its_index_only() {
        let mut entries = chain(5);
        let root = entries[4].entry_hash.clone();
        entries[2].actor = "mallory".into();
        let report = verify(entries, Some(&root));
        assert!(!report.valid);
        let indexes: Vec<_> = report.errors.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![Some(2)]);
    }

    #[test]
    fn every_error_is_reported() {
        let mut entries = chain(6);
        let root = entries[5].entry_hash.clone();
        entries[1].intent = "x".into();
        entries[4].ts_ms = 1;
        let report = verify(entries, Some(&root));
        let indexes: Vec<_> = report.errors.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![Some(1), Some(4)]);
    }

    #[test]
    fn removed_and_swapped_entries_break_links() {
        let mut entries = chain(5);
        let root = entries[4].entry_hash.clone();
        entries.remove(2);
        let report = verify(entries, Some(&root));
        assert!(
            report.errors.iter().any(|e| e.index == Some(2)),
            "{report:?}"
        );

        let mut entries = chain(5);
        entries.swap(1, 2);
        let report = verify(entries, Some(&root));
        assert!(
            report.errors.iter().any(|e| e.index == Some(1)),
            "{report:?}"
        );
        assert!(
            report.errors.iter().any(|e| e.index == Some(2)),
            "{report:?}"
        );
    }

    #[test]
    fn a_wrong_root_is_a_bundle_error() {
        let report = verify(chain(3), Some(&"f".repeat(64)));
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].index, None);
    }

    #[test]
    fn hashes_compare_as_their_text_does() {
        let hex = "0123456789abcdef".repeat(4);
        let digest = ChainHash::from_text(&hex);
        assert!(matches!(digest, ChainHash::Digest(_)));
        assert_eq!(digest.to_string(), hex);
        assert_eq!(digest.short(), "0123456789abcdef…");
        // Uppercase, short or long texts stay texts and never equal a digest.
        for other in [
            hex.to_uppercase(),
            hex[..62].to_owned(),
            format!("{hex}0"),
            "é".into(),
        ] {
            let h = ChainHash::from_text(&other);
            assert_eq!(h, ChainHash::Other(other.clone()));
            assert_ne!(h, digest);
            assert_eq!(h.to_string(), other);
        }
    }

    #[test]
    fn a_changed_prev_hash_is_reported() {
        let mut entries = chain(3);
        entries[1].prev_hash = "a".repeat(64);
        let report = verify(entries, None);
        // the link and the entry's own hash both fail, at index 1
        assert!(report.errors.iter().all(|e| e.index == Some(1)));
        assert!(!report.valid);
    }
}
