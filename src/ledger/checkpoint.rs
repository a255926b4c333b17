//! State checkpoints: when the ledger stores one, what it holds, and
//! whether a stored one can be used.
//!
//! Every `checkpoint_every` entries (and on a clean close) the folded
//! state is stored, in the same atomic append as the entries it covers,
//! with the request-id fingerprints not yet stored (see
//! [`super::requests`]). Opening then replays only the entries after it. A
//! checkpoint that does not match the chain is not used (the state is
//! replayed from genesis); one that covers more entries than the store
//! holds is a trace of a longer ledger (see [`super::traces`]).

use serde::{Deserialize, Serialize};

use crate::kernel::KernelState;
use crate::store::{LedgerStore, StoreError, meta, record};

/// Version of the checkpoint's state layout; a checkpoint of another
/// version is ignored (the state is then replayed from genesis).
pub const CHECKPOINT_VERSION: u32 = 2;

/// What a stored state checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`] when written.
    #[serde(default)]
    pub version: u32,
    /// Entries folded into `state`.
    pub len: u64,
    /// Hash of entry `len - 1`.
    pub hash: String,
    /// The folded state.
    pub state: KernelState,
}

/// Whether a checkpoint is due at `len` entries, the last one at `last`.
pub(crate) fn due(len: u64, last: u64, every: u64) -> bool {
    len - last >= every
}

/// The stored form of a checkpoint of `state`.
pub(crate) fn encode(state: &KernelState) -> Vec<u8> {
    serde_json::to_vec(&Checkpoint {
        version: CHECKPOINT_VERSION,
        len: state.head.len,
        hash: state.head.hash.clone(),
        state: state.clone(),
    })
    .expect("states serialize")
}

/// The stored checkpoint, if there is one of this version that says what
/// it covers consistently (else None, with a warning: the state is then
/// replayed from genesis).
pub(crate) fn stored(store: &dyn LedgerStore) -> Result<Option<Checkpoint>, StoreError> {
    let Some(bytes) = store.meta(meta::CHECKPOINT)? else {
        return Ok(None);
    };
    Ok(match serde_json::from_slice::<Checkpoint>(&bytes) {
        Ok(cp)
            if cp.version == CHECKPOINT_VERSION
                && cp.len > 0
                && cp.state.head.len == cp.len
                && cp.state.head.hash == cp.hash =>
        {
            Some(cp)
        }
        Ok(_) => {
            tracing::warn!("state checkpoint is inconsistent; replaying from genesis");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "state checkpoint is unreadable; replaying from genesis");
            None
        }
    })
}

/// Whether `cp` (covering at most `len` stored entries) matches the stored
/// chain: the entry it ends on has its hash.
pub(crate) fn matches_chain(store: &dyn LedgerStore, cp: &Checkpoint) -> Result<bool, StoreError> {
    let stored_hash = store
        .get(cp.len - 1)?
        .and_then(|b| record::split(&b).ok().map(|p| hex::encode(p.entry_hash)));
    if stored_hash.as_deref() == Some(cp.hash.as_str()) {
        return Ok(true);
    }
    tracing::warn!(
        len = cp.len,
        "state checkpoint does not match the chain; replaying from genesis"
    );
    Ok(false)
}
