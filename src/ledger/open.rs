//! Opening a ledger: the data dir, the store, the checks, the state.
//!
//! In order: lock the data dir and check its format; open sled; check the
//! store is not shorter than the durable head recorded beside it; verify the
//! stored chain (every entry by default — one SHA-256 per entry over its
//! stored preimage, in parallel — or only from the last checkpoint); rebuild
//! the state from the last valid checkpoint plus the entries after it. Any
//! broken entry stops the open with its seq: the service refuses to start.
//! Then, for a service: the first start writes `kernel.create`, later starts
//! write `kernel.start`, and a changed policy file is recorded as a
//! `kernel.policy_update` by SYSTEM.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::chain::{ChainError, VerifyReport};
use crate::entry::{EntryBody, GENESIS_HASH};
use crate::kernel::permit::Keyring;
use crate::kernel::{EventError, KernelState, Policy, Variant};
use crate::metrics::Metrics;
use crate::store::datadir::DataDir;
use crate::store::record;
use crate::store::sled_store::{SledOptions, SledStore};
use crate::store::{LedgerStore, StoreError, meta};

use super::{Checkpoint, Clock, Core, Inner, Ledger, LedgerError, Queue, report};

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

pub(crate) fn encode_checkpoint(state: &KernelState) -> Vec<u8> {
    serde_json::to_vec(&Checkpoint {
        version: super::CHECKPOINT_VERSION,
        len: state.head.len,
        hash: state.head.hash.clone(),
        state: state.clone(),
    })
    .expect("states serialize")
}

fn corrupt(seq: u64, message: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        seq,
        message: message.into(),
    }
}

impl Ledger {
    /// Opens the ledger in `path` (see the module doc for the steps).
    pub fn open(
        path: &std::path::Path,
        options: LedgerOptions,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Ledger, LedgerError> {
        let datadir = DataDir::open(path, options.create)?;
        let store = SledStore::open(&datadir.ledger_path(), &options.sled)?;
        let store: Arc<dyn LedgerStore> = Arc::new(store);
        let len = store.len()?;

        if let Some((durable_len, hash)) = datadir.durable_head()? {
            if len < durable_len {
                return Err(corrupt(
                    len,
                    format!(
                        "the store has {len} entries but {durable_len} were durable: entries {len}..{} are missing",
                        durable_len - 1
                    ),
                ));
            }
            let stored = store
                .get(durable_len - 1)?
                .ok_or_else(|| corrupt(durable_len - 1, "entry is missing"))?;
            let parts =
                record::split(&stored).map_err(|e| corrupt(durable_len - 1, e.to_string()))?;
            if hex::encode(parts.entry_hash) != hash {
                return Err(corrupt(
                    durable_len - 1,
                    "entry hash differs from the durable head recorded beside the store",
                ));
            }
        }

        match (store.meta(meta::KERNEL_ID)?, &options.kernel_id) {
            (Some(stored), Some(wanted)) if stored != wanted.as_bytes() => {
                return Err(LedgerError::Mismatch(format!(
                    "data dir {} belongs to kernel '{}', not '{wanted}'",
                    path.display(),
                    String::from_utf8_lossy(&stored)
                )));
            }
            _ => {}
        }

        // The last checkpoint, if it matches the chain.
        let checkpoint: Option<Checkpoint> = match store.meta(meta::CHECKPOINT)? {
            Some(bytes) => match serde_json::from_slice::<Checkpoint>(&bytes) {
                Ok(cp)
                    if cp.version == super::CHECKPOINT_VERSION
                        && cp.len <= len
                        && cp.len > 0
                        && cp.state.head.len == cp.len
                        && cp.state.head.hash == cp.hash =>
                {
                    let stored_hash = store
                        .get(cp.len - 1)?
                        .and_then(|b| record::split(&b).ok().map(|p| hex::encode(p.entry_hash)));
                    if stored_hash.as_deref() == Some(cp.hash.as_str()) {
                        Some(cp)
                    } else {
                        tracing::warn!(
                            len = cp.len,
                            "state checkpoint does not match the chain; replaying from genesis"
                        );
                        None
                    }
                }
                Ok(_) => {
                    tracing::warn!("state checkpoint is inconsistent; replaying from genesis");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state checkpoint is unreadable; replaying from genesis");
                    None
                }
            },
            None => None,
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

        let core = Core {
            last_checkpoint_len: from,
            state,
            unsynced: Default::default(),
        };
        let ledger = Ledger {
            inner: Arc::new(Inner {
                store,
                datadir: Some(datadir),
                core: Mutex::new(core),
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
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
                return Err(LedgerError::Mismatch(format!(
                    "data dir {} holds no ledger yet",
                    path.display()
                )));
            };
            let policy = options
                .policy
                .clone()
                .unwrap_or_else(|| Policy::default_for(variant));
            ledger.store().set_meta(
                meta::FORMAT,
                crate::STORAGE_FORMAT_VERSION.to_string().as_bytes(),
            )?;
            ledger.store().set_meta(meta::KERNEL_ID, id.as_bytes())?;
            ledger
                .record_now(|state, now| state.create_event(now, "SYSTEM", id, variant, &policy))?;
        } else {
            let state = ledger.state();
            if let (Some(wanted), Some(have)) = (options.variant, state.variant)
                && wanted != have
            {
                return Err(LedgerError::Mismatch(format!(
                    "data dir {} holds a {have} kernel, but the configuration asks for {wanted}",
                    path.display()
                )));
            }
            if options.record_start {
                let version = options.software_version.clone();
                ledger.record_now(|state, now| state.start_event(now, &version))?;
            }
            // The configured policy applies when it differs from the one last
            // taken from the configuration — not from the active policy, which
            // an operator may have changed since through the API.
            if let Some(policy) = &options.policy
                && state.configured_policy_hash.as_deref() != Some(policy.hash().as_str())
            {
                let reason = format!("policy file changed: {}", options.policy_source);
                ledger.record_now(|state, now| {
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
            .spawn(move || super::commit::run(inner))
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
            encode_checkpoint(&after)
        };
        self.inner
            .store
            .append(std::slice::from_ref(&entry), &[], Some(cp))?;
        self.inner.store.commit()?;
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

/// Verifies every stored entry of the data dir at `path`, reporting every
/// problem (unlike opening, which stops at the first).
pub fn verify_data_dir(path: &std::path::Path) -> Result<VerifyReport, LedgerError> {
    let datadir = DataDir::open(path, false)?;
    let store = SledStore::open(&datadir.ledger_path(), &SledOptions::default())?;
    let len = store.len()?;
    let mut report = verify_store(&store, 0, len, GENESIS_HASH);
    if let Some((durable_len, _)) = datadir.durable_head()?
        && len < durable_len
    {
        report.errors.push(ChainError {
            index: Some(len),
            message: format!(
                "entries {len}..{} were durable but are missing",
                durable_len - 1
            ),
        });
        report.valid = false;
    }
    Ok(report)
}

/// Verifies stored entries `from..to`, whose first must link to `anchor`:
/// every entry's hash recomputed from its stored preimage, every link, every
/// seq, every payload. Runs in parallel over sub-ranges; reports every error.
pub fn verify_store<S: LedgerStore + ?Sized>(
    store: &S,
    from: u64,
    to: u64,
    anchor: &str,
) -> VerifyReport {
    if from >= to {
        return report(0, anchor.to_owned(), Vec::new());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8) as u64;
    let span = (to - from).div_ceil(threads).max(1);
    let ranges: Vec<(u64, u64)> = (0..threads)
        .map(|i| (from + i * span, (from + (i + 1) * span).min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    let results: Vec<RangeCheck> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| scope.spawn(move || check_range(store, a, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| RangeCheck::failed()))
            .collect()
    });
    let mut errors = Vec::new();
    let mut expected_prev = anchor.to_owned();
    let mut count = 0;
    let mut root = anchor.to_owned();
    for (range, check) in ranges.iter().zip(results) {
        if let Some(first_prev) = &check.first_prev
            && *first_prev != expected_prev
        {
            errors.push(ChainError {
                index: Some(range.0),
                message: format!(
                    "prev_hash does not link to entry {}",
                    range.0.wrapping_sub(1)
                ),
            });
        }
        errors.extend(check.errors);
        count += check.count;
        if let Some(last) = check.last_hash {
            expected_prev = hex::encode(last);
            root = expected_prev.clone();
        }
    }
    report(count, root, errors)
}

struct RangeCheck {
    first_prev: Option<String>,
    last_hash: Option<[u8; 32]>,
    count: u64,
    errors: Vec<ChainError>,
}

impl RangeCheck {
    fn failed() -> RangeCheck {
        RangeCheck {
            first_prev: None,
            last_hash: None,
            count: 0,
            errors: vec![ChainError {
                index: None,
                message: "verification thread failed".into(),
            }],
        }
    }
}

fn check_range<S: LedgerStore + ?Sized>(store: &S, from: u64, to: u64) -> RangeCheck {
    let mut out = RangeCheck {
        first_prev: None,
        last_hash: None,
        count: 0,
        errors: Vec::new(),
    };
    let mut expected_seq = from;
    let mut prev: Option<[u8; 32]> = None;
    let err = |seq: u64, message: String| ChainError {
        index: Some(seq),
        message,
    };
    for item in store.scan(from, to) {
        let (key_seq, bytes) = match item {
            Ok(x) => x,
            Err(e) => {
                out.errors
                    .push(err(expected_seq, format!("unreadable: {e}")));
                break;
            }
        };
        if key_seq != expected_seq {
            out.errors.push(err(
                expected_seq,
                format!("entries {expected_seq}..{key_seq} are missing"),
            ));
        }
        out.count += 1;
        match record::split(&bytes) {
            Err(e) => {
                out.errors.push(err(key_seq, e.to_string()));
                prev = None;
            }
            Ok(parts) => {
                if parts.seq != key_seq {
                    out.errors
                        .push(err(key_seq, format!("stored ledger_seq is {}", parts.seq)));
                }
                match prev {
                    None if out.count == 1 => out.first_prev = Some(hex::encode(parts.prev_hash)),
                    Some(p) if p != *parts.prev_hash => out.errors.push(err(
                        key_seq,
                        "prev_hash does not link to the previous entry".into(),
                    )),
                    _ => {}
                }
                if parts.computed_hash() != *parts.entry_hash {
                    out.errors.push(err(
                        key_seq,
                        "entry_hash does not match the entry's contents".into(),
                    ));
                }
                if !parts.payload.is_empty() {
                    match record::decode_entry(&bytes) {
                        Ok(e) if e.payload_matches() == Some(Ok(true)) => {}
                        Ok(_) => out
                            .errors
                            .push(err(key_seq, "payload does not match params_hash".into())),
                        Err(e) => out.errors.push(err(key_seq, e.to_string())),
                    }
                } else if std::str::from_utf8(parts.preimage).is_err() {
                    out.errors
                        .push(err(key_seq, "hashed fields are not UTF-8".into()));
                }
                prev = Some(*parts.entry_hash);
                out.last_hash = Some(*parts.entry_hash);
            }
        }
        expected_seq = key_seq + 1;
    }
    if expected_seq < to && out.errors.is_empty() {
        out.errors.push(err(
            expected_seq,
            format!("entries {expected_seq}..{to} are missing"),
        ));
    }
    out
}
