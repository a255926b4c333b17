//! Opening a ledger: the storage, the checks, the state.
//!
//! In order: for a data dir, lock it and check its format (upgrading an
//! older one), and open sled; check the store against every trace of a
//! longer ledger ([`super::traces`], the signed tree heads included);
//! verify the stored chain and the Merkle tree's tiles (every entry by
//! default — one SHA-256 per entry over its stored preimage, and its leaf,
//! in parallel — or only from the last checkpoint); rebuild the state from
//! the last valid checkpoint plus the entries after it, the request index,
//! and the tree's compact range from its tiles; check that the tree has the
//! root the service signed at the largest signed size
//! ([`super::signing`]), and that the configured signing key is the one
//! the ledger records. Any broken entry stops the open with its seq: the
//! service refuses to start. Then, for a service: the first start writes
//! `kernel.create`, later starts write `kernel.start` (both naming the
//! signing key), and a changed policy file is recorded as a
//! `kernel.policy_update` by SYSTEM.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::checkpoint;
use super::clock::Clock;
use super::commit;
use super::core::{Core, Inner, Queue};
use super::error::LedgerError;
use super::handle::Ledger;
use super::requests::Requests;
use super::signing::{self, SignedHead, Signing};
use super::traces::{self, KnownHead};
use super::tree::{DurableTree, TreeHead};
use crate::entry::{EntryBody, GENESIS_HASH};
use crate::kernel::permit::Keyring;
use crate::kernel::{EventError, KernelState, Policy, Variant};
use crate::metrics::Metrics;
use crate::note::SignerKey;
use crate::store::datadir::DataDir;
use crate::store::memory::MemoryStore;
use crate::store::sled_store::{SledOptions, SledStore};
use crate::store::{Append, LedgerStore, StoreError, meta};

pub use super::verify::{verify_data_dir, verify_store};

/// How much of the stored chain is verified on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOnOpen {
    /// Every entry (the default).
    Full,
    /// Only the entries after the last valid checkpoint.
    FromCheckpoint,
}

/// How to open a ledger.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// The kernel id the ledger must have (and gets, when created).
    pub kernel_id: Option<String>,
    /// The variant the ledger must have (and gets, when created).
    pub variant: Option<Variant>,
    /// The policy the kernel should run with: the initial policy of a new
    /// ledger; for an existing one, recorded as an update when it differs.
    pub policy: Option<Policy>,
    /// Where `policy` came from (said in the update's reason).
    pub policy_source: String,
    /// Permit keyring (empty: permits are not required).
    pub keyring: Keyring,
    /// Jurisdiction permits must name.
    pub jurisdiction: String,
    /// Tools the kernel authorises but does not run.
    pub external_tools: std::collections::BTreeSet<String>,
    /// Entries between state checkpoints.
    pub checkpoint_every: u64,
    /// sled tuning.
    pub sled: SledOptions,
    /// Create the data dir and ledger when missing.
    pub create: bool,
    /// Record a `kernel.start` entry (a service start).
    pub record_start: bool,
    /// Software version recorded in `kernel.start`.
    pub software_version: String,
    /// Verification on open.
    pub verify: VerifyOnOpen,
    /// Heads the ledger is known to have reached, besides the traces kept
    /// beside the store and the signed tree heads it records (the hook for
    /// e.g. the newest archived manifest): a store shorter than one is refused.
    pub known_heads: Vec<KnownHead>,
    /// The key that signs the ledger's checkpoints (none: no checkpoints,
    /// unless `data_dir_key_origin` is set).
    pub signing: Option<Arc<SignerKey>>,
    /// With no `signing` key and a data dir: sign with the key in
    /// `<data_dir>/signing.key`, named this origin, created at first start
    /// ([`crate::store::key_file::data_dir_key`]).
    pub data_dir_key_origin: Option<String>,
    /// Accept a signing key other than the one the ledger records (an
    /// operator's deliberate rotation; recorded in `kernel.start`).
    pub rotate_signing_key: bool,
}

impl LedgerOptions {
    /// Options for offline tools: open an existing dir, change nothing.
    pub fn read_only() -> LedgerOptions {
        LedgerOptions {
            kernel_id: None,
            variant: None,
            policy: None,
            policy_source: String::new(),
            keyring: Keyring::new(),
            jurisdiction: "default".into(),
            external_tools: Default::default(),
            checkpoint_every: 10_000,
            sled: SledOptions::default(),
            create: false,
            record_start: false,
            software_version: env!("CARGO_PKG_VERSION").into(),
            verify: VerifyOnOpen::Full,
            known_heads: Vec::new(),
            signing: None,
            data_dir_key_origin: None,
            rotate_signing_key: false,
        }
    }

    /// Options for a service of kernel `kernel_id`.
    pub fn service(kernel_id: &str, variant: Variant, policy: Policy) -> LedgerOptions {
        LedgerOptions {
            kernel_id: Some(kernel_id.to_owned()),
            variant: Some(variant),
            policy: Some(policy),
            create: true,
            record_start: true,
            ..LedgerOptions::read_only()
        }
    }
}

/// Where a ledger lives: a data dir (sled, the service's storage) or any
/// store (e.g. a [`MemoryStore`] in tests).
#[derive(Clone)]
pub enum Storage {
    /// A data dir: locked, format-checked, with sled inside and the traces
    /// of its length beside it.
    Dir(PathBuf),
    /// A store on its own (no data dir: no lock, no traces beside it).
    Store(Arc<dyn LedgerStore>),
}

impl From<&Path> for Storage {
    fn from(path: &Path) -> Storage {
        Storage::Dir(path.to_owned())
    }
}

impl From<&PathBuf> for Storage {
    fn from(path: &PathBuf) -> Storage {
        Storage::Dir(path.clone())
    }
}

impl From<PathBuf> for Storage {
    fn from(path: PathBuf) -> Storage {
        Storage::Dir(path)
    }
}

impl From<MemoryStore> for Storage {
    fn from(store: MemoryStore) -> Storage {
        Storage::Store(Arc::new(store))
    }
}

impl From<Arc<dyn LedgerStore>> for Storage {
    fn from(store: Arc<dyn LedgerStore>) -> Storage {
        Storage::Store(store)
    }
}

fn corrupt(seq: u64, message: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        seq,
        message: message.into(),
    }
}

/// A store's corruption as the ledger's (the service refuses to start).
fn corrupt_store(e: StoreError) -> LedgerError {
    match e {
        StoreError::Corrupt { seq, message } => corrupt(seq, message),
        other => LedgerError::Store(other),
    }
}

/// The ledger's signing, from the configured key, and the key it replaces
/// when the operator rotated it. The ledger records the verifier key of
/// its signing key: another key is refused unless the rotation is explicit
/// (verifiers pin the key; a new key is a new identity for them).
fn signing_of(
    store: &dyn LedgerStore,
    options: &LedgerOptions,
    signed_heads: &[SignedHead],
    what: &str,
) -> Result<(Option<Signing>, Option<String>), LedgerError> {
    let Some(key) = &options.signing else {
        return Ok((None, None));
    };
    let verifier = key.verifier().to_string();
    let recorded = store
        .meta(meta::SIGNING_KEY)?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let changed = recorded.filter(|r| *r != verifier);
    if let Some(old) = &changed
        && !options.rotate_signing_key
    {
        return Err(LedgerError::Mismatch(format!(
            "{what} signs its checkpoints with {old}, but the configured signing key is {verifier}: a new key is a new identity for every verifier that pinned the old one. Configure the old key again, or, to rotate deliberately, start once with --rotate-signing-key (recorded in kernel.start)"
        )));
    }
    // The largest head signed so far (by any key): a restart never signs
    // a tree that does not extend it.
    let persisted = signed_heads
        .iter()
        .max_by_key(|h| h.size)
        .map(|h| TreeHead {
            size: h.size,
            root: h.root,
        });
    Ok((Some(Signing::new(key.clone(), persisted)), changed))
}

/// The signing key kept in the data dir (created, and its verifier key
/// logged, at first start).
fn data_dir_signing_key(dir: &Path, origin: &str) -> Result<SignerKey, LedgerError> {
    let (key, created) = crate::store::key_file::data_dir_key(dir, origin)
        .map_err(|e| LedgerError::Mismatch(e.to_string()))?;
    if created {
        tracing::warn!(
            verifier_key = %key.verifier(),
            file = %dir.join(crate::store::key_file::DATA_DIR_KEY).display(),
            "created a checkpoint signing key in the data dir (in production, keep the key in a separate file: signing.key_file)"
        );
    }
    Ok(key)
}

impl Ledger {
    /// Opens the ledger in `storage` — a data dir path or a store (see the
    /// module doc for the steps).
    pub fn open(
        storage: impl Into<Storage>,
        mut options: LedgerOptions,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, LedgerError> {
        let (store, datadir, what): (Arc<dyn LedgerStore>, Option<DataDir>, String) =
            match storage.into() {
                Storage::Dir(path) => {
                    let datadir = DataDir::open(&path, options.create)?;
                    if options.signing.is_none()
                        && let Some(origin) = &options.data_dir_key_origin
                    {
                        options.signing = Some(Arc::new(data_dir_signing_key(&path, origin)?));
                    }
                    let store = SledStore::open(&datadir.ledger_path(), &options.sled)?;
                    (
                        Arc::new(store),
                        Some(datadir),
                        format!("data dir {}", path.display()),
                    )
                }
                Storage::Store(store) => (store, None, "the store".to_owned()),
            };
        let len = store.len()?;

        // Traces of a longer ledger: beside the store, the checkpoint, the caller's.
        let mut heads = match &datadir {
            Some(dir) => traces::of_data_dir(dir)?,
            None => Vec::new(),
        };
        heads.extend(super::verify::checkpoint_head(store.as_ref())?);
        let signed_heads = signing::recorded_heads(store.as_ref(), datadir.as_ref())?;
        heads.extend(signed_heads.iter().map(|h| h.trace("a signed checkpoint")));
        heads.extend(options.known_heads.iter().cloned());
        if let Some(first) = traces::check(store.as_ref(), len, &heads)?
            .into_iter()
            .next()
        {
            return Err(corrupt(first.index.unwrap_or(len), first.message));
        }

        match (store.meta(meta::KERNEL_ID)?, &options.kernel_id) {
            (Some(stored), Some(wanted)) if stored != wanted.as_bytes() => {
                return Err(LedgerError::Mismatch(format!(
                    "{what} belongs to kernel '{}', not '{wanted}'",
                    String::from_utf8_lossy(&stored)
                )));
            }
            _ => {}
        }

        // The last checkpoint, if it matches the chain.
        let checkpoint = match checkpoint::stored(store.as_ref())? {
            Some(cp) if cp.len <= len && checkpoint::matches_chain(store.as_ref(), &cp)? => {
                Some(cp)
            }
            _ => None,
        };
        let (mut state, from) = match checkpoint {
            Some(cp) => (cp.state, cp.len),
            None => (KernelState::default(), 0),
        };

        // Verification: every entry, or the tail.
        let (verify_from, anchor) = match options.verify {
            VerifyOnOpen::Full => (0, GENESIS_HASH.to_owned()),
            VerifyOnOpen::FromCheckpoint => (from, state.head.hash.clone()),
        };
        let report = verify_store(store.as_ref(), verify_from, len, &anchor);
        if let Some(first) = report.errors.first() {
            let more = if report.errors.len() > 1 {
                format!(
                    " ({} problems in all; `kernels verify --data-dir` lists them)",
                    report.errors.len()
                )
            } else {
                String::new()
            };
            return Err(corrupt(
                first.index.unwrap_or(len),
                format!("{}{more}", first.message),
            ));
        }

        // State: the checkpoint plus the entries after it.
        for item in crate::store::read_entries(store.as_ref(), from, len) {
            let entry = item.map_err(|e| match e {
                StoreError::Corrupt { seq, message } => corrupt(seq, message),
                other => LedgerError::Store(other),
            })?;
            let seq = entry.ledger_seq;
            state
                .apply(&entry)
                .map_err(|e| corrupt(seq, e.to_string()))?;
        }

        let (requests, stale) = Requests::load(store.as_ref(), len)?;
        let tree = DurableTree::open(store.as_ref(), len).map_err(corrupt_store)?;
        let nodes = tree.nodes(store.as_ref());
        signing::check_signed_head(&signed_heads, |size| signing::stored_root(&nodes, size))
            .map_err(|message| corrupt(len.saturating_sub(1), message))?;
        let (signer, key_change) = signing_of(store.as_ref(), &options, &signed_heads, &what)?;
        let core = Core {
            last_checkpoint_len: from,
            state,
            unappended: Default::default(),
        };
        let mut queue = Queue::default();
        queue.pending.side = stale;
        let ledger = Ledger {
            inner: Arc::new(Inner {
                store,
                datadir,
                core: Mutex::new(core),
                queue: Mutex::new(queue),
                work: Condvar::new(),
                requests,
                tree,
                signing: signer,
                appended_len: AtomicU64::new(len),
                durable_len: AtomicU64::new(len),
                durable_head_file_len: AtomicU64::new(0),
                poisoned: Mutex::new(None),
                closed: AtomicBool::new(false),
                clock,
                keyring: options.keyring.clone(),
                jurisdiction: options.jurisdiction.clone(),
                external_tools: options.external_tools.clone(),
                checkpoint_every: options.checkpoint_every.max(1),
                metrics,
                flusher: Mutex::new(Vec::new()),
            }),
        };

        if len == 0 {
            let (Some(id), Some(variant), true) =
                (&options.kernel_id, options.variant, options.create)
            else {
                return Err(LedgerError::Mismatch(format!("{what} holds no ledger yet")));
            };
            let policy = options
                .policy
                .clone()
                .unwrap_or_else(|| Policy::default_for(variant));
            let mut meta = vec![
                (
                    meta::FORMAT,
                    crate::STORAGE_FORMAT_VERSION.to_string().into_bytes(),
                ),
                (meta::KERNEL_ID, id.as_bytes().to_vec()),
            ];
            let key = ledger.verifier_key().map(|k| k.to_string());
            meta.extend(key.clone().map(|k| (meta::SIGNING_KEY, k.into_bytes())));
            ledger.record_now(meta, |state, now| {
                state.create_event(now, "SYSTEM", id, variant, &policy, key.as_deref())
            })?;
        } else {
            let state = ledger.state();
            if let (Some(wanted), Some(have)) = (options.variant, state.variant)
                && wanted != have
            {
                return Err(LedgerError::Mismatch(format!(
                    "{what} holds a {have} kernel, but the configuration asks for {wanted}"
                )));
            }
            if options.record_start {
                let version = options.software_version.clone();
                let key = ledger.verifier_key().map(|k| k.to_string());
                let meta: Vec<_> = key
                    .clone()
                    .map(|k| (meta::SIGNING_KEY, k.into_bytes()))
                    .into_iter()
                    .collect();
                ledger.record_now(meta, |state, now| {
                    state.start_event(now, &version, key.as_deref(), key_change.as_deref())
                })?;
            }
            // The configured policy applies when it differs from the one last
            // taken from the configuration — not from the active policy, which
            // an operator may have changed since through the API.
            if let Some(policy) = &options.policy
                && state.configured_policy_hash.as_deref() != Some(policy.hash().as_str())
            {
                let reason = format!("policy file changed: {}", options.policy_source);
                ledger.record_now(Vec::new(), |state, now| {
                    state.policy_update_event(
                        now,
                        "SYSTEM",
                        policy,
                        &reason,
                        crate::kernel::events::POLICY_FROM_CONFIG,
                    )
                })?;
            }
        }
        {
            let state = ledger.state();
            ledger
                .inner
                .metrics
                .ledger_length
                .set(state.head.len as i64);
            ledger
                .inner
                .metrics
                .halted
                .set(i64::from(state.is_halted()));
        }

        let inner = ledger.inner.clone();
        let flusher = std::thread::Builder::new()
            .name("kernels-commit".into())
            .spawn(move || commit::run(inner))
            .map_err(StoreError::Io)?;
        *ledger
            .inner
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = vec![flusher];
        Ok(ledger)
    }

    /// Records an event and commits it synchronously (used while opening,
    /// before the flusher runs).
    fn record_now(
        &self,
        meta: Vec<(&'static str, Vec<u8>)>,
        build: impl FnOnce(&KernelState, u64) -> Result<EntryBody, EventError>,
    ) -> Result<(), LedgerError> {
        let mut core = self.lock_core();
        let now = self.now(&core);
        let body = build(&core.state, now)?;
        let entry = core.state.seal(body);
        let cp = {
            let mut after = core.state.clone();
            after
                .apply(&entry)
                .expect("a sealed entry continues the chain");
            checkpoint::encode(&after)
        };
        // As the flusher appends a batch with a checkpoint (and whatever
        // opening found to carry), but synchronously.
        let carried = std::mem::take(&mut self.inner.lock_queue().pending.side);
        let end = entry.ledger_seq + 1;
        let (side, fingerprints_to) = self.inner.requests.side_records(&[], Some(end), true);
        let mut all_side = carried;
        all_side.extend(side);
        all_side.extend(
            self.inner
                .tree
                .stage(std::slice::from_ref(&entry))
                .map_err(|e| corrupt(entry.ledger_seq, e))?,
        );
        let mut meta = meta;
        meta.push((crate::store::meta::CHECKPOINT, cp));
        self.inner.store.append(Append {
            entries: std::slice::from_ref(&entry),
            side: all_side,
            meta,
        })?;
        if let Some(to) = fingerprints_to {
            self.inner.requests.stored_through(to);
        }
        self.inner.store.commit()?;
        self.inner.tree.publish();
        if let Some(dir) = &self.inner.datadir {
            dir.note_commit(end, &entry.entry_hash)?;
        }
        core.state
            .apply(&entry)
            .expect("a sealed entry continues the chain");
        core.last_checkpoint_len = entry.ledger_seq + 1;
        self.inner
            .appended_len
            .store(entry.ledger_seq + 1, Ordering::Release);
        self.inner
            .durable_len
            .store(entry.ledger_seq + 1, Ordering::Release);
        Ok(())
    }
}
