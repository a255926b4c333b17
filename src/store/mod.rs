//! Durable storage of the ledger, behind a narrow trait.
//!
//! [`LedgerStore`] is all the rest of the service knows of storage: append
//! a batch atomically, make it durable, scan or get entries, the length, and
//! a few metadata keys — plus *side records*, values the ledger keeps beside
//! the entries (request records, request-id fingerprints, the Merkle tree's
//! tiles), written in the same atomic append as the entries they belong to
//! and read back by key.
//!
//! Two implementations: [`sled_store::SledStore`] (the engine the service
//! runs on: a write-ahead log in front of sled) and [`memory::MemoryStore`]
//! (for tests where sled is not the point). Around them:
//!
//! * [`datadir`] — the data directory: format marker, lock, durable heads
//! * [`migrate`] — the storage format upgrades (one file per version in `migrations/`)
//! * [`record`] — the stored byte layout of an entry
//! * [`request_records`] — the stored layout of request records and fingerprints
//! * [`tiles`] — the stored layout of the Merkle tree (tlog tiles in halves)
//! * [`key_file`] — the checkpoint signing key on disk
//! * [`wal`] — the write-ahead log, where a commit becomes durable
//! * [`fs`] — fsync steps shared by all of them
//!
//! and, private to the sled store: `chunk` (entries packed into values),
//! `keys` (sled's key layout), `applier` (the background writer and its
//! overlay), `sled_sync` (making sled durable, trimming the log),
//! `sled_cache` (keeping sled's cache bounded) and `sled_errors` (sled's
//! failures, a corrupt database included, as store errors).

mod applier;
mod chunk;
pub mod datadir;
pub mod fs;
pub mod key_file;
mod keys;
pub mod memory;
pub mod migrate;
pub mod record;
pub mod request_records;
mod sled_cache;
mod sled_errors;
pub mod sled_store;
mod sled_sync;
pub mod tiles;
pub mod wal;

use crate::entry::Entry;

/// Storage failures. Every variant fails the operation that met it; the
/// ledger treats a failed commit as fatal for the session (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine reported an error (I/O, corruption it detected).
    #[error("storage error: {0}")]
    Engine(String),
    /// Stored bytes are not a record we can read.
    #[error("entry {seq}: {message}")]
    Corrupt {
        /// Seq of the bad entry.
        seq: u64,
        /// What is wrong.
        message: String,
    },
    /// The data directory is not usable (missing marker, newer format, locked…).
    #[error("{0}")]
    DataDir(String),
    /// An I/O error outside the engine (marker, lock, fsync).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Metadata keys.
pub mod meta {
    /// Storage format version (decimal text).
    pub const FORMAT: &str = "format_version";
    /// The kernel id this ledger belongs to.
    pub const KERNEL_ID: &str = "kernel_id";
    /// The latest state checkpoint.
    pub const CHECKPOINT: &str = "checkpoint";
    /// The largest tree head the service signed (`ledger::signing`): written
    /// durably before a checkpoint of it is served.
    pub const SIGNED_TREE_HEAD: &str = "signed_tree_head";
    /// The verifier key of the key that signs the ledger's checkpoints.
    pub const SIGNING_KEY: &str = "signing_key";
}

/// Values are kept at or below this size where the writer can split them
/// (a chunk of entries, a block of request records or fingerprints): sled
/// writes a leaf above ~128 KiB to a blob file that its cache then never
/// evicts, and 4 KiB values keep every leaf (at most 16 keys) far below it.
pub const VALUE_BYTES: usize = 4 * 1024;
/// At most this many records are packed into one value (one group
/// commit's worth of entries).
pub const VALUE_RECORDS: usize = 64;

/// A family of side records: values kept beside the entries, each under a
/// `u64` key (a seq, the first seq of a block, a tree node's index), written
/// in the same atomic [`Append`] as the entries they belong to.
///
/// The families are listed here because each is part of the storage format
/// (its tag is its sled key prefix). The Merkle tree's tiles are one: they
/// are appended, in the same atomic step and group commit, with the entries
/// they cover, and read back with [`LedgerStore::side_range`] (one range
/// read per tile a proof needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Family(u8);

impl Family {
    /// The request records of an append, in blocks keyed by their first seq
    /// (see [`request_records`]).
    pub const REQUESTS: Family = Family(b's');
    /// Request-id fingerprints, in blocks of
    /// [`request_records::FINGERPRINT_BLOCK`] entries keyed by their first seq.
    pub const REQUEST_FINGERPRINTS: Family = Family(b'f');
    /// The Merkle tree's stored node hashes, in tile halves keyed by level
    /// and half index (see [`tiles`]).
    pub const TILES: Family = Family(b't');

    /// The family's one-byte tag (its sled key prefix).
    pub const fn tag(self) -> u8 {
        self.0
    }
}

/// One side record: `(family, key, value)`.
pub type SideRecord = (Family, u64, Vec<u8>);

/// One atomic append: entries (consecutive, continuing the stored chain),
/// side records and metadata values. Either all of it is stored or none.
#[derive(Debug, Default)]
pub struct Append<'a> {
    /// The entries, in seq order.
    pub entries: &'a [Entry],
    /// Side records (a later value for the same key replaces the earlier).
    pub side: Vec<SideRecord>,
    /// Metadata values to set.
    pub meta: Vec<(&'static str, Vec<u8>)>,
}

/// A scan over stored entries: `(seq, stored bytes)` in seq order.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + 'a>;

/// A scan over side records of one family: `(key, value)` in key order.
pub type SideScan<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + 'a>;

/// What the ledger needs from storage.
pub trait LedgerStore: Send + Sync + 'static {
    /// Stores `append` in one atomic step. Every read sees it at once; it is
    /// not durable until [`LedgerStore::commit`].
    fn append(&self, append: Append<'_>) -> Result<(), StoreError>;

    /// Makes everything appended so far durable. This is the commit point:
    /// when it returns Ok, the appended entries survive a crash or power loss.
    fn commit(&self) -> Result<(), StoreError>;

    /// Stored entries with `from <= seq < to`, in order.
    fn scan(&self, from: u64, to: u64) -> Scan<'_>;

    /// The stored bytes of entry `seq`.
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Number of stored entries (the seq the next entry gets).
    fn len(&self) -> Result<u64, StoreError>;

    /// Whether no entry is stored.
    fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// A metadata value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The side record of `family` with the greatest key `<= key`.
    fn side_at_or_before(
        &self,
        family: Family,
        key: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// The side records of `family` with `from <= key < to`, in key order.
    fn side_range(&self, family: Family, from: u64, to: u64) -> SideScan<'_>;
}

/// Reads and decodes entries `from..to` of a store.
pub fn read_entries<S: LedgerStore + ?Sized>(
    store: &S,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
    store.scan(from, to).map(|item| {
        let (seq, bytes) = item?;
        record::decode_entry(&bytes).map_err(|e| StoreError::Corrupt {
            seq,
            message: e.to_string(),
        })
    })
}
