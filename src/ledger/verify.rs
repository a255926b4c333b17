//! Verification of a stored chain: every entry re-hashed from its stored
//! preimage and linked, and the stored Merkle tree checked against the
//! entries ([`super::tree_check`]), in parallel over sub-ranges, every
//! problem reported (unlike opening, which stops at the first) — and, for a
//! data dir, the traces of a longer ledger ([`super::traces`]) and the
//! signed tree heads ([`super::signing`]), so that `kernels verify
//! --data-dir` and `serve` agree.

use crate::chain::{ChainError, VerifyReport};
use crate::entry::GENESIS_HASH;
use crate::store::datadir::DataDir;
use crate::store::record;
use crate::store::sled_store::{SledOptions, SledStore};
use crate::store::tiles::{EdgeTiles, TileWriter};
use crate::store::{LedgerStore, StoreError};

use super::checkpoint;
use super::error::LedgerError;
use super::signing;
use super::traces::{self, KnownHead};
use super::tree_check::{LeafCheck, check_upper_levels};
use crate::merkle::tiles::TILE_WIDTH;

/// Collects errors of a stored-chain check into a report.
pub(crate) fn report(entries: u64, root: String, errors: Vec<ChainError>) -> VerifyReport {
    VerifyReport {
        valid: errors.is_empty(),
        entries_verified: entries,
        computed_root_hash: root,
        errors,
    }
}

/// Verifies every stored entry of the data dir at `path`, and the traces
/// of its length, reporting every problem.
pub fn verify_data_dir(path: &std::path::Path) -> Result<VerifyReport, LedgerError> {
    let datadir = DataDir::open(path, false)?;
    let store = SledStore::open(&datadir.ledger_path(), &SledOptions::default())?;
    let len = store.len()?;
    let mut report = verify_store(&store, 0, len, GENESIS_HASH);
    let mut heads = traces::of_data_dir(&datadir)?;
    heads.extend(checkpoint_head(&store)?);
    let signed = signing::recorded_heads(&store, Some(&datadir))?;
    heads.extend(signed.iter().map(|h| h.trace("a signed checkpoint")));
    let mut problems = traces::check(&store, len, &heads)?;
    // The tree at each signed size (that the store holds) has the signed root.
    let held: Vec<_> = signed.into_iter().filter(|h| h.size <= len).collect();
    if report.valid {
        let checked = TileWriter::resume(&store, len)
            .map_err(|e| e.to_string())
            .and_then(|writer| {
                let nodes = EdgeTiles::new(&store, writer.edges()).nodes();
                signing::check_signed_head(&held, |size| signing::stored_root(&nodes, size))
            });
        if let Err(message) = checked {
            problems.push(ChainError {
                index: Some(len.saturating_sub(1)),
                message,
            });
        }
    }
    if !problems.is_empty() {
        problems.append(&mut report.errors);
        report.errors = problems;
        report.valid = false;
    }
    Ok(report)
}

/// The stored checkpoint as a trace: it folded `cp.len` entries.
pub(crate) fn checkpoint_head(store: &dyn LedgerStore) -> Result<Option<KnownHead>, StoreError> {
    Ok(checkpoint::stored(store)?.map(|cp| KnownHead {
        source: "the stored state checkpoint".into(),
        len: cp.len,
        hash: None,
    }))
}

/// Verifies stored entries `from..to`, whose first must link to `anchor`:
/// every entry's hash recomputed from its stored preimage, every link, every
/// seq, every payload, and the stored Merkle tree over them (every leaf from
/// `from`, every stored node above). Runs in parallel over sub-ranges
/// (aligned to blocks of 256 leaves); reports every error.
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
    let width = TILE_WIDTH as u64;
    let span = (to - from).div_ceil(threads).max(1);
    // Boundaries on whole blocks of leaves, so each block's node is checked.
    let cut = |i: u64| (from + i * span).next_multiple_of(width).clamp(from, to);
    let ranges: Vec<(u64, u64)> = (0..threads)
        .map(|i| {
            (
                if i == 0 { from } else { cut(i) },
                if i + 1 == threads { to } else { cut(i + 1) },
            )
        })
        .filter(|(a, b)| a < b)
        .collect();
    let results: Vec<RangeCheck> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| scope.spawn(move || check_range(store, a, b, to)))
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
        errors.extend(check.tree_errors);
        count += check.count;
        if let Some(last) = check.last_hash {
            expected_prev = hex::encode(last);
            root = expected_prev.clone();
        }
    }
    errors.extend(check_upper_levels(store, to));
    report(count, root, errors)
}

struct RangeCheck {
    first_prev: Option<String>,
    last_hash: Option<[u8; 32]>,
    count: u64,
    errors: Vec<ChainError>,
    tree_errors: Vec<ChainError>,
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
            tree_errors: Vec::new(),
        }
    }
}

fn check_range<S: LedgerStore + ?Sized>(store: &S, from: u64, to: u64, size: u64) -> RangeCheck {
    let mut out = RangeCheck {
        first_prev: None,
        last_hash: None,
        count: 0,
        errors: Vec::new(),
        tree_errors: Vec::new(),
    };
    let mut tree = LeafCheck::new(store, from, to, size);
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
                tree.push(key_seq, parts.entry_hash);
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
    out.tree_errors = tree.finish();
    out
}
