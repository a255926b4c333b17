//! Traces of how long the ledger was, and the check that a store did not
//! come back shorter.
//!
//! A damaged or deleted write-ahead log generation can leave a store that
//! is shorter than what was acknowledged, yet internally consistent. Every
//! durable trace of the longer state is therefore compared with the store
//! on open (and by `kernels verify --data-dir`, so that both agree):
//!
//! * `DURABLE_HEAD` (fsynced, every checkpoint interval and on a clean stop)
//!   and `LAST_COMMIT` (after every commit; survives a crash of the process)
//!   beside the store — see [`crate::store::datadir`];
//! * the stored state checkpoint, which says how many entries it folded;
//! * whatever the caller knows ([`LedgerOptions::known_heads`](super::LedgerOptions::known_heads)):
//!   the hook for the newest archived manifest and a signed checkpoint.
//!
//! A store shorter than a trace is refused with how many entries are
//! missing; a store whose entry at a trace's length has another hash is
//! refused too.

use crate::chain::ChainError;
use crate::store::datadir::DataDir;
use crate::store::{LedgerStore, StoreError, record};

/// A head the ledger is known to have reached: `len` entries, the last
/// with hash `hash` (when known), according to `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHead {
    /// Where this is known from (said in the refusal).
    pub source: String,
    /// Entries the ledger had.
    pub len: u64,
    /// Hash of entry `len - 1`, when the trace has it.
    pub hash: Option<String>,
}

/// The traces kept beside the store in `dir`.
pub(crate) fn of_data_dir(dir: &DataDir) -> Result<Vec<KnownHead>, StoreError> {
    let mut heads = Vec::new();
    if let Some((len, hash)) = dir.durable_head()? {
        heads.push(KnownHead {
            source: "the durable head recorded beside the store (DURABLE_HEAD)".into(),
            len,
            hash: Some(hash),
        });
    }
    if let Some((len, hash)) = dir.last_commit()? {
        heads.push(KnownHead {
            source: "the last commit noted beside the store (LAST_COMMIT)".into(),
            len,
            hash: Some(hash),
        });
    }
    Ok(heads)
}

/// Every way the store (of `len` entries) contradicts `heads`; the
/// shortfalls first, the largest first.
pub(crate) fn check(
    store: &dyn LedgerStore,
    len: u64,
    heads: &[KnownHead],
) -> Result<Vec<ChainError>, StoreError> {
    let mut missing: Vec<&KnownHead> = heads.iter().filter(|h| h.len > len).collect();
    missing.sort_by_key(|h| std::cmp::Reverse(h.len));
    let mut errors: Vec<ChainError> = missing
        .into_iter()
        .map(|h| ChainError {
            index: Some(len),
            message: format!(
                "{} entries are missing: the store has {len} entries but {} shows {}; entries {len}..{} are missing (restore the data dir from a backup or the archive)",
                h.len - len,
                h.source,
                h.len,
                h.len - 1
            ),
        })
        .collect();
    for h in heads.iter().filter(|h| h.len <= len && h.len > 0) {
        let Some(want) = &h.hash else { continue };
        let seq = h.len - 1;
        let stored = match store.get(seq)? {
            Some(bytes) => record::split(&bytes)
                .ok()
                .map(|p| hex::encode(p.entry_hash)),
            None => None,
        };
        if stored.as_deref() != Some(want.as_str()) {
            errors.push(ChainError {
                index: Some(seq),
                message: format!("entry hash differs from {}", h.source),
            });
        }
    }
    Ok(errors)
}
