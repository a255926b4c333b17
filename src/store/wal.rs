//! The write-ahead log in front of sled: where a commit becomes durable.
//!
//! sled makes data durable only by flushing its whole log (and, through
//! `sync_file_range`, not even fully); a flush per group commit costs most of
//! a millisecond. So every batch applied to sled is also staged here as one
//! frame, and a commit is one `write` of the staged frames plus one
//! `fdatasync` of this file — the commit point. A background step flushes
//! sled to stable storage now and then, after which the log generations it
//! covers are deleted; on open, whatever is left is applied to sled again
//! (applying a batch twice writes the same values).
//!
//! ```text
//! <ledger>.wal/<generation:020>.log   frames: [len u32 BE][crc32 u32 BE][payload]
//! payload: [count u32 BE] then count × ([key len u32 BE][key][value len u32 BE][value])
//! ```
//!
//! A torn frame can only be the last one of the newest generation (it was
//! never acknowledged) and is dropped; a bad frame anywhere else is damage,
//! and opening refuses with a clear error.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::StoreError;
use super::fs::sync_dir;

/// One batch: the key/value pairs of one atomic sled batch.
pub type Batch = Vec<(Vec<u8>, Vec<u8>)>;

struct State {
    generation: u64,
    file: File,
    staged: Vec<u8>,
    /// Bytes committed to the current generation.
    committed: u64,
}

/// A generation file created ahead of a rotation ([`Wal::prepare_rotation`]).
pub struct NextGeneration {
    generation: u64,
    file: File,
}

/// The write-ahead log.
pub struct Wal {
    state: Mutex<State>,
}

/// The right to rotate the log and delete old generations. [`Wal::open`]
/// makes exactly one, and it cannot be cloned: one thread rotates.
pub struct WalRotator {
    dir: PathBuf,
}

fn file_name(generation: u64) -> String {
    format!("{generation:020}.log")
}

fn generations(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Encodes one batch as a frame.
pub fn encode_frame(batch: &[(&[u8], &[u8])]) -> Vec<u8> {
    let size: usize = 4 + batch
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum::<usize>();
    let mut payload = Vec::with_capacity(size);
    payload.extend_from_slice(&(batch.len() as u32).to_be_bytes());
    for (k, v) in batch {
        payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
        payload.extend_from_slice(k);
        payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
        payload.extend_from_slice(v);
    }
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

fn decode_payload(payload: &[u8]) -> Option<Batch> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = payload.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    let count = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
    let mut batch = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let kl = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        let k = take(&mut at, kl)?.to_vec();
        let vl = u32::from_be_bytes(take(&mut at, 4)?.try_into().ok()?) as usize;
        let v = take(&mut at, vl)?.to_vec();
        batch.push((k, v));
    }
    (at == payload.len()).then_some(batch)
}

/// The frame starting at `at`, if a whole, intact one does: its length
/// (header included) and its batch.
fn frame_at(bytes: &[u8], at: usize) -> Option<(usize, Batch)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    // Every payload starts with its pair count, and each pair takes at
    // least 8 bytes: a cheap test before the CRC of a candidate.
    let payload = bytes.get(at + 8..at + 8 + len)?;
    let count = u32::from_be_bytes(payload.get(..4)?.try_into().expect("4 bytes")) as usize;
    if count.saturating_mul(8) > len || crc32fast::hash(payload) != crc {
        return None;
    }
    decode_payload(payload).map(|batch| (8 + len, batch))
}

/// Reads the frames of one generation; `Err(offset)` for a bad frame that
/// is followed by anything that parses as a frame, `Ok((batches, torn))`
/// otherwise.
///
/// Only the last frame can be torn (it was being written when the process
/// died, and was never acknowledged). A bad frame followed by a good one is
/// damage to acknowledged data, whatever the bad frame claims: a length that
/// runs past the end of the file (a flipped high byte) must not hide the
/// frames after it. So after a bad frame every later offset is tried.
fn read_generation(bytes: &[u8]) -> Result<(Vec<Batch>, bool), usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Some((len, batch)) => {
                out.push(batch);
                at += len;
            }
            None => {
                return if (at + 1..bytes.len()).any(|later| frame_at(bytes, later).is_some()) {
                    Err(at)
                } else {
                    Ok((out, true))
                };
            }
        }
    }
    Ok((out, false))
}

impl Wal {
    /// Opens the log in `dir` and returns the batches it still holds, in
    /// order, for the caller to apply; then starts a new generation. The
    /// [`WalRotator`] is the only handle that rotates it.
    pub fn open(dir: &Path) -> Result<(Wal, WalRotator, Vec<Batch>), StoreError> {
        fs::create_dir_all(dir)?;
        let gens = generations(dir)?;
        let mut batches = Vec::new();
        for (i, g) in gens.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(dir.join(file_name(*g)))?.read_to_end(&mut bytes)?;
            match read_generation(&bytes) {
                Ok((found, torn)) => {
                    // A rotation creates the next (empty) generation before
                    // it switches to it, so a torn tail may be followed by
                    // empty logs, but not by one holding data. (Such a tail
                    // is taken for a crash mid-write, as in the newest log:
                    // its frame was never acknowledged.)
                    let mut newer_holds_data = false;
                    for newer in &gens[i + 1..] {
                        newer_holds_data |= fs::metadata(dir.join(file_name(*newer)))?.len() > 0;
                    }
                    if torn && newer_holds_data {
                        return Err(StoreError::DataDir(format!(
                            "write-ahead log {} is damaged (a torn frame before a newer log); refusing to guess",
                            dir.join(file_name(*g)).display()
                        )));
                    }
                    batches.extend(found);
                }
                Err(offset) => {
                    return Err(StoreError::DataDir(format!(
                        "write-ahead log {} is damaged at byte {offset}; refusing to start",
                        dir.join(file_name(*g)).display()
                    )));
                }
            }
        }
        // Generations are created one after the other and deleted oldest
        // first: a gap means a log holding committed batches is gone.
        if let Some(pair) = gens.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(StoreError::DataDir(format!(
                "write-ahead log generation {} is missing from {} (it lies between {} and {}); refusing to start",
                pair[0] + 1,
                dir.display(),
                file_name(pair[0]),
                file_name(pair[1])
            )));
        }
        let generation = gens.last().map_or(1, |g| g + 1);
        let file = new_generation(dir, generation)?;
        Ok((
            Wal {
                state: Mutex::new(State {
                    generation,
                    file,
                    staged: Vec::new(),
                    committed: 0,
                }),
            },
            WalRotator {
                dir: dir.to_owned(),
            },
            batches,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages one batch for the next commit.
    pub fn stage(&self, batch: &[(&[u8], &[u8])]) {
        let frame = encode_frame(batch);
        self.lock().staged.extend_from_slice(&frame);
    }

    /// Writes the staged batches and makes them durable. THE COMMIT POINT.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.staged.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut s.staged);
        s.file.write_all(&staged)?;
        s.file.sync_data()?;
        s.committed += staged.len() as u64;
        Ok(())
    }

    /// Bytes committed to the current generation.
    pub fn committed_bytes(&self) -> u64 {
        self.lock().committed
    }
}

impl WalRotator {
    /// Creates the file of the next generation, if the current one holds
    /// data — the slow part of a rotation (a create and a directory fsync),
    /// done before [`WalRotator::rotate`] without blocking commits.
    pub fn prepare_rotation(&mut self, wal: &Wal) -> Result<Option<NextGeneration>, StoreError> {
        let next = {
            let s = wal.lock();
            if s.committed == 0 {
                return Ok(None);
            }
            s.generation + 1
        };
        Ok(Some(NextGeneration {
            generation: next,
            file: new_generation(&self.dir, next)?,
        }))
    }

    /// Starts the prepared generation; returns the generation closed (every
    /// batch in it and before it is then older than anything committed
    /// later).
    pub fn rotate(&mut self, wal: &Wal, next: NextGeneration) -> u64 {
        let mut s = wal.lock();
        // Only this (unique) rotator prepares generations, so the prepared
        // one is always the next.
        debug_assert_eq!(s.generation + 1, next.generation, "one rotating thread");
        let old = s.generation;
        s.generation = next.generation;
        s.file = next.file;
        s.committed = 0;
        old
    }

    /// Deletes every generation older than the current one (after their
    /// batches were made durable in sled).
    pub fn remove_older_generations(&mut self, wal: &Wal) -> Result<(), StoreError> {
        let current = wal.lock().generation;
        self.remove_through(current - 1)
    }

    /// Deletes the generations up to and including `generation` (their
    /// batches are durable in sled).
    pub fn remove_through(&mut self, generation: u64) -> Result<(), StoreError> {
        let mut removed = false;
        for g in generations(&self.dir)? {
            if g <= generation {
                fs::remove_file(self.dir.join(file_name(g)))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn new_generation(dir: &Path, generation: u64) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file_name(generation)))?;
    sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![(vec![b'k', n], vec![n; 100]), (vec![b'm'], vec![n])]
    }

    fn stage(wal: &Wal, b: &Batch) {
        let refs: Vec<(&[u8], &[u8])> = b.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        wal.stage(&refs);
    }

    #[test]
    fn committed_batches_come_back_and_rotation_drops_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (wal, _, old) = Wal::open(tmp.path()).unwrap();
            assert!(old.is_empty());
            stage(&wal, &batch(1));
            stage(&wal, &batch(2));
            wal.commit().unwrap();
            stage(&wal, &batch(3)); // staged, never committed
        }
        let (wal, mut rotator, back) = Wal::open(tmp.path()).unwrap();
        assert_eq!(back, vec![batch(1), batch(2)]);
        stage(&wal, &batch(4));
        wal.commit().unwrap();
        let next = rotator.prepare_rotation(&wal).unwrap().unwrap();
        let closed = rotator.rotate(&wal, next);
        rotator.remove_through(closed).unwrap();
        drop(wal);
        let (_, _, back) = Wal::open(tmp.path()).unwrap();
        assert!(back.is_empty(), "{back:?}");
    }

    #[test]
    fn a_torn_tail_is_dropped_but_damage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (wal, _, _) = Wal::open(tmp.path()).unwrap();
            stage(&wal, &batch(1));
            stage(&wal, &batch(2));
            wal.commit().unwrap();
        }
        assert_eq!(generations(tmp.path()).unwrap(), vec![1]);
        let path = tmp.path().join(file_name(1));
        let full = fs::read(&path).unwrap();
        // Torn: cut inside the second frame.
        fs::write(&path, &full[..full.len() - 10]).unwrap();
        // A crash between creating the next generation and switching to it
        // leaves it empty after the torn one: still just a torn tail.
        fs::write(tmp.path().join(file_name(2)), b"").unwrap();
        let (_, _, back) = Wal::open(tmp.path()).unwrap();
        assert_eq!(back, vec![batch(1)]);
        // (That open started generation 3 and left 1 and 2 for the caller.)
        fs::remove_file(tmp.path().join(file_name(2))).unwrap();
        fs::remove_file(tmp.path().join(file_name(3))).unwrap();
        // But a torn frame followed by a log holding data is damage.
        fs::write(tmp.path().join(file_name(2)), &full).unwrap();
        assert!(Wal::open(tmp.path()).is_err());
        // Damaged: a flipped byte in the first frame, with more after it.
        let tmp = tempfile::tempdir().unwrap();
        let g0 = tmp.path().join(file_name(1));
        let mut bad = full.clone();
        bad[12] ^= 1;
        fs::write(&g0, &bad).unwrap();
        assert!(Wal::open(tmp.path()).is_err());
    }

    /// Three committed frames in one generation, and where each starts.
    fn three_frames(dir: &Path) -> (PathBuf, Vec<u8>, Vec<usize>) {
        {
            let (wal, _, _) = Wal::open(dir).unwrap();
            for n in 1..=3 {
                stage(&wal, &batch(n));
                wal.commit().unwrap();
            }
        }
        let path = dir.join(file_name(1));
        let bytes = fs::read(&path).unwrap();
        let one = encode_frame(&[(&[b'k', 1][..], &[1u8; 100][..]), (&b"m"[..], &[1u8][..])]).len();
        (path, bytes, vec![0, one, 2 * one])
    }

    #[test]
    fn a_bad_length_before_a_good_frame_is_damage_not_a_torn_tail() {
        // The high byte of the second frame's length flipped: it claims to
        // run past the end of the file, but the third frame is intact.
        let tmp = tempfile::tempdir().unwrap();
        let (path, mut bytes, starts) = three_frames(tmp.path());
        bytes[starts[1]] ^= 0x80;
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(tmp.path()).err().expect("damage is refused");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string())
                && text.contains(&format!("byte {}", starts[1])),
            "{text}"
        );
        // A flipped CRC of the same frame: the same.
        let tmp = tempfile::tempdir().unwrap();
        let (path, mut bytes, starts) = three_frames(tmp.path());
        bytes[starts[1] + 5] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(Wal::open(tmp.path()).is_err());
    }

    #[test]
    fn a_bad_length_in_the_last_frame_is_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let (path, mut bytes, starts) = three_frames(tmp.path());
        bytes[starts[2]] ^= 0x80;
        fs::write(&path, &bytes).unwrap();
        let (_, _, back) = Wal::open(tmp.path()).unwrap();
        assert_eq!(back, vec![batch(1), batch(2)]);
    }

    #[test]
    fn a_missing_generation_between_two_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, bytes, _) = three_frames(tmp.path());
        fs::write(tmp.path().join(file_name(3)), &bytes).unwrap();
        let err = Wal::open(tmp.path()).err().expect("a gap is refused");
        assert!(err.to_string().contains("generation 2 is missing"), "{err}");
    }
}
