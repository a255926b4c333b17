//! [`LedgerStore`] on sled.
//!
//! One sled tree holds everything, with one-byte key prefixes, so that an
//! append (entries, request records, head, checkpoint) is a single atomic
//! `apply_batch`:
//!
//! ```text
//! e <seq: 8 bytes BE>     stored entry (see `record`)
//! r <request_id bytes>    request record (JSON)
//! m <name>                metadata (format version, kernel id, head, checkpoint)
//! ```
//!
//! Durability: sled's `flush` writes its log with `sync_file_range`, which
//! neither flushes the disk's write cache nor file metadata (sled issues
//! #1351, #1452), and it never fsyncs blob files. [`SledStore::commit`] is
//! therefore: `flush`, then `fdatasync` of sled's log file, then `fsync` of
//! any new blob file and the blob directory. That sequence is the commit point.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::record::{self, RequestRecord};
use super::{LedgerStore, Scan, StoreError, meta};
use crate::entry::Entry;

const ENTRY: u8 = b'e';
const REQUEST: u8 = b'r';
const META: u8 = b'm';

/// Tuning of the sled engine.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// Page cache size in bytes (the main lever on memory use).
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 16 * 1024 * 1024,
        }
    }
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    log_file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn entry_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn prefixed(prefix: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(prefix);
    k.extend_from_slice(name);
    k
}

impl SledStore {
    /// Opens (or creates) the sled database at `path`.
    pub fn open(path: &Path, options: &SledOptions) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            // Our commits flush explicitly; sled's timer would only add I/O.
            .flush_every_ms(None);
        // sled can panic on some kinds of on-disk corruption instead of
        // returning an error; a corrupt data dir must be a clear error.
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|_| {
                StoreError::Engine(format!(
                    "sled could not open {} (corrupt database)",
                    path.display()
                ))
            })?
            .map_err(engine)?;
        let tree = db.open_tree("ledger").map_err(engine)?;
        let log_file = File::open(path.join("db"))?;
        super::datadir::sync_dir(path)?;
        Ok(SledStore {
            db,
            tree,
            path: path.to_owned(),
            log_file,
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    fn sync_blobs(&self) -> Result<(), StoreError> {
        let dir = self.path.join("blobs");
        let Ok(listing) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .expect("blob set lock is never poisoned");
        let mut new = false;
        for item in listing.flatten() {
            let name = item.file_name();
            if !synced.contains(&name) {
                File::open(item.path())?.sync_all()?;
                synced.insert(name);
                new = true;
            }
        }
        if new {
            super::datadir::sync_dir(&dir)?;
        }
        Ok(())
    }
}

impl LedgerStore for SledStore {
    fn append(
        &self,
        entries: &[Entry],
        requests: &[(String, RequestRecord)],
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&entry_key(e.ledger_seq)[..], record::encode_entry(e));
        }
        for (id, rec) in requests {
            let value = serde_json::to_vec(rec).expect("request records serialize");
            batch.insert(prefixed(REQUEST, id.as_bytes()), value);
        }
        if let Some(last) = entries.last() {
            let mut head = Vec::with_capacity(40);
            head.extend_from_slice(&(last.ledger_seq + 1).to_be_bytes());
            let mut raw = [0u8; 32];
            hex::decode_to_slice(&last.entry_hash, &mut raw)
                .expect("sealed entries have hex hashes");
            head.extend_from_slice(&raw);
            batch.insert(prefixed(META, meta::HEAD.as_bytes()), head);
        }
        if let Some(cp) = checkpoint {
            batch.insert(prefixed(META, meta::CHECKPOINT.as_bytes()), cp);
        }
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn commit(&self) -> Result<(), StoreError> {
        // THE COMMIT POINT: after these three steps return Ok, every append
        // made before `flush` began is on stable storage.
        self.db.flush().map_err(engine)?;
        self.log_file.sync_data()?;
        self.sync_blobs()
    }

    fn scan(&self, from: u64, to: u64) -> Scan<'_> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        let iter = self.tree.range(entry_key(from)..entry_key(to)).map(|item| {
            let (k, v) = item.map_err(engine)?;
            if k.len() != 9 {
                return Err(StoreError::Engine("malformed entry key".into()));
            }
            let seq = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
            Ok((seq, v.to_vec()))
        });
        Box::new(iter)
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(entry_key(seq))
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn len(&self) -> Result<u64, StoreError> {
        let last = self
            .tree
            .range(entry_key(0)..=entry_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(engine)?;
        Ok(match last {
            Some((k, _)) => u64::from_be_bytes(k[1..9].try_into().expect("8 bytes")) + 1,
            None => 0,
        })
    }

    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match self
            .tree
            .get(prefixed(REQUEST, request_id.as_bytes()))
            .map_err(engine)?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Engine(format!("request record of {request_id:?}: {e}"))),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(META, key.as_bytes()))
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tree
            .insert(prefixed(META, key.as_bytes()), value)
            .map_err(engine)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryBody, GENESIS_HASH};

    fn chain(n: u64) -> Vec<Entry> {
        let mut prev = GENESIS_HASH.to_owned();
        (0..n)
            .map(|i| {
                let e = EntryBody {
                    ts_ms: i,
                    request_id: format!("r{i}").into(),
                    actor: "a".into(),
                    intent: "i".into(),
                    decision: "ALLOW".into(),
                    state_from: "IDLE".into(),
                    state_to: "IDLE".into(),
                    ..EntryBody::default()
                }
                .seal(i, &prev);
                prev = e.entry_hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn appended_entries_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = chain(300);
        {
            let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
            assert_eq!(store.len().unwrap(), 0);
            store
                .append(
                    &entries[..200],
                    &[(
                        "r1".into(),
                        RequestRecord {
                            seq: 1,
                            content_hash: "h".into(),
                            status: crate::kernel::Status::Accepted,
                            tool_result: None,
                        },
                    )],
                    None,
                )
                .unwrap();
            store
                .append(&entries[200..], &[], Some(b"cp".to_vec()))
                .unwrap();
            store.commit().unwrap();
        }
        let store = SledStore::open(tmp.path(), &SledOptions::default()).unwrap();
        assert_eq!(store.len().unwrap(), 300);
        let back: Vec<Entry> = super::super::read_entries(&store, 100, 110)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, entries[100..110]);
        assert_eq!(store.request("r1").unwrap().unwrap().seq, 1);
        assert_eq!(store.request("nope").unwrap(), None);
        assert_eq!(
            store.meta(meta::CHECKPOINT).unwrap().as_deref(),
            Some(&b"cp"[..])
        );
        let head = store.meta(meta::HEAD).unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(head[..8].try_into().unwrap()), 300);
    }
}
