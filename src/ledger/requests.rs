//! Finding the entry that decided a request id, for idempotent retries.
//!
//! A request id is looked up, under the ledger's core lock, first among the
//! ids decided but not yet appended to the store ([`Unappended`]), then in
//! the in-memory [`RequestIndex`] (fingerprint → candidate seqs), each
//! candidate confirmed by reading its stored request record
//! ([`crate::store::request_records`]) and comparing the full id.
//!
//! The flusher keeps the index current: before each append it indexes the
//! batch's request records, and with each state checkpoint it stores the
//! fingerprints not stored yet, as side records in the same append.
//! Opening loads the stored fingerprint blocks, then the records appended
//! after them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::request_index::{RequestIndex, fingerprint};
use crate::kernel::Receipt;
use crate::store::request_records::{self, FINGERPRINT_BLOCK, RequestRecord};
use crate::store::{Family, LedgerStore, SideRecord, StoreError, record};

/// Receipts of request ids the store may not answer for yet. The flusher
/// never touches this (it would contend for the core lock on every commit):
/// deciders drop the ids the store has taken, oldest first, as they pass.
/// It lives in the core lock's state, so holding one proves the lock is held.
#[derive(Default)]
pub(crate) struct Unappended {
    by_id: HashMap<String, (String, Receipt)>,
    /// `(seq, id)` in seq order.
    order: VecDeque<(u64, String)>,
}

impl Unappended {
    /// Remembers the receipt of a request decided at `seq`.
    pub(crate) fn insert(&mut self, seq: u64, id: String, content_hash: String, receipt: Receipt) {
        self.order.push_back((seq, id.clone()));
        self.by_id.insert(id, (content_hash, receipt));
    }

    /// Forgets the ids of entries the store holds (`seq < appended`).
    fn prune(&mut self, appended: u64) {
        while let Some((seq, _)) = self.order.front() {
            if *seq >= appended {
                break;
            }
            let (_, id) = self.order.pop_front().expect("checked");
            self.by_id.remove(&id);
        }
    }
}

/// The request index and how much of it is stored.
struct Indexed {
    index: RequestIndex,
    /// Entries whose fingerprints are in stored blocks.
    persisted: u64,
}

/// The request index of a ledger.
pub(crate) struct Requests {
    indexed: Mutex<Indexed>,
}

impl Requests {
    fn indexed(&self) -> MutexGuard<'_, Indexed> {
        self.indexed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the index of a store of `len` entries: its stored fingerprint
    /// blocks, then the request records appended after them. Also returns
    /// the side records that blank the blocks it could not trust (to be
    /// stored with the next entries).
    pub(crate) fn load(
        store: &dyn LedgerStore,
        len: u64,
    ) -> Result<(Requests, Vec<SideRecord>), StoreError> {
        let mut index = RequestIndex::default();
        let mut starts = Vec::new();
        for item in store.side_range(Family::REQUEST_FINGERPRINTS, 0, u64::MAX) {
            let (start, block) = item?;
            // A gap (or a block of the wrong shape, or a blanked one) ends
            // what the blocks can say; the records give the rest.
            if block.is_empty() || index.load_range(start, &block).is_none() {
                break;
            }
            starts.push(start);
        }
        // Blocks reaching past the stored entries cannot be trusted (they
        // cannot happen: entries are written first, in the same append),
        // nor can any after a gap: blank them, and take those entries from
        // the records.
        let cut = if index.len() > len {
            starts.into_iter().filter(|s| *s <= len).max().unwrap_or(0)
        } else {
            index.len()
        };
        let stale: Vec<SideRecord> = store
            .side_range(Family::REQUEST_FINGERPRINTS, cut, u64::MAX)
            .filter_map(|item| match item {
                Ok((key, block)) if !block.is_empty() => {
                    Some(Ok((Family::REQUEST_FINGERPRINTS, key, Vec::new())))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        index.truncate(cut);
        let persisted = index.len();
        let from = index.len();
        let start = store
            .side_at_or_before(Family::REQUESTS, from)?
            .map_or(from, |(first, _)| first);
        for item in store.side_range(Family::REQUESTS, start, u64::MAX) {
            let (first, block) = item?;
            for r in request_records::decode_block(first, &block)? {
                if r.seq >= index.len() && r.seq < len {
                    index.insert(r.seq, fingerprint(&r.request_id));
                }
            }
        }
        index.extend_to(len);
        Ok((
            Requests {
                indexed: Mutex::new(Indexed { index, persisted }),
            },
            stale,
        ))
    }

    /// Indexes the request records of an append that ends at `end` entries,
    /// and returns its side records: the records' blocks and, with a
    /// checkpoint, the fingerprint blocks not stored yet (and the length
    /// they cover, for [`Requests::stored_through`] once the append is done).
    /// The index answers for these ids from now on.
    pub(crate) fn side_records(
        &self,
        requests: &[RequestRecord],
        end: Option<u64>,
        with_checkpoint: bool,
    ) -> (Vec<SideRecord>, Option<u64>) {
        let mut side: Vec<SideRecord> = request_records::encode_blocks(requests)
            .into_iter()
            .map(|(first, block)| (Family::REQUESTS, first, block))
            .collect();
        let fingerprints: Vec<(u64, u32)> = requests
            .iter()
            .map(|r| (r.seq, fingerprint(&r.request_id)))
            .collect();
        let mut indexed = self.indexed();
        for (seq, fp) in fingerprints {
            indexed.index.insert(seq, fp);
        }
        if let Some(end) = end {
            indexed.index.extend_to(end);
        }
        if !with_checkpoint {
            return (side, None);
        }
        let to = indexed.index.len();
        let from = indexed.persisted / FINGERPRINT_BLOCK * FINGERPRINT_BLOCK;
        for start in (from..to).step_by(FINGERPRINT_BLOCK as usize) {
            side.push((
                Family::REQUEST_FINGERPRINTS,
                start,
                indexed.index.encode_range(start, start + FINGERPRINT_BLOCK),
            ));
        }
        (side, Some(to))
    }

    /// The fingerprints of entries `..to` are stored.
    pub(crate) fn stored_through(&self, to: u64) {
        let mut indexed = self.indexed();
        indexed.persisted = indexed.persisted.max(to);
    }

    /// The earlier decision on `request_id`: its content hash and receipt.
    /// `unappended` is the core lock's (so the lookup runs under it, which
    /// keeps a retry from overtaking its first decision); `appended` is how
    /// many entries the store has been handed.
    pub(crate) fn lookup(
        &self,
        unappended: &mut Unappended,
        appended: u64,
        store: &dyn LedgerStore,
        request_id: &str,
    ) -> Result<Option<(String, Receipt)>, StoreError> {
        unappended.prune(appended);
        if let Some((hash, receipt)) = unappended.by_id.get(request_id) {
            return Ok(Some((hash.clone(), receipt.clone())));
        }
        let Some(rec) = self.find(store, request_id)? else {
            return Ok(None);
        };
        let bytes = store.get(rec.seq)?.ok_or_else(|| StoreError::Corrupt {
            seq: rec.seq,
            message: "request record points to a missing entry".into(),
        })?;
        let entry = record::decode_entry(&bytes).map_err(|e| StoreError::Corrupt {
            seq: rec.seq,
            message: e.to_string(),
        })?;
        Ok(Some((
            rec.content_hash,
            Receipt::new(&entry, rec.status, rec.tool_result),
        )))
    }

    /// The stored record of `request_id`, if one was appended (the index's
    /// candidates, each confirmed by its stored record).
    pub(crate) fn find(
        &self,
        store: &dyn LedgerStore,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let candidates = self.indexed().index.candidates(request_id);
        for seq in candidates {
            let Some((first, block)) = store.side_at_or_before(Family::REQUESTS, seq)? else {
                continue;
            };
            let found = request_records::decode_block(first, &block)?
                .into_iter()
                .find(|r| r.seq == seq && r.request_id == request_id);
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Entries covered, and entries whose fingerprints are stored.
    #[cfg(test)]
    fn lengths(&self) -> (u64, u64) {
        let indexed = self.indexed();
        (indexed.index.len(), indexed.persisted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, GENESIS_HASH};
    use crate::store::Append;
    use crate::store::memory::MemoryStore;
    use crate::store::request_records::test_record as record;
    use crate::store::sled_store::{SledOptions, SledStore};

    /// Appends `entries` as the flusher does, in batches of `batch`, every
    /// third entry a request `req-<seq>`, with a checkpoint in the batches
    /// that hold a seq listed in `cps`.
    fn append(
        store: &dyn LedgerStore,
        requests: &Requests,
        entries: &[Entry],
        batch: usize,
        cps: &[u64],
    ) {
        for part in entries.chunks(batch) {
            let records: Vec<RequestRecord> = part
                .iter()
                .filter(|e| e.ledger_seq % 3 == 0)
                .map(|e| record(&format!("req-{}", e.ledger_seq), e.ledger_seq))
                .collect();
            let last = part.last().unwrap().ledger_seq;
            let cp = cps.iter().any(|c| part[0].ledger_seq <= *c && *c <= last);
            let (side, stored) = requests.side_records(&records, Some(last + 1), cp);
            store
                .append(Append {
                    entries: part,
                    side,
                    meta: vec![],
                })
                .unwrap();
            if let Some(to) = stored {
                requests.stored_through(to);
            }
        }
        store.commit().unwrap();
    }

    fn assert_found(store: &dyn LedgerStore, requests: &Requests, n: u64) {
        for seq in 0..n {
            let found = requests.find(store, &format!("req-{seq}")).unwrap();
            if seq % 3 == 0 {
                assert_eq!(found, Some(record(&format!("req-{seq}"), seq)));
            } else {
                assert_eq!(found, None, "req-{seq} was never submitted");
            }
        }
    }

    #[test]
    fn requests_are_found_live_and_after_a_reopen_of_a_sled_store() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = crate::entry::test_chain(9_000, 0, GENESIS_HASH);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            let (requests, stale) = Requests::load(&store, 0).unwrap();
            assert!(stale.is_empty());
            // Checkpoints (and so fingerprint blocks) at 5000 and 8200; the
            // rest of the records must come from the request blocks on reopen.
            append(&store, &requests, &entries, 37, &[5_000, 8_200]);
            assert_found(&store, &requests, 9_000);
            assert_eq!(requests.lengths(), (9_000, 8_214));
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        let (requests, stale) = Requests::load(&store, 9_000).unwrap();
        assert!(stale.is_empty());
        assert_eq!(requests.lengths(), (9_000, 8_214));
        for item in store.side_range(Family::REQUEST_FINGERPRINTS, 0, u64::MAX) {
            assert!(item.unwrap().1.len() <= crate::store::VALUE_BYTES);
        }
        assert_found(&store, &requests, 9_000);
        // A fingerprint match alone is not a hit: the id is compared.
        requests.indexed().index.insert(9_000, fingerprint("req-1"));
        assert_eq!(requests.find(&store, "req-1").unwrap(), None);
    }

    #[test]
    fn fingerprint_blocks_past_the_stored_entries_are_not_trusted_and_get_blanked() {
        let store = MemoryStore::new();
        let entries = crate::entry::test_chain(3_000, 0, GENESIS_HASH);
        let (requests, _) = Requests::load(&store, 0).unwrap();
        append(&store, &requests, &entries, 50, &[2_500]);
        // Blocks claiming entries 3072.. that do not exist (and, when they
        // do, would hide their records): wrong fingerprints.
        store
            .append(Append {
                side: vec![
                    (Family::REQUEST_FINGERPRINTS, 3_072, vec![7u8; 4096]),
                    (Family::REQUEST_FINGERPRINTS, 2_048, vec![7u8; 4096]),
                ],
                ..Append::default()
            })
            .unwrap();
        let (requests, stale) = Requests::load(&store, 3_000).unwrap();
        // Blocks 0 and 1024 stand; 2048 reached past the end: it and
        // everything after it are blanked, and the records filled in.
        assert_eq!(requests.lengths(), (3_000, 2_048));
        let keys: Vec<u64> = stale
            .iter()
            .map(|(_, k, v)| {
                assert!(v.is_empty());
                *k
            })
            .collect();
        assert_eq!(keys, vec![2_048, 3_072]);
        assert_found(&store, &requests, 3_000);
        // Once the blanks are stored, a longer store does not take them up.
        store
            .append(Append {
                side: stale,
                ..Append::default()
            })
            .unwrap();
        let more = crate::entry::test_chain(2_000, 3_000, &entries.last().unwrap().entry_hash);
        append(&store, &requests, &more, 50, &[]);
        let (requests, stale) = Requests::load(&store, 5_000).unwrap();
        assert!(stale.is_empty());
        assert_eq!(requests.lengths(), (5_000, 2_048));
        assert_found(&store, &requests, 5_000);
    }
}
