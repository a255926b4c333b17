//! [`LedgerStore`] in memory: the second implementation of the store
//! boundary, for tests where sled is not the point.
//!
//! Everything appended is "durable" at once, for as long as a handle lives:
//! a clone shares the contents, so a test can close a ledger and open
//! another on the same store (a restart without a disk). Entries are kept in
//! their stored form (`record`), so verification on open reads the same
//! bytes as on sled, and [`MemoryStore::damage_entry`] lets a test alter
//! them as an attacker with access to the storage would.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Append, Family, LedgerStore, Scan, SideScan, StoreError, record};

/// An in-memory store; clones share the contents.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    contents: Arc<Mutex<Contents>>,
}

#[derive(Debug, Default)]
struct Contents {
    entries: Vec<Vec<u8>>,
    side: BTreeMap<(Family, u64), Vec<u8>>,
    meta: HashMap<String, Vec<u8>>,
    appends: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the stored bytes of entry `seq` (a test's tampering).
    pub fn damage_entry(&self, seq: u64, damage: impl FnOnce(&mut Vec<u8>)) {
        let mut c = self.contents();
        damage(&mut c.entries[seq as usize]);
    }

    /// Drops the entries from `len` on (a store that came back shorter).
    pub fn truncate(&self, len: u64) {
        self.contents().entries.truncate(len as usize);
    }

    /// Number of appends so far.
    pub fn appends(&self) -> u64 {
        self.contents().appends
    }
}

impl LedgerStore for MemoryStore {
    fn append(&self, append: Append<'_>) -> Result<(), StoreError> {
        let mut c = self.contents();
        let len = c.entries.len() as u64;
        for (next, e) in (len..).zip(append.entries) {
            if e.ledger_seq != next {
                return Err(StoreError::Engine(format!(
                    "append of entry {} does not continue the store ({len} entries)",
                    e.ledger_seq
                )));
            }
        }
        c.entries
            .extend(append.entries.iter().map(record::encode_entry));
        for (family, key, value) in append.side {
            c.side.insert((family, key), value);
        }
        for (name, value) in append.meta {
            c.meta.insert(name.to_owned(), value);
        }
        c.appends += 1;
        Ok(())
    }

    fn commit(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn scan(&self, from: u64, to: u64) -> Scan<'_> {
        let c = self.contents();
        let to = to.min(c.entries.len() as u64);
        let items: Vec<_> = (from..to.max(from))
            .map(|seq| Ok((seq, c.entries[seq as usize].clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.contents().entries.get(seq as usize).cloned())
    }

    fn len(&self) -> Result<u64, StoreError> {
        Ok(self.contents().entries.len() as u64)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.contents().meta.get(key).cloned())
    }

    fn side_at_or_before(
        &self,
        family: Family,
        key: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self
            .contents()
            .side
            .range((family, 0)..=(family, key))
            .next_back()
            .map(|((_, k), v)| (*k, v.clone())))
    }

    fn side_range(&self, family: Family, from: u64, to: u64) -> SideScan<'_> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        let items: Vec<_> = self
            .contents()
            .side
            .range((family, from)..(family, to))
            .map(|((_, k), v)| Ok((*k, v.clone())))
            .collect();
        Box::new(items.into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::GENESIS_HASH;

    #[test]
    fn appends_must_continue_the_store_and_reads_see_them() {
        let store = MemoryStore::new();
        let entries = crate::entry::test_chain(10, 0, GENESIS_HASH);
        store
            .append(Append {
                entries: &entries[..4],
                side: vec![(Family::REQUESTS, 2, b"r2".to_vec())],
                meta: vec![("k", b"v".to_vec())],
            })
            .unwrap();
        let err = store
            .append(Append {
                entries: &entries[5..],
                ..Append::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("does not continue"), "{err}");
        assert_eq!(store.len().unwrap(), 4);
        let back: Vec<_> = super::super::read_entries(&store, 1, 9)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, entries[1..4]);
        assert_eq!(store.meta("k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            store.side_at_or_before(Family::REQUESTS, 9).unwrap(),
            Some((2, b"r2".to_vec()))
        );
        assert_eq!(
            store
                .side_at_or_before(Family::REQUEST_FINGERPRINTS, 9)
                .unwrap(),
            None
        );
    }
}
