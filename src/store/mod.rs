//! Durable storage of the ledger, behind a narrow trait.
//!
//! [`LedgerStore`] is all the rest of the service knows of storage: append a
//! batch atomically, make it durable, scan a range, look up a request id, and
//! a few metadata keys. [`sled_store::SledStore`] implements it on sled;
//! [`datadir`] owns the data directory around it (format marker, lock,
//! migrations); [`record`] is the stored byte layout; [`request_index`]
//! finds the entry of a request id without I/O.

pub mod datadir;
pub mod record;
pub mod request_index;
pub mod sled_store;
pub mod wal;

use crate::entry::Entry;
pub use record::RequestRecord;

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
    /// Head after the last append: 8-byte BE length + 32-byte raw hash.
    pub const HEAD: &str = "head";
    /// The latest state checkpoint (JSON).
    pub const CHECKPOINT: &str = "checkpoint";
}

/// A scan over stored entries: `(seq, stored bytes)` in seq order.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + 'a>;

/// What the ledger needs from storage.
pub trait LedgerStore: Send + Sync + 'static {
    /// Appends `entries` (consecutive, continuing the stored chain), their
    /// request records and optionally a checkpoint, and moves the head — all
    /// in one atomic step. Not durable until [`LedgerStore::commit`].
    fn append(
        &self,
        entries: &[Entry],
        requests: &[RequestRecord],
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), StoreError>;

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

    /// The record of a submitted request id, if one was appended. Meant to
    /// be called under the ledger's lock: the store keeps an in-memory index
    /// and reads only to confirm a match (a retry, or a rare fingerprint
    /// collision).
    fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError>;

    /// A metadata value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets a metadata value (durable at the next commit).
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
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
