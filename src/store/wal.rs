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
use super::datadir::sync_dir;

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
    dir: PathBuf,
    state: Mutex<State>,
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

/// Reads the frames of one generation; `Err(offset)` for a bad frame that
/// is followed by more data, `Ok((batches, torn))` otherwise.
fn read_generation(bytes: &[u8]) -> Result<(Vec<Batch>, bool), usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes.get(at..at + 8);
        let frame = header.and_then(|h| {
            let len = u32::from_be_bytes(h[..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
            let payload = bytes.get(at + 8..at + 8 + len)?;
            (crc32fast::hash(payload) == crc).then_some((len, payload))
        });
        match frame.and_then(|(len, p)| decode_payload(p).map(|b| (len, b))) {
            Some((len, batch)) => {
                out.push(batch);
                at += 8 + len;
            }
            None => {
                // A torn tail: the rest of the file is this one frame.
                let claimed = bytes
                    .get(at..at + 4)
                    .map(|h| 8 + u32::from_be_bytes(h.try_into().expect("4 bytes")) as usize);
                let is_tail = claimed.is_none_or(|c| at + c >= bytes.len());
                return if is_tail { Ok((out, true)) } else { Err(at) };
            }
        }
    }
    Ok((out, false))
}

impl Wal {
    /// Opens the log in `dir` and returns the batches it still holds, in
    /// order, for the caller to apply; then starts a new generation.
    pub fn open(dir: &Path) -> Result<(Wal, Vec<Batch>), StoreError> {
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
        let generation = gens.last().map_or(1, |g| g + 1);
        let file = new_generation(dir, generation)?;
        Ok((
            Wal {
                dir: dir.to_owned(),
                state: Mutex::new(State {
                    generation,
                    file,
                    staged: Vec::new(),
                    committed: 0,
                }),
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

    /// Creates the file of the next generation, if the current one holds
    /// data — the slow part of a rotation (a create and a directory fsync),
    /// done before [`Wal::rotate`] without blocking commits. Only one
    /// thread may rotate.
    pub fn prepare_rotation(&self) -> Result<Option<NextGeneration>, StoreError> {
        let next = {
            let s = self.lock();
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
    pub fn rotate(&self, next: NextGeneration) -> u64 {
        let mut s = self.lock();
        debug_assert_eq!(s.generation + 1, next.generation, "one rotating thread");
        let old = s.generation;
        s.generation = next.generation;
        s.file = next.file;
        s.committed = 0;
        old
    }

    /// Deletes every generation older than the current one (after their
    /// batches were made durable in sled).
    pub fn remove_older_generations(&self) -> Result<(), StoreError> {
        let current = self.lock().generation;
        self.remove_through(current - 1)
    }

    /// Deletes the generations up to and including `generation` (their
    /// batches are durable in sled).
    pub fn remove_through(&self, generation: u64) -> Result<(), StoreError> {
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
            let (wal, old) = Wal::open(tmp.path()).unwrap();
            assert!(old.is_empty());
            stage(&wal, &batch(1));
            stage(&wal, &batch(2));
            wal.commit().unwrap();
            stage(&wal, &batch(3)); // staged, never committed
        }
        let (wal, back) = Wal::open(tmp.path()).unwrap();
        assert_eq!(back, vec![batch(1), batch(2)]);
        stage(&wal, &batch(4));
        wal.commit().unwrap();
        let closed = wal.rotate(wal.prepare_rotation().unwrap().unwrap());
        wal.remove_through(closed).unwrap();
        drop(wal);
        let (_, back) = Wal::open(tmp.path()).unwrap();
        assert!(back.is_empty(), "{back:?}");
    }

    #[test]
    fn a_torn_tail_is_dropped_but_damage_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(tmp.path()).unwrap();
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
        let (_, back) = Wal::open(tmp.path()).unwrap();
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
}
