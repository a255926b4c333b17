//! The durable kernel: the pure kernel's state, a store, and group commit.
//!
//! A [`Ledger`] owns its storage (a data dir with sled, or any
//! [`LedgerStore`](crate::store::LedgerStore)). Every decision and
//! operational event is decided under one short lock, sealed onto the chain
//! and queued; a flusher thread appends whole batches to the store and
//! commits them (one write + fdatasync for many entries). Nobody gets a
//! receipt for an entry that is not on stable storage, and a failed commit
//! fails every caller of its batch and closes the ledger (fail closed) until
//! the service is restarted and the stored chain re-verified.
//!
//! * [`open`] — opening: storage, traces of a longer ledger, verification,
//!   checkpoint, replay
//! * `handle` — the [`Ledger`] handle: submit, events, reads, close
//! * `core` — the shared state and its two locks (core → queue)
//! * `commit` — the group-commit flusher
//! * [`outcome`] — recording a `kernel.outcome` once per request
//! * `requests` and `request_index` — finding a request id's decision
//! * `checkpoint` — when the state is stored, and what a stored one holds
//! * `traces` — the check that a store did not come back shorter
//! * `tree` — the Merkle tree kept with the entries and its published head
//! * `signing` — the signing key and its signed heads, never two inconsistent
//! * `provable` — the ledger's proofs, checkpoints and peer cosignatures
//! * `verify` — verification of a stored chain, and of a data dir
//! * `tree_check` — verification of the stored tree against the entries
//! * `status`, `clock`, `error` — what the ledger reports, its time, its errors

mod checkpoint;
mod clock;
mod commit;
mod core;
mod error;
mod handle;
pub mod open;
pub mod outcome;
mod provable;
mod request_index;
mod requests;
mod signing;
mod status;
mod traces;
mod tree;
mod tree_check;
mod verify;

pub use checkpoint::{CHECKPOINT_VERSION, Checkpoint};
pub use clock::{Clock, SystemClock};
pub use error::LedgerError;
pub use handle::{Durable, Ledger};
pub use open::{LedgerOptions, Storage};
pub use signing::{CACHED as CACHED_CHECKPOINTS, SignedHead};
pub use status::{LedgerStatus, replay_summary};
pub use traces::KnownHead;
pub use tree::{TreeError, TreeHead};
